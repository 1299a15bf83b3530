"""The shared result-file format of every benchmark: benchmarks/results/<name>.json."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def command() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def write_result(name: str, metrics: dict[str, float], details: dict) -> Path:
    """Write ``{"name", "command", "device", "date", "metrics", "details"}`` and return its path."""
    bad = {k: v for k, v in metrics.items() if not isinstance(v, int | float)}
    if bad:
        raise TypeError(f"metrics must be flat name -> number, got {bad}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    data = dict(
        name=name,
        command=command(),
        device=device(),
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        metrics=metrics,
        details=details,
    )
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {path}")
    return path


def matmul_gflops(n: int = 2048, reps: int = 10, device: str = "cpu", dtype=None) -> float:
    """This machine's matmul rate (GFLOP/s; fp32 unless ``dtype``) with torch's thread setting."""
    import time

    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def setup_process() -> None:
    """Same process settings as the CLI (offline model, offscreen rendering)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    import warnings

    from lwd.allocator import keep_freed_memory

    warnings.filterwarnings("ignore")
    keep_freed_memory()
