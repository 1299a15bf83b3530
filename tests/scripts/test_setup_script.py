"""The README's set-up script refuses to start an install the disk cannot hold."""

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_setup_stops_before_installing_when_the_disk_is_too_full(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    # Ask for more room than any disk has, so the check must trip on this machine too.
    env = {"PATH": "/usr/bin:/bin", "LWD_SETUP_NEED_MB": str(10**12), "TMPDIR": str(tmp_path)}
    run = subprocess.run(
        ["bash", "scripts/setup.sh"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "MB free on the disk holding" in run.stderr
    assert "Free some space" in run.stderr
    assert not (tmp_path / ".venv").exists(), "the check must run before anything is installed"
