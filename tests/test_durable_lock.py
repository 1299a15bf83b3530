"""One process at a time in a directory: the lock, its message, and the demo refusing a busy dir."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lwd.cli import EXIT_USAGE, main
from lwd.demo.processes import lower_priority
from lwd.durable import LockedError, exclusive_lock


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    lock = tmp_path / "job" / ".lock"
    with exclusive_lock(lock, "job"):
        with pytest.raises(LockedError, match=rf"another job \(pid {os.getpid()}\)"):
            with exclusive_lock(lock, "job"):
                pass
    with exclusive_lock(lock, "job"):  # released on exit: free again
        pass


def test_lwd_demo_refuses_a_directory_another_demo_is_using(tmp_path, capsys):
    with exclusive_lock(tmp_path / ".lock", "lwd demo"):
        assert main(["demo", "--out", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "another lwd demo" in err and "another directory" in err
    assert list(tmp_path.iterdir()) == [tmp_path / ".lock"]  # nothing was built or deleted


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no scheduler autogroups")
def test_lower_priority_reaches_the_session_scheduling_group():
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        start_new_session=True,
        preexec_fn=lambda: lower_priority(7),
    )
    try:
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == os.getpriority(os.PRIO_PROCESS, 0) + 7
        assert Path(f"/proc/{child.pid}/autogroup").read_text().split()[-1] == "7"
    finally:
        child.kill()
        child.wait()
