"""SlowProxy: a TCP proxy between robots and the server that can slow or hold episode uploads.

So that a test can kill a robot at a precise moment of an upload:

- ``mode = "slow"``: an episode upload's bytes reach the server at ~160 KB/s;
  ``upload_in_flight`` is set once part (not all) of one went through;
- ``mode = "hold"``: the server's answer to an episode upload is held back (the episode is
  stored, the robot has no ack); ``answer_held`` is set when that happens;
- ``mode = "pass"``: plain forwarding.
"""

from __future__ import annotations

import socket
import threading
import time

from .live_server import free_port

_CHUNK = 8192
_SLOW_PAUSE_S = 0.05
_IN_FLIGHT_BYTES = 64 * 1024


class SlowProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port, self.port = upstream_port, free_port()
        self.mode = "pass"
        self.upload_in_flight = threading.Event()
        self.answer_held = threading.Event()
        self._closed = threading.Event()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SlowProxy:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            state = {"episode": False, "open": True}
            for args in ((client, server, state, True), (server, client, state, False)):
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, upward: bool) -> None:
        sent = 0
        try:
            src.settimeout(0.2)
            while state["open"] and not self._closed.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if upward:
                    if b" HTTP/1.1\r\n" in data[:200]:  # a new request on this connection
                        state["episode"] = data.startswith(b"POST /v1/episodes ")
                        sent = 0
                    if state["episode"] and self.mode == "slow":
                        for i in range(0, len(data), _CHUNK):
                            dst.sendall(data[i : i + _CHUNK])
                            sent += len(data[i : i + _CHUNK])
                            if sent >= _IN_FLIGHT_BYTES:
                                self.upload_in_flight.set()
                            time.sleep(_SLOW_PAUSE_S)
                        continue
                elif state["episode"] and self.mode == "hold":
                    self.answer_held.set()
                    while self.mode == "hold" and state["open"] and not self._closed.is_set():
                        time.sleep(0.02)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            state["open"] = False
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
