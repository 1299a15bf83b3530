"""Fleet roles as real child processes (``python -m lwd.cli ...``), for cross-process tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .live_server import free_port


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class FleetProcess:
    """One ``lwd`` command as a child process, its output in ``log_path``."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.args, self.log_path = args, Path(log_path)
        self.proc: subprocess.Popen | None = None

    def start(self) -> FleetProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lwd.cli", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(),
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, like a power cut."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the exit code (SIGKILL after ``timeout_s``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.args[0]} ignored SIGTERM; log:\n{self.output()}") from None

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


class ServerProcess(FleetProcess):
    """``lwd server --root ROOT --port PORT`` (fleet8 tasks); restartable on the same port."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = Path(root), port or free_port()
        args = ["server", "--root", str(self.root), "--port", str(self.port)]
        super().__init__(args, self.root.parent / f"{self.root.name}-server.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        super().start()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).json()["ok"]:
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"fleet server did not start; log:\n{self.output()}")
            time.sleep(0.1)

    def stored(self) -> int:
        return httpx.get(f"{self.url}/v1/snapshots/latest", timeout=5.0).json()["episodes_stored"]


def robot_process(server_url: str, robot_id: str, workdir: Path, *extra: str) -> FleetProcess:
    """A synthetic ``lwd robot`` (no MuJoCo), its log beside its work directory."""
    args = ["robot", "--server", server_url, "--robot-id", robot_id, "--workdir", str(workdir)]
    args += ["--synthetic", "--timeout", "5", *extra]
    return FleetProcess(args, Path(workdir) / f"{robot_id}.log").start()
