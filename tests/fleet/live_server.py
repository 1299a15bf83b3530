"""A real fleet server on 127.0.0.1 in a background thread (uvicorn), for client tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Collection
from pathlib import Path

import uvicorn

from lwd.fleet.server import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``create_app(root)`` served by uvicorn on ``port``; restartable over the same root."""

    def __init__(
        self, root: Path, port: int | None = None, known_tasks: Collection[str] | None = None
    ):
        self.root, self.port, self.known_tasks = Path(root), port or free_port(), known_tasks
        self.app = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.app = create_app(self.root, self.known_tasks)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fleet server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = self._thread = None

    @property
    def store(self):
        return self.app.state.fleet.store

    @property
    def registry(self):
        return self.app.state.fleet.registry
