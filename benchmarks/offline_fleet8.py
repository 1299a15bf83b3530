"""The fleet8 offline table: SFT vs LWD-offline (DIVL + QAM) and its ablations and baselines.

    python benchmarks/offline_fleet8.py [--data runs/fleet8_data] [--seeds 0 1 2] [--quick]

For each seed: SFT (flow BC on demos) -> optionally its deployment record (``--deploy-episodes
N``: N unassisted rollouts of that SFT per task, added to a per-seed copy of the data: the
failures of the policy's own actions that a critic needs; the result is then
``offline_fleet8_deployN.json``) -> the same SFT checkpoint starts every offline
method (same data, same steps) -> every policy is evaluated with the fixed protocol. Methods:
``lwd`` (DIVL adaptive tau + QAM), ``expectile`` (IQL value + QAM), ``constant_tau`` (DIVL with
tau fixed at tau_base + QAM), ``fql`` (DIVL + FQL one-step extraction); on request
``qam_ensemble`` (LWD-offline with QAM's 10-head critic, mean - 0.5 std). Runs are separate
``lwd`` processes (1 torch thread each), ``--parallel`` at a time. ``--best-of-n N``: the RL
methods act with the best of N samples under their own critic (lwd.policy.ranker), and
lwd_offline (and qam_ensemble) are evaluated with one sample as well (``<method>_single``); the
result name gains ``_bonN``. Reported: per-task success (step-wise score on long tasks in the
JSON) and the average, mean +- standard error over seeds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import RESULTS, setup_process, write_result  # noqa: E402

from lwd.eval.report import mean_se  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_SEED_BASE = 1  # scripted data use seed 0: the deployments start from other situations
SINGLE = ("--best-of-n", "1")  # evaluate a best-of-N checkpoint with one sample
METHODS = {
    "lwd_offline": "agent-default",
    "expectile": "agent-expectile",
    "constant_tau": "agent-constant-tau",
    "fql": "agent-fql",
    "qam_ensemble": "agent-qam-ensemble",  # QAM's 10-head critic (not in the default table)
}
DEFAULT_METHODS = ["lwd_offline", "expectile", "constant_tau", "fql"]
SINGLE_METHODS = ("lwd_offline", "qam_ensemble")  # also evaluated with one sample (best-of-N runs)


def lwd(*args: str, log: Path) -> None:
    cmd = [sys.executable, "-m", "lwd.cli", "--threads", "1", *args]
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"command failed ({rc}); see {log}: {' '.join(cmd)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(ROOT / "runs" / "fleet8_data"))
    p.add_argument("--out", default=str(ROOT / "runs" / "offline_fleet8"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--demos-per-task", type=int, default=24)
    p.add_argument(
        "--deploy-episodes",
        type=int,
        default=0,
        help="unassisted rollouts of each seed's SFT per task, added to a copy of the data "
        "(0: scripted data only, as the committed table)",
    )
    p.add_argument(
        "--best-of-n",
        type=int,
        default=1,
        help="RL methods act with the best of N flow samples under their critic (1: off); "
        "with N > 1, lwd_offline is also evaluated with one sample (row lwd_offline_single)",
    )
    p.add_argument("--width", type=int, default=256, help="policy, critic and value width")
    p.add_argument("--sft-steps", type=int, default=4000)
    p.add_argument("--steps", type=int, default=2500, help="offline RL updates per run")
    p.add_argument("--lam", type=float, default=0.1, help="QAM temperature (Q is in [0, 1])")
    p.add_argument("--actor-warmup", type=int, default=1000, help="critic-only updates first")
    p.add_argument("--n-step", type=int, default=10)
    p.add_argument("--eval-episodes", type=int, default=10, help="per task")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="1 seed, tiny runs (a smoke test)")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.sft_steps, args.steps, args.eval_episodes = [0], 50, 10, 1
        args.actor_warmup, args.deploy_episodes = 5, 1
        args.out += "_quick"
    setup_process()
    from rich.console import Console
    from rich.table import Table

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    console = Console()
    t0 = time.time()

    def evaluate(policy: Path, report: Path, *extra: str) -> dict:
        if not report.is_file():
            lwd(
                "eval",
                "--policy",
                str(policy),
                "--episodes",
                str(args.eval_episodes),
                "--workers",
                "1",
                "--json",
                str(report),
                *extra,
                log=log,
            )
        return json.loads(report.read_text())

    def sft(seed: int) -> dict:
        ckpt = out / f"sft_s{seed}"
        if not (ckpt / "trainer_state.json").is_file() or not (out / f"sft_s{seed}.json").is_file():
            lwd(
                "train",
                "sft",
                "--data",
                args.data,
                "--out",
                str(ckpt),
                "--steps",
                str(args.sft_steps),
                "--max-demos-per-task",
                str(args.demos_per_task),
                "--width",
                str(args.width),
                "--seed",
                str(seed),
                log=log,
            )
        return evaluate(ckpt, out / f"sft_s{seed}.json")

    def deployed_data(seed: int) -> str:
        """The offline data plus the seed's SFT deployment record (built once, then reused)."""
        if args.deploy_episodes == 0:
            return args.data
        data = out / f"data_s{seed}"
        if not (data / "index.sqlite").is_file():
            tmp = out / f"data_s{seed}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(args.data, tmp)
            lwd(
                "data",
                "generate",
                "--out",
                str(tmp),
                "--policy",
                str(out / f"sft_s{seed}"),
                "--episodes",
                str(args.deploy_episodes),
                "--seed",
                str(DEPLOY_SEED_BASE + seed),
                "--workers",
                "1",
                log=log,
            )
            tmp.rename(data)
        return str(data)

    def offline(method: str, seed: int) -> dict:
        run = out / f"{method}_s{seed}"
        lwd(
            "train",
            "offline",
            "--data",
            datas[seed],
            "--init",
            str(out / f"sft_s{seed}"),
            "--out",
            str(run),
            "--agent",
            METHODS[method],
            "--steps",
            str(args.steps),
            "--critic-width",
            str(args.width),
            "--lam",
            str(args.lam),
            "--n-step",
            str(args.n_step),
            "--seed",
            str(seed),
            "--checkpoint-every",
            "500",
            "--actor-warmup",
            str(args.actor_warmup),
            "--best-of-n",
            str(args.best_of_n),
            log=log,
        )
        rep = evaluate(run / "policy", out / f"{method}_s{seed}.json")
        if method in SINGLE_METHODS and args.best_of_n > 1:
            single = evaluate(run / "policy", out / f"{method}_single_s{seed}.json", *SINGLE)
            reports[f"{method}_single"][seed] = single
        return rep

    reports: dict[str, dict[int, dict]] = {m: {} for m in ["sft", *args.methods]}
    if args.best_of_n > 1:
        reports |= {f"{m}_single": {} for m in args.methods if m in SINGLE_METHODS}
    with ThreadPoolExecutor(args.parallel) as pool:
        for seed, rep in zip(args.seeds, pool.map(sft, args.seeds), strict=True):
            reports["sft"][seed] = rep
            console.print(f"[{time.time() - t0:6.0f}s] sft seed {seed}: {rep['avg_success']:.2f}")
        datas = dict(zip(args.seeds, pool.map(deployed_data, args.seeds), strict=True))
        jobs = {(m, s): pool.submit(offline, m, s) for s in args.seeds for m in args.methods}
        for (m, s), fut in jobs.items():
            reports[m][s] = fut.result()
            console.print(
                f"[{time.time() - t0:6.0f}s] {m} seed {s}: {reports[m][s]['avg_success']:.2f}"
            )

    tasks = [t["task"] for t in reports["sft"][args.seeds[0]]["tasks"]]
    metrics, table_rows = {}, {}
    for m, by_seed in reports.items():
        avg, se = mean_se([by_seed[s]["avg_success"] for s in args.seeds])
        metrics[f"{m}_avg"], metrics[f"{m}_avg_se"] = avg, se
        metrics[f"{m}_score_avg"] = mean_se([by_seed[s]["avg_score"] for s in args.seeds])[0]
        row = {}
        for i, task in enumerate(tasks):
            row[task] = mean_se([by_seed[s]["tasks"][i]["success"] for s in args.seeds])
            metrics[f"{m}_{task}"] = row[task][0]
        table_rows[m] = row
    if "lwd_offline_avg" in metrics:  # absent, not 0, in a run without lwd_offline
        metrics["lwd_minus_sft"] = metrics["lwd_offline_avg"] - metrics["sft_avg"]

    table = Table(title=f"fleet8 offline, success (mean ± s.e. over {len(args.seeds)} seeds)")
    table.add_column("task")
    for m in reports:
        table.add_column(m, justify="right")
    for task in tasks:
        table.add_row(
            task, *[f"{table_rows[m][task][0]:.2f}±{table_rows[m][task][1]:.2f}" for m in reports]
        )
    table.add_row(
        "average", *[f"{metrics[m + '_avg']:.2f}±{metrics[m + '_avg_se']:.2f}" for m in reports]
    )
    table.add_row("score", *[f"{metrics[m + '_score_avg']:.2f}" for m in reports])
    console.print(table)

    name = "offline_fleet8" + (f"_deploy{args.deploy_episodes}" if args.deploy_episodes else "")
    name += f"_bon{args.best_of_n}" if args.best_of_n > 1 else ""
    name += "_quick" if args.quick else ""
    if not set(DEFAULT_METHODS) <= set(args.methods):  # a partial run never replaces the table
        name += "_" + "_".join(args.methods)
    write_result(
        name,
        metrics,
        dict(
            seeds=args.seeds,
            width=args.width,
            sft_steps=args.sft_steps,
            steps=args.steps,
            lam=args.lam,
            actor_warmup=args.actor_warmup,
            n_step=args.n_step,
            eval_episodes_per_task=args.eval_episodes,
            demos_per_task=args.demos_per_task,
            deploy_episodes_per_task=args.deploy_episodes,
            best_of_n=args.best_of_n,
            data=args.data,
            seconds=time.time() - t0,
            methods=METHODS,
        ),
    )
    plot(tasks, table_rows, RESULTS / f"{name}.png")


def plot(tasks, rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(rows)
    x = np.arange(len(tasks) + 1)
    for k, (m, row) in enumerate(rows.items()):
        means = [row[t][0] for t in tasks] + [np.mean([row[t][0] for t in tasks])]
        errs = [row[t][1] for t in tasks] + [0]
        ax.bar(x + k * width, means, width, yerr=errs, label=m, capsize=2)
    ax.set_xticks(x + 0.4 - width / 2, [*tasks, "average"], rotation=20)
    ax.set_ylabel("success")
    ax.set_ylim(0, 1)
    ax.legend(ncol=len(rows))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
