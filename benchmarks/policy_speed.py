"""Flow-BC training throughput and single-robot inference latency of the flow policy.

    python benchmarks/policy_speed.py [--quick]

Training: updates of the 4x512 velocity field at batch 256 (AdamW, grad clipping), reported as
samples/s and as a fraction of this machine's fp32 matmul rate measured in the same process.
Inference: FlowPolicyRunner with K=10 Euler steps at batch 1 and 16 (a robot process: 1 thread).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import matmul_gflops, setup_process, write_result  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--train-threads", type=int, default=2)
    args = p.parse_args()
    setup_process()
    import torch

    from lwd.algo.flow_bc import flow_matching_loss
    from lwd.config import PolicyConfig
    from lwd.policy.flow import FlowPolicy, FlowPolicyRunner
    from lwd.policy.instruction import InstructionEncoder
    from lwd.types import Observation

    cfg = PolicyConfig()
    steps, reps = (20, 50) if args.quick else (200, 500)

    torch.set_num_threads(args.train_threads)
    peak = matmul_gflops(1024, 20)
    torch.manual_seed(0)
    policy = FlowPolicy(cfg)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-4)
    b = 256
    state = torch.randn(b, cfg.state_dim)
    lang = torch.randn(b, cfg.lang_dim)
    chunks = torch.rand(b, cfg.chunk, cfg.action_dim) * 2 - 1

    def update():
        loss, _ = flow_matching_loss(policy.field, state, lang, chunks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()

    for _ in range(5):
        update()
    t = time.perf_counter()
    for _ in range(steps):
        update()
    dt = (time.perf_counter() - t) / steps
    n_params = sum(p.numel() for p in policy.field.parameters() if p.requires_grad)
    flops = 6 * b * n_params  # forward + backward ~ 3x the forward's 2 FLOPs per weight
    achieved = flops / dt / 1e9

    torch.set_num_threads(1)
    # The real sentence encoder; the runner caches one embedding per instruction, as deployed.
    runner = FlowPolicyRunner(policy, encoder=InstructionEncoder(), version=1, seed=0)
    obs = Observation(state=np.zeros(cfg.state_dim, np.float32), instruction="open the drawer")
    lat = {}
    for batch in (1, 16):
        batch_obs = [obs] * batch
        for _ in range(10):
            runner.infer_batch(batch_obs)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            runner.infer_batch(batch_obs)
            times.append((time.perf_counter() - t) * 1e3)
        lat[batch] = (float(np.percentile(times, 50)), float(np.percentile(times, 99)))
    metrics = {
        "train_samples_per_s": b / dt,
        "train_updates_per_s": 1 / dt,
        "train_gflops": achieved,
        "matmul_peak_gflops": peak,
        "train_peak_fraction": achieved / peak,
        "infer_p50_ms_b1": lat[1][0],
        "infer_p99_ms_b1": lat[1][1],
        "infer_p50_ms_b16": lat[16][0],
        "infer_p99_ms_b16": lat[16][1],
    }
    for k, v in metrics.items():
        print(f"{k:>24}: {v:.2f}")
    write_result(
        "policy_speed",
        metrics,
        dict(
            batch=b,
            width=cfg.width,
            depth=cfg.depth,
            flow_steps=cfg.flow_steps,
            steps=steps,
            reps=reps,
            train_threads=args.train_threads,
            infer_threads=1,
            params=n_params,
        ),
    )


if __name__ == "__main__":
    main()
