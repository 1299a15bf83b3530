"""The fleet8 online table: SFT / LWD-offline / LWD-online / HG-DAgger / RECAP, one robot-hour budget.

    python benchmarks/fleet_online.py --data /work/runs/fleet8_data [--seeds 0 1 2] [--quick]

For each seed, every online method starts from the same SFT checkpoint (LWD-online from the
LWD-offline run trained from that SFT), gets the same fleet (``--robots`` perturbed simulated
robots, the scripted operator intervening), the same budget (``--rounds`` x
``--robot-hours`` simulated robot-hours) and the same learner compute (``--updates`` per round,
batch ``--batch-size``); see lwd.learner.fleet_online. Final policies, SFT and LWD-offline are
evaluated with the fixed protocol (lwd.eval.evaluator, ``--eval-episodes`` per task).

Existing checkpoints are reused: ``--sft`` and ``--offline`` are path patterns with ``{seed}``
(default: the offline_fleet8 benchmark's runs); missing ones are built here (data generation,
SFT, offline RL) with the small settings below. An evaluation report saved beside a checkpoint
(``<ckpt>.json``, as offline_fleet8 writes) is reused when its protocol is the same. Finished
online runs (``OUT/<method>_s<seed>/result.json``) are reused, so a killed benchmark resumes.

Reported: per-task success, average, step-wise score and cycle time of the final policies
(mean +- standard error over seeds); per round, the fleet's autonomous success (no
intervention), intervention rate, score, cycle time and robot-hours so far.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import RESULTS, setup_process, write_result  # noqa: E402

from lwd.cli import setting_arg  # noqa: E402
from lwd.eval.report import mean_se  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ONLINE = ("lwd_online", "hgdagger", "recap")
LABELS = {
    "sft": "SFT",
    "lwd_offline": "LWD-offline",
    "lwd_online": "LWD-online",
    "hgdagger": "HG-DAgger",
    "recap": "RECAP",
}
PROTOCOL = ("suite", "episodes_per_task", "seed", "perturb", "num_robots")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data",
        default=str(ROOT / "runs" / "fleet8_data"),
        help="offline store; may hold {seed} (e.g. offline_fleet8's data_s{seed}: the scripted "
        "store plus that seed's SFT deployment record)",
    )
    p.add_argument("--out", default=str(ROOT / "runs" / "fleet_online"))
    p.add_argument("--sft", default=str(ROOT / "runs" / "offline_fleet8" / "sft_s{seed}"))
    p.add_argument(
        "--offline", default=str(ROOT / "runs" / "offline_fleet8" / "lwd_offline_s{seed}")
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(ONLINE), choices=ONLINE)
    budget = p.add_argument_group("the online budget (the same for every method)")
    budget.add_argument("--rounds", type=int, default=6)
    budget.add_argument("--robot-hours", type=float, default=0.25, help="per round")
    budget.add_argument("--robots", type=int, default=8)
    budget.add_argument("--updates", type=int, default=300, help="learner updates per round")
    budget.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--reference",
        choices=("frozen", "bc"),
        default="frozen",
        help="LWD-online's QAM reference: the frozen SFT (LWD) or a BC-trained one (QAM's code)",
    )
    p.add_argument(
        "--takeover-as-failure",
        action="store_true",
        help="LWD-online: end an autonomous return at the operator's takeover, no bootstrap",
    )
    p.add_argument(
        "--best-of-n",
        type=int,
        help="LWD-online acts with the best of N flow samples under its critic (default: as "
        "the LWD-offline run it continues)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        type=setting_arg,
        metavar="FIELD=VALUE",
        help="LWD-online: set a field of OnlineConfig or AgentConfig (repeatable; e.g. "
        "n_step=10, extraction=none)",
    )
    p.add_argument("--eval-episodes", type=int, default=10, help="per task, final evaluation")
    p.add_argument("--workers", type=int, default=2, help="episode-collecting processes")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the learners")
    build = p.add_argument_group("building missing starts (as offline_fleet8, but shorter)")
    build.add_argument("--generate-episodes", type=int, default=40, help="per task")
    build.add_argument("--demos-per-task", type=int, default=24)
    build.add_argument("--width", type=int, default=256, help="policy, critic and value width")
    build.add_argument("--sft-steps", type=int, default=2000)
    build.add_argument("--offline-steps", type=int, default=1500)
    build.add_argument("--actor-warmup", type=int, default=500)
    build.add_argument("--lam", type=float, default=0.1, help="QAM temperature (Q in [0, 1])")
    build.add_argument("--n-step", type=int, default=10)
    p.add_argument(
        "--name",
        help="result file name (default: fleet_online for the full table, else one naming the "
        "methods and variant, so a partial or variant run never overwrites the table)",
    )
    p.add_argument("--quick", action="store_true", help="1 seed, tiny everything (a smoke test)")
    args = p.parse_args()
    if args.name is None:
        parts = ["fleet_online"]
        if set(args.methods) != set(ONLINE):
            parts += args.methods
        if args.reference != "frozen":
            parts.append(f"reference_{args.reference}")
        if args.takeover_as_failure:
            parts.append("takeover_as_failure")
        if args.best_of_n is not None:
            parts.append(f"bon{args.best_of_n}")
        parts += [f"{k}_{v}" for k, v in args.set]
        parts += ["quick"] if args.quick else []
        args.name = "_".join(parts)
    if args.quick:
        args.seeds, args.rounds, args.robot_hours, args.robots = [0], 2, 0.02, 4
        args.updates, args.batch_size, args.eval_episodes = 10, 64, 1
        args.generate_episodes, args.sft_steps, args.offline_steps, args.actor_warmup = 4, 50, 10, 5
        args.out += "_quick"
        args.sft = str(Path(args.out) / "sft_s{seed}")
        args.offline = str(Path(args.out) / "lwd_offline_s{seed}")
    return args


class Bench:
    """One benchmark run: starts, evaluations and online runs, with progress lines."""

    def __init__(self, args: argparse.Namespace) -> None:
        from rich.console import Console

        from lwd.config import EvalConfig
        from lwd.policy.instruction import InstructionEncoder

        self.args, self.out = args, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.console = Console(width=None if sys.stdout.isatty() else 140)  # logs: long lines
        self.t0 = time.time()
        self.encoder = InstructionEncoder()
        self.eval_cfg = EvalConfig(episodes_per_task=args.eval_episodes, workers=args.workers)

    def say(self, text: str) -> None:
        self.console.print(f"[{time.time() - self.t0:6.0f}s] {text}", highlight=False)

    # ------------------------------------------------------------------------- starts
    def data(self, seed: int) -> Path:
        from lwd.sim.generate import GenerateConfig, generate

        data = Path(self.args.data.format(seed=seed))
        if not (data / "index.sqlite").is_file():
            self.say(f"generating the offline store {data}")
            cfg = GenerateConfig(
                episodes_per_task=self.args.generate_episodes, workers=self.args.workers
            )
            generate(cfg, data)
        return data

    def sft(self, seed: int) -> Path:
        from lwd.config import SFTConfig
        from lwd.learner.sft import train_sft
        from lwd.sim.tasks import task_names

        path = Path(self.args.sft.format(seed=seed))
        if (path / "config.json").is_file():
            return path
        a, path = self.args, self.out / f"sft_s{seed}"
        state = path / "trainer_state.json"
        if not state.is_file() or json.loads(state.read_text())["step"] < a.sft_steps:
            self.say(f"training SFT seed {seed} -> {path}")
            cfg = SFTConfig(steps=a.sft_steps, max_demos_per_task=a.demos_per_task, seed=seed)
            cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, width=a.width))
            train_sft(cfg, self.data(seed), path, self.encoder, known_tasks=task_names())
        return path

    def offline(self, seed: int, sft: Path) -> Path:
        from lwd.config import AgentConfig, OfflineConfig
        from lwd.learner.offline import latest_checkpoint, train_offline
        from lwd.policy.checkpoint import read_checkpoint_config

        a, path = self.args, Path(self.args.offline.format(seed=seed))
        if not (path / "LATEST").is_file():
            path = self.out / f"lwd_offline_s{seed}"
            last = latest_checkpoint(path) if path.is_dir() else None
            if last is None or last.name != f"step-{a.offline_steps:07d}":
                self.say(f"training LWD-offline seed {seed} -> {path}")
                agent = AgentConfig(critic_width=a.width, lam=a.lam, actor_warmup=a.actor_warmup)
                cfg = OfflineConfig(steps=a.offline_steps, n_step=a.n_step, seed=seed, agent=agent)
                train_offline(cfg, self.data(seed), sft, path, self.encoder)  # resumes if killed
        init = read_checkpoint_config(path / "policy").get("extra", {}).get("init")
        if init is not None and Path(init).resolve() != sft.resolve():
            raise ValueError(
                f"{path} was trained from {init}, not from the SFT {sft}; pass --sft and "
                f"--offline patterns that belong together"
            )
        return path

    # ---------------------------------------------------------------------- evaluation
    def evaluate(self, policy: Path, report: Path, reuse: Path | None = None) -> dict:
        from lwd.config import to_dict
        from lwd.eval.evaluator import evaluate

        want = {k: to_dict(self.eval_cfg)[k] for k in PROTOCOL}
        for path in (report, reuse):
            if path is not None and path.is_file():
                saved = json.loads(path.read_text())
                same = {k: saved["config"].get(k) for k in PROTOCOL} == want
                same &= not saved["config"].get("tasks")  # the whole suite
                if same and Path(saved["policy"]).resolve() == policy.resolve():
                    return saved
        self.say(f"evaluating {policy}")
        result = evaluate(policy, self.eval_cfg)
        result.write_json(report)
        return json.loads(report.read_text())

    # ------------------------------------------------------------------------ online
    def online(self, name: str, seed: int, sft: Path, offline: Path) -> dict:
        from lwd.learner.fleet_online import STARTS, make_method, run_fleet_online
        from lwd.sim.tasks import task_names

        a, run = self.args, self.out / f"{name}_s{seed}"
        done = run / "result.json"
        if done.is_file():
            return json.loads(done.read_text())
        shutil.rmtree(run, ignore_errors=True)  # an unfinished run restarts from round 0
        init = offline if STARTS[name] == "offline" else sft
        method = make_method(
            name,
            init,
            self.data(seed),
            run / "method",
            self.encoder,
            seed=seed,
            updates_per_round=a.updates,
            batch_size=a.batch_size,
            **self.overrides(name),
        )

        def on_round(r) -> None:
            self.say(
                f"{LABELS[name]} s{seed} round {r.round + 1}/{a.rounds}: fleet success "
                f"{r.success:.2f}, interventions {r.intervention_rate:.2f} of episodes "
                f"({r.intervention_steps:.2f} of steps), score {r.score:.2f}, cycle "
                f"{r.cycle_time_s:.1f} s, {r.episodes} episodes, {r.robot_hours_total:.2f} "
                f"robot-h (collect {r.collect_s:.0f} s, learn {r.improve_s:.0f} s)"
            )

        history = run_fleet_online(
            method,
            task_names(),
            a.robots,
            a.rounds,
            robot_hours_per_round=a.robot_hours,
            seed=seed,
            workers=a.workers,
            store=run / "fleet",
            on_round=on_round,
        )
        report = self.evaluate(Path(history[-1].improved), run / "eval.json")
        self.say(f"{LABELS[name]} s{seed}: eval success {report['avg_success']:.2f}")
        result = dict(
            method=name,
            seed=seed,
            init=str(init),
            history=[dataclasses.asdict(r) for r in history],
            eval=report,
        )
        done.write_text(json.dumps(result, indent=1))
        return result

    def overrides(self, name: str) -> dict:
        if name == "lwd_online":
            a = self.args
            chosen = {"reference": a.reference, "takeover_as_failure": a.takeover_as_failure}
            chosen |= {} if a.best_of_n is None else {"best_of_n": a.best_of_n}
            return chosen | dict(a.set)
        if name != "recap":
            return {}
        # RECAP's value net gets the width and the update count the others' nets get.
        from lwd.config import RecapConfig

        known = {f.name for f in dataclasses.fields(RecapConfig)}
        wanted = dict(value_width=self.args.width, value_updates_per_round=self.args.updates)
        return {k: v for k, v in wanted.items() if k in known}


# ----------------------------------------------------------------------------- reporting
def summarize(reports: dict[str, dict[int, dict]], histories) -> tuple[dict, dict]:
    """Flat metrics (means over seeds) and the per-method table rows."""
    metrics, rows = {}, {}
    for m, by_seed in reports.items():
        if not by_seed:  # not run yet (the live table while the benchmark goes on)
            continue
        seeds = sorted(by_seed)
        first = by_seed[seeds[0]]
        tasks = [t["task"] for t in first["tasks"]]
        avg, se = mean_se([by_seed[s]["avg_success"] for s in seeds])
        score, score_se = mean_se([by_seed[s]["avg_score"] for s in seeds])
        cycle = [np.mean([t["cycle_time_s"] for t in by_seed[s]["tasks"]]) for s in seeds]
        cycle_mean, cycle_se = mean_se(cycle)
        metrics |= {f"{m}_avg": avg, f"{m}_avg_se": se, f"{m}_score_avg": score}
        metrics |= {f"{m}_score_se": score_se, f"{m}_cycle_time_s": cycle_mean}
        row = {}
        for i, task in enumerate(tasks):
            row[task] = mean_se([by_seed[s]["tasks"][i]["success"] for s in seeds])
            metrics[f"{m}_{task}"] = row[task][0]
        row |= {
            "average": (avg, se),
            "score": (score, score_se),
            "cycle (s)": (cycle_mean, cycle_se),
        }
        rows[m] = row
    for m, by_seed in histories.items():
        if not by_seed:
            continue
        last = [h[-1] for h in by_seed.values()]
        metrics[f"{m}_robot_hours"] = float(np.mean([r["robot_hours_total"] for r in last]))
        metrics[f"{m}_fleet_success_first"] = float(
            np.mean([h[0]["success"] for h in by_seed.values()])
        )
        metrics[f"{m}_fleet_success_last"] = float(np.mean([r["success"] for r in last]))
        metrics[f"{m}_intervention_rate_first"] = float(
            np.mean([h[0]["intervention_rate"] for h in by_seed.values()])
        )
        metrics[f"{m}_intervention_rate_last"] = float(
            np.mean([r["intervention_rate"] for r in last])
        )
    return metrics, rows


def table(rows: dict, seeds: int):
    from rich.table import Table

    t = Table(title=f"fleet8 online: final policies, success (mean ± s.e. over {seeds} seeds)")
    t.add_column("task")
    for m in rows:
        t.add_column(LABELS[m], justify="right")
    for name in next(iter(rows.values())):  # the tasks, then average, score, cycle
        if name == "average":
            t.add_section()
        fmt = "{:.1f}±{:.1f}" if name == "cycle (s)" else "{:.2f}±{:.2f}"
        t.add_row(name, *[fmt.format(*rows[m][name]) for m in rows])
    return t


def plot(histories: dict, reports: dict, prefix: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, ylabel, suffix in (
        ("success", "fleet autonomous success", "success"),
        ("intervention_rate", "episodes with an intervention", "interventions"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4))
        for m, by_seed in histories.items():
            runs = list(by_seed.values())
            n = min(len(h) for h in runs)
            y = np.array([[h[k][key] for k in range(n)] for h in runs])
            mean = y.mean(0)
            se = y.std(0, ddof=1) / np.sqrt(len(runs)) if len(runs) > 1 else 0 * mean
            if key == "success":  # x: robot-hours of experience behind the acting policy
                before = [
                    [h[k]["robot_hours_total"] - h[k]["robot_hours"] for k in range(n)]
                    for h in runs
                ]
                x = np.mean(before, axis=0)
                ax.set_xlabel("robot-hours of fleet experience")
            else:
                x = np.arange(1, n + 1)
                ax.set_xticks(x)
                ax.set_xlabel("round")
            line = ax.plot(x, mean, marker="o", label=f"{LABELS[m]} (fleet)")[0]
            ax.fill_between(x, mean - se, mean + se, alpha=0.2, color=line.get_color())
            if key == "success" and m in reports:
                total = np.mean([h[-1]["robot_hours_total"] for h in runs])
                final = np.mean([r["avg_success"] for r in reports[m].values()])
                ax.plot([total], [final], marker="*", ms=12, color=line.get_color(), ls="")
        if key == "success":
            for m, style in (("sft", ":"), ("lwd_offline", "--")):
                if m in reports:
                    level = np.mean([r["avg_success"] for r in reports[m].values()])
                    ax.axhline(level, ls=style, color="gray", label=f"{LABELS[m]} (eval)")
            ax.set_title("fleet success per round; ★ = final policy, fixed-protocol eval")
        else:
            ax.set_title("intervention rate per round")
        ax.set_ylabel(ylabel)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = prefix.with_name(f"{prefix.name}_{suffix}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
        print(f"wrote {path}")
    return paths


def main() -> None:
    args = parse()
    setup_process()
    import torch

    torch.set_num_threads(args.threads)
    methods = list(args.methods)
    if "recap" in methods and importlib.util.find_spec("lwd.learner.recap") is None:
        print("lwd.learner.recap is not there yet: RECAP is skipped")
        methods.remove("recap")
    bench = Bench(args)
    reports: dict[str, dict[int, dict]] = {m: {} for m in ["sft", "lwd_offline", *methods]}
    histories: dict[str, dict[int, list]] = {m: {} for m in methods}
    for seed in args.seeds:
        sft = bench.sft(seed)
        offline = bench.offline(seed, sft)
        reports["sft"][seed] = bench.evaluate(
            sft, bench.out / f"eval_sft_s{seed}.json", Path(f"{sft}.json")
        )
        reports["lwd_offline"][seed] = bench.evaluate(
            offline / "policy",
            bench.out / f"eval_lwd_offline_s{seed}.json",
            Path(f"{offline}.json"),
        )
        for m in ("sft", "lwd_offline"):
            bench.say(f"{LABELS[m]} s{seed}: eval success {reports[m][seed]['avg_success']:.2f}")
        for m in methods:
            result = bench.online(m, seed, sft, offline)
            reports[m][seed], histories[m][seed] = result["eval"], result["history"]
            if (seed, m) != (args.seeds[-1], methods[-1]):  # the live table; the last is below
                bench.console.print(table(summarize(reports, histories)[1], len(args.seeds)))

    metrics, rows = summarize(reports, histories)
    bench.console.print(table(rows, len(args.seeds)))
    name = args.name
    details = dict(
        seeds=args.seeds,
        methods=methods,
        budget=dict(
            rounds=args.rounds,
            robot_hours_per_round=args.robot_hours,
            robots=args.robots,
            updates_per_round=args.updates,
            batch_size=args.batch_size,
        ),
        eval_episodes_per_task=args.eval_episodes,
        data=args.data,
        sft=args.sft,
        offline=args.offline,
        seconds=time.time() - bench.t0,
        per_seed={
            m: {
                str(s): dict(
                    avg_success=r["avg_success"],
                    avg_score=r["avg_score"],
                    tasks={
                        t["task"]: dict(
                            success=t["success"],
                            progress=t["progress"],
                            cycle_time_s=t["cycle_time_s"],
                        )
                        for t in r["tasks"]
                    },
                )
                for s, r in by_seed.items()
            }
            for m, by_seed in reports.items()
        },
        rounds={m: {str(s): h for s, h in by_seed.items()} for m, by_seed in histories.items()},
    )
    write_result(name, metrics, details)
    plot(histories, reports, RESULTS / name)


if __name__ == "__main__":
    main()
