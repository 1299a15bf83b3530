"""SFT on fleet8: generate the offline buffer (if needed), train flow BC on demos, evaluate.

    python benchmarks/sft_fleet8.py [--data runs/fleet8_data] [--demos-per-task 24] [--quick]

How much demonstration data SFT gets (--demos-per-task) is the knob that places the SFT start
where the paper's is (0.76 average); the evaluator and its protocol are never tuned.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import RESULTS, setup_process, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(ROOT / "runs" / "fleet8_data"))
    p.add_argument("--out", default=str(ROOT / "runs" / "sft_fleet8"))
    p.add_argument("--generate-episodes", type=int, default=48, help="per task, if generating")
    p.add_argument("--demos-per-task", type=int, default=24)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny data, 300 steps, 3 eval episodes")
    args = p.parse_args()
    if args.quick:
        args.generate_episodes, args.steps, args.eval_episodes = 8, 300, 3
        args.data, args.out = args.data + "_quick", args.out + "_quick"
    setup_process()
    import torch
    from rich.console import Console

    from lwd.config import EvalConfig, SFTConfig
    from lwd.eval.evaluator import evaluate
    from lwd.learner.sft import train_sft
    from lwd.sim.generate import GenerateConfig, generate
    from lwd.sim.tasks import task_names

    torch.set_num_threads(args.threads)
    t0 = time.time()
    if not (Path(args.data) / "index.sqlite").is_file():
        generate(
            GenerateConfig(episodes_per_task=args.generate_episodes),
            args.data,
            progress=lambda d, t, r: print(f"\rgenerate {d}/{t}", end=""),
        )
        print()
    t_gen = time.time() - t0
    cfg = dataclasses.replace(SFTConfig(), steps=args.steps, max_demos_per_task=args.demos_per_task)
    summary = train_sft(
        cfg,
        args.data,
        args.out,
        known_tasks=task_names(),
        on_step=lambda s, t, m: (
            s % 100 == 0 and print(f"\rsft {s}/{t} loss {m['bc/loss']:.4f}", end="")
        ),
    )
    print()
    report = evaluate(
        args.out,
        EvalConfig(episodes_per_task=args.eval_episodes),
        on_episode=lambda d, t, r: print(f"\reval {d}/{t}", end=""),
    )
    print()
    Console().print(report.table(title=f"SFT ({args.demos_per_task} demos/task) on fleet8"))
    metrics = {"avg_success": report.avg_success, "avg_score": report.avg_score}
    metrics |= {f"{t.task}_success": t.success for t in report.tasks}
    report.plot(RESULTS / "sft_fleet8.png")
    details = dict(
        report=report.to_dict(),
        sft=summary,
        sft_config=dataclasses.asdict(cfg),
        data=args.data,
        checkpoint=args.out,
        generate_seconds=t_gen,
        total_seconds=time.time() - t0,
    )
    write_result("sft_fleet8", metrics, details)


if __name__ == "__main__":
    main()
