"""DIVL + QAM offline on OGBench single-task play data, beside QAM's published curve points.

    python benchmarks/ogbench_qam.py [--episodes 100] [--steps 2000] [--seeds 0 1 2] [--quick]
    python benchmarks/ogbench_qam.py --steps 100000 --stop-after 20000   # a long run, in parts

Per environment (``scene`` task 2, ``puzzle-3x3`` task 2): generate a play dataset with the
in-package oracles following OGBench's procedure (``lwd.sim.ogbench_play``; rewards relabelled to
the sparse {0, 1} convention of ALGORITHMS.md), train the reference flow by flow BC on all of it
(QAM's reference is a BC flow on the whole dataset), then offline DIVL + QAM from it, evaluating
the acting policy in OGBench's own single-task environment every ``--eval-every`` updates.
Reports success vs updates per seed and the mean, next to the published QAM points.

A long run can be done in parts: ``--stop-after N`` checkpoints each seed's run at ``N`` updates
and writes the result for the curve so far; the same command with a larger ``N`` (or none)
resumes every run exactly where it stopped. Each run keeps its evaluations in
``evals.json`` in its directory, so the curve covers every part.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import RESULTS, setup_process, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# QAM paper, OGBench single-task play datasets, 12 seeds, success %.
PUBLISHED = {
    "scene": {"QAM": {100_000: 95.5, 1_000_000: 98.3}, "FQL": {100_000: 25.5}},
    "puzzle-3x3": {"QAM": {100_000: 8.0, 500_000: 100.0}, "QAM-E": {100_000: 94.8}},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--envs", nargs="+", default=["scene", "puzzle-3x3"])
    p.add_argument("--task", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "runs" / "ogbench_qam"))
    p.add_argument("--episodes", type=int, default=100, help="play episodes of 1000 steps")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--bc-steps", type=int, default=3000, help="reference flow BC updates")
    p.add_argument("--steps", type=int, default=2000, help="DIVL + QAM updates")
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument(
        "--lam",
        type=float,
        default=0.1,
        help="QAM temperature on our {0,1}-reward Q; QAM's inv_temp k (-1/0 reward, gamma 0.99) "
        "is lambda = 1/(100 k) here",
    )
    p.add_argument("--actor-warmup", type=int, default=500)
    p.add_argument("--workers", type=int, default=2, help="data generation processes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="checkpoint and report once each run has done this many of --steps (resume later)",
    )
    p.add_argument("--name", default="ogbench_qam", help="result file name")
    p.add_argument("--quick", action="store_true", help="tiny data and runs (a smoke test)")
    args = p.parse_args()
    if args.quick:
        args.episodes, args.seeds, args.bc_steps, args.steps = 2, [0], 50, 20
        args.eval_every, args.eval_episodes, args.actor_warmup = 10, 1, 5
        args.out += "_quick"
        args.name += "_quick"
    if args.stop_after is not None and not 0 < args.stop_after <= args.steps:
        p.error(f"--stop-after must be in 1..--steps ({args.steps}), got {args.stop_after}")
    setup_process()
    import torch

    from lwd.config import AgentConfig, OfflineConfig, PolicyConfig, SFTConfig
    from lwd.durable import write_atomic
    from lwd.learner.offline import train_offline
    from lwd.learner.sft import train_sft
    from lwd.policy.checkpoint import load_policy
    from lwd.policy.flow import FlowPolicyRunner
    from lwd.policy.instruction import InstructionEncoder
    from lwd.sim.ogbench_eval import evaluate_singletask
    from lwd.sim.ogbench_play import generate_play_store
    from lwd.sim.ogbench_tasks import ogbench_task

    torch.set_num_threads(args.threads)
    encoder = InstructionEncoder()
    out = Path(args.out)
    t0 = time.time()
    metrics: dict[str, float] = {}
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    data_info = {}
    for env in args.envs:
        task = ogbench_task(env, args.task)
        data = out / f"{env}_data"
        if not (data / "index.sqlite").is_file():
            summary = generate_play_store(
                env,
                args.task,
                args.episodes,
                data,
                workers=args.workers,
                progress=lambda d, n, r, env=env: print(f"\r{env}: play {d}/{n}", end=""),
            )
            print()
            (out / f"{env}_data.json").write_text(json.dumps(summary, default=str))
        data_info[env] = json.loads((out / f"{env}_data.json").read_text())
        print(
            f"{env}: {data_info[env]['segments']} segments, "
            f"{data_info[env]['successes']} successful, {data_info[env]['transitions']} steps"
        )
        curves[env] = {}
        for seed in args.seeds:
            ref = out / f"{env}_bc_s{seed}"
            sft_cfg = SFTConfig(
                steps=args.bc_steps,
                seed=seed,
                sources=("autonomous", "play", "demo"),
                policy=PolicyConfig(width=args.width),
            )
            train_sft(sft_cfg, data, ref, encoder=encoder, known_tasks=[task.name])

            run = out / f"{env}_qam_s{seed}"
            evals_path = run / "evals.json"
            done = json.loads(evals_path.read_text()) if evals_path.is_file() else {}

            def evaluator(
                policy_dir: Path, step: int, seed=seed, env=env, done=done, run=run
            ) -> dict:
                if str(step) not in done:  # an evaluation from an earlier part is kept, not redone
                    runner = FlowPolicyRunner(
                        load_policy(policy_dir), encoder, version=1, seed=seed
                    )
                    res = evaluate_singletask(runner, env, args.task, args.eval_episodes, seed=seed)
                    done[str(step)] = res["success"]
                    run.mkdir(parents=True, exist_ok=True)
                    write_atomic(run / "evals.json", json.dumps(done, indent=1).encode())
                print(f"{env} seed {seed} step {step}: success {done[str(step)]:.2f}")
                return {"eval/success": done[str(step)]}

            evaluator(ref, 0)
            cfg = OfflineConfig(
                steps=args.steps,
                n_step=1,
                gamma=0.99,
                seed=seed,
                eval_every=args.eval_every,
                checkpoint_every=args.eval_every,
                sources=("autonomous", "play", "demo"),
                agent=dataclasses.replace(
                    AgentConfig(),
                    critic_width=args.width,
                    lam=args.lam,
                    actor_warmup=args.actor_warmup,
                ),
            )
            train_offline(
                cfg,
                data,
                ref,
                run,
                encoder,
                evaluator=evaluator,
                known_tasks=[task.name],
                stop_after=args.stop_after,
            )
            curves[env][seed] = sorted((int(k), v) for k, v in done.items())
        steps = sorted({s for c in curves[env].values() for s, _ in c})
        for s in steps:
            vals = [v for c in curves[env].values() for st, v in c if st == s]
            metrics[f"{env.replace('-', '_')}_task{args.task}_success_at_{s}"] = float(
                np.mean(vals)
            )
    for env, pub in PUBLISHED.items():
        for method, points in pub.items():
            for s, v in points.items():
                metrics[f"published_{method.replace('-', '_')}_{env.replace('-', '_')}_at_{s}"] = (
                    v / 100
                )
    for k, v in metrics.items():
        print(f"{k:>45}: {v:.3f}")
    name = args.name
    write_result(
        name,
        metrics,
        dict(
            envs=args.envs,
            task=args.task,
            play_episodes=args.episodes,
            data=data_info,
            seeds=args.seeds,
            width=args.width,
            bc_steps=args.bc_steps,
            steps=args.steps,
            steps_done=max(s for cs in curves.values() for c in cs.values() for s, _ in c),
            lam=args.lam,
            actor_warmup=args.actor_warmup,
            eval_episodes=args.eval_episodes,
            curves={e: {str(s): c for s, c in cs.items()} for e, cs in curves.items()},
            reward="sparse {0,1} relabel with termination (ALGORITHMS.md choice)",
            seconds=time.time() - t0,
        ),
    )
    plot(curves, RESULTS / f"{name}.png")


def plot(curves, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (env, by_seed) in zip(axes[0], curves.items(), strict=True):
        for seed, c in by_seed.items():
            ax.plot(
                [s for s, _ in c],
                [v * 100 for _, v in c],
                "o-",
                alpha=0.6,
                label=f"lwd seed {seed}",
            )
        for method, points in PUBLISHED.get(env, {}).items():
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], "s--", label=f"published {method}")
        ax.set_xscale("symlog", linthresh=1000)
        ax.set_xlabel("offline updates")
        ax.set_ylabel("success %")
        ax.set_title(f"{env} task 2")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
