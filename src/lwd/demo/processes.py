"""FleetProcesses: the demo's server, robots and learner as local child processes.

Every role runs as its own ``lwd`` command (exactly what a user would start by hand on several
machines), here as children of the demo with their logs in one directory::

    procs = FleetProcesses(log_dir)
    url = procs.start_server(root, port)                  # waits for /healthz
    procs.start("learner", ["learner", "--server", url, ...])
    procs.start("robot-0", ["robot", "--server", url, ...], nice=5)
    while procs.failed() == []: ...                       # watch
    procs.stop()                                          # learner first, so it checkpoints

Only arguments and files cross the process boundary; nothing is pickled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    log: Path


def lower_priority(nice: int) -> None:
    """Raise this process's niceness by ``nice``, and its session's where Linux groups by session.

    With ``kernel.sched_autogroup_enabled`` (the default on most desktop and VM kernels) every
    session is one scheduling group and groups share the CPU equally whatever their members'
    niceness; a child started in its own session competes at full weight unless its group's
    niceness (``/proc/self/autogroup``) is raised too. Measured here before this: four robots
    at niceness 15 each took as much CPU as the learner, which got about a third of a core.
    """
    os.nice(nice)
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:  # no autogroups (other OS, or disabled): plain niceness already applies
        pass


class FleetProcesses:
    """Start, watch and stop ``lwd`` child processes; logs go to ``log_dir/<name>.log``."""

    def __init__(self, log_dir: str | Path, threads: int = 1) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.children: dict[str, _Child] = {}

    def start(self, name: str, argv: list[str], nice: int = 0) -> subprocess.Popen:
        """Run ``lwd <argv>`` as a child named ``name`` (its own process group)."""
        if name in self.children and self.children[name].proc.poll() is None:
            raise RuntimeError(f"{name} is already running (pid {self.children[name].proc.pid})")
        log = self.log_dir / f"{name}.log"
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "lwd.cli", "--threads", str(self.threads), *argv]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal reaches the demo, not them
                preexec_fn=(lambda: lower_priority(nice)) if nice else None,
            )
        self.children[name] = _Child(name, proc, log)
        return proc

    def start_server(self, root: Path, port: int, timeout_s: float = 60.0) -> str:
        """Start ``lwd server`` on loopback and wait until it answers ``/healthz``."""
        url = f"http://127.0.0.1:{port}"
        self.start(
            "server",
            ["server", "--root", str(root), "--port", str(port), "--log-level", "warning"],
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.children["server"].proc.poll() is not None:
                raise RuntimeError(f"the server exited at start; see {self.children['server'].log}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the server did not answer {url}/healthz within {timeout_s:.0f} s")

    def failed(self) -> list[str]:
        """Children that exited with an error (a clean exit 0 is not a failure)."""
        return [n for n, c in self.children.items() if c.proc.poll() not in (None, 0)]

    def tail(self, name: str, lines: int = 15) -> str:
        """The end of a child's log, for error messages."""
        text = self.children[name].log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop everything: learner, then robots, then the server; SIGKILL after ``grace_s``."""
        order = sorted(self.children, key=lambda n: (n != "learner", n == "server", n))
        for group in (
            [n for n in order if n == "learner"],
            [n for n in order if n not in ("learner", "server")],
            [n for n in order if n == "server"],
        ):
            for name in group:
                proc = self.children[name].proc
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + grace_s
            for name in group:
                proc = self.children[name].proc
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
