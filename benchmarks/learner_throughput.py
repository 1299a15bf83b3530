"""Throughput of the full DIVL + QAM learner update at batch 256, widths 256 and 512.

    python benchmarks/learner_throughput.py [--quick] [--threads 2] [--device cpu|cuda]

For each width (policy, critic and value all at that width, depth 4, K = 10 flow steps, chunk
5 x 5) it times ``Agent.update`` on a fixed synthetic batch (the update's cost does not depend on
the data), counts the update's FLOPs with torch's FlopCounterMode (matmuls, forward and backward),
and divides the achieved rate by this machine's fp32 matmul rate measured in the same process.

It then times the same update with ``AgentConfig.precision`` "bf16" and "bf16_actor", in rounds
alternating with fp32 so that all see the same machine state, and reports each one's speed-up
and its rate as a fraction of the bf16 matmul rate (``--no-bf16`` skips this; bf16 is only fast
on hardware with bf16 matmul units).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import matmul_gflops, setup_process, write_result  # noqa: E402


def sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_batch(torch, pcfg, b: int, device: str):
    from lwd.types import Batch

    g = torch.Generator().manual_seed(0)
    disc = torch.where(torch.rand(b, generator=g) < 0.1, 0.0, 0.9999**50)

    def t(x):
        return x.to(device)

    return Batch(
        state=t(torch.randn(b, pcfg.state_dim, generator=g)),
        lang=t(torch.randn(b, pcfg.lang_dim, generator=g)),
        actions=t(torch.rand(b, pcfg.chunk, pcfg.action_dim, generator=g) * 2 - 1),
        reward=t((disc == 0).float()),
        discount=t(disc),
        next_state=t(torch.randn(b, pcfg.state_dim, generator=g)),
        source=t(torch.zeros(b, dtype=torch.long)),
        policy_version=t(torch.zeros(b, dtype=torch.long)),
        episode=t(torch.arange(b)),
        step=t(torch.zeros(b, dtype=torch.long)),
        online=t(torch.zeros(b, dtype=torch.bool)),
    )


def build(torch, width: int, device: str, extraction: str = "qam", precision: str = "fp32"):
    """An agent at ``width`` and its fixed batch, warmed up; returns ``(agent, batch)``."""
    from lwd.agent import Agent
    from lwd.config import AgentConfig, PolicyConfig
    from lwd.policy.flow import FlowPolicy

    pcfg = PolicyConfig(width=width)
    acfg = AgentConfig(critic_width=width, extraction=extraction, precision=precision)
    torch.manual_seed(0)
    agent = Agent(acfg, FlowPolicy(pcfg), seed=0).to(device)
    agent.generator = torch.Generator(device=device).manual_seed(0)
    batch = make_batch(torch, pcfg, 256, device)
    for _ in range(3):
        agent.update(batch)
    return agent, batch


def seconds_per_update(torch, agent, batch, steps: int, device: str) -> float:
    sync(torch, device)
    t = time.perf_counter()
    for _ in range(steps):
        agent.update(batch)
    sync(torch, device)
    return (time.perf_counter() - t) / steps


def measure(torch, width: int, steps: int, device: str, extraction: str = "qam") -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    agent, batch = build(torch, width, device, extraction)
    with FlopCounterMode(display=False) as counter:
        agent.update(batch)
    flops = counter.get_total_flops()
    dt = seconds_per_update(torch, agent, batch, steps, device)
    return dict(updates_per_s=1 / dt, gflop_per_update=flops / 1e9, gflops=flops / dt / 1e9)


def measure_precisions(
    torch, width: int, steps: int, device: str, flops: float, rounds: int = 3
) -> dict:
    """fp32, bf16 and bf16_actor updates timed in alternating rounds; the best round of each.

    ``flops`` per update is the fp32 count: every precision runs the same matmuls.
    """
    runs = {p: build(torch, width, device, precision=p) for p in ("fp32", "bf16", "bf16_actor")}
    best = {p: float("inf") for p in runs}
    for _ in range(rounds):
        for p, (agent, batch) in runs.items():
            best[p] = min(best[p], seconds_per_update(torch, agent, batch, steps, device))
    return {
        p: dict(updates_per_s=1 / dt, gflops=flops / dt / 1e9, speedup=best["fp32"] / dt)
        for p, dt in best.items()
        if p != "fp32"
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="few timed updates (a smoke run)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", default="learner_throughput", help="result file name")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 (autocast) update")
    args = p.parse_args()
    setup_process()
    import torch

    torch.set_num_threads(args.threads)
    peak_before = matmul_gflops(device=args.device)
    results = {}
    for width in (256, 512):
        steps = 3 if args.quick else (40 if width == 512 else 80)
        results[width] = measure(torch, width, steps, args.device)
        r = results[width]
        print(
            f"width {width}: {r['updates_per_s']:.2f} updates/s, "
            f"{r['gflop_per_update']:.1f} GFLOP/update, {r['gflops']:.0f} GFLOP/s"
        )
    peak = max(peak_before, matmul_gflops(device=args.device))
    print(f"matmul peak: {peak:.0f} GFLOP/s")
    metrics = {}
    for width, r in results.items():
        metrics[f"updates_per_s_w{width}"] = r["updates_per_s"]
        metrics[f"gflops_w{width}"] = r["gflops"]
        metrics[f"gflop_per_update_w{width}"] = r["gflop_per_update"]
        metrics[f"peak_fraction_w{width}"] = r["gflops"] / peak
    metrics["matmul_peak_gflops"] = peak
    if not args.no_bf16:
        peak16 = matmul_gflops(device=args.device, dtype=torch.bfloat16)
        for width in (256, 512):
            steps = 2 if args.quick else (10 if width == 512 else 20)
            rounds = 1 if args.quick else 3
            flops = results[width]["gflop_per_update"] * 1e9
            timed = measure_precisions(torch, width, steps, args.device, flops, rounds)
            for prec, r in timed.items():
                print(
                    f"width {width} {prec}: {r['updates_per_s']:.2f} updates/s, "
                    f"{r['speedup']:.2f}x the fp32 update timed beside it"
                )
                metrics[f"updates_per_s_w{width}_{prec}"] = r["updates_per_s"]
                metrics[f"{prec}_speedup_w{width}"] = r["speedup"]
                metrics[f"peak_fraction_w{width}_{prec}"] = r["gflops"] / peak16
        metrics["matmul_peak_gflops_bf16"] = peak16
    for k, v in metrics.items():
        print(f"{k:>24}: {v:.3f}")
    write_result(
        args.name,
        metrics,
        dict(
            batch=256,
            depth=4,
            flow_steps=10,
            chunk=5,
            action_dim=5,
            threads=args.threads,
            update="DIVL value + 2-head critic + EMA + QAM actor",
            flops="torch FlopCounterMode",
            bf16="AgentConfig.precision 'bf16' / 'bf16_actor' (autocast); speed-up against "
            "fp32 rounds alternated with them in the same process; their peak is a bf16 matmul",
        ),
    )


if __name__ == "__main__":
    main()
