"""Run independent jobs in parallel worker processes that speak JSON lines, never pickle.

Each worker is ``python -m <module>``: it reads one JSON job per line on stdin and writes one
JSON result per line on stdout (see :func:`serve`). The parent hands out jobs as workers free up,
so a slow job never holds the others back.

Usage::

    for result in run_jobs("lwd.eval.worker", jobs, workers=2, init={"policy": path}):
        ...
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Iterator


def run_jobs(
    module: str, jobs: list[dict], workers: int, init: dict | None = None
) -> Iterator[dict]:
    """Yield one result dict per job, in completion order.

    Args:
        module: importable module whose ``__main__`` calls :func:`serve`.
        jobs: JSON-ready job descriptions.
        workers: number of processes (capped at the number of jobs).
        init: JSON-ready dict sent to every worker first (e.g. the checkpoint path).

    Raises:
        RuntimeError: if a worker dies or reports an error; the message carries its stderr tail.
    """
    pending = list(enumerate(jobs))
    n = max(1, min(workers, len(jobs)))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            bufsize=1,
        )
        for _ in range(n)
    ]
    sel = selectors.DefaultSelector()
    try:
        for p in procs:
            p.stdin.write(json.dumps({"init": init or {}}) + "\n")
            sel.register(p.stdout, selectors.EVENT_READ, p)
        busy = {p.pid: False for p in procs}

        def feed(p: subprocess.Popen) -> None:
            if pending:
                idx, job = pending.pop(0)
                p.stdin.write(json.dumps({"id": idx, "job": job}) + "\n")
                p.stdin.flush()
                busy[p.pid] = True
            else:
                busy[p.pid] = False

        for p in procs:
            feed(p)
        remaining = len(jobs)
        while remaining:
            for key, _ in sel.select():
                p = key.data
                line = p.stdout.readline()
                if not line:
                    err = p.stderr.read()[-3000:]
                    raise RuntimeError(f"worker {module} (pid {p.pid}) died:\n{err}")
                msg = json.loads(line)
                if "error" in msg:
                    raise RuntimeError(
                        f"worker {module} failed on job {msg.get('id')}:\n{msg['error']}"
                    )
                remaining -= 1
                feed(p)
                yield msg["result"]
    finally:
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def serve(setup: Callable[[dict], Callable[[dict], dict]]) -> None:
    """Worker side: ``setup(init)`` returns the job handler; answer jobs until stdin closes."""
    import traceback

    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries must not corrupt the protocol
    first = json.loads(sys.stdin.readline())
    handler = setup(first.get("init", {}))
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            result = handler(msg["job"])
            out.write(json.dumps({"id": msg["id"], "result": result}) + "\n")
        except Exception:  # noqa: BLE001 - reported to the parent, which raises
            out.write(json.dumps({"id": msg["id"], "error": traceback.format_exc()}) + "\n")
        out.flush()
