"""``lwd <command>``: parse arguments, set process-wide settings once, call the package."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

EXIT_USAGE = 2


def _setup_process(threads: int | None) -> None:
    # Read by libraries at import time, so set before anything imports them.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # a bar per model load is noise
    os.environ.setdefault("MUJOCO_GL", "osmesa")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    warnings.filterwarnings("ignore", module="gymnasium")
    warnings.filterwarnings("ignore", module="glfw")
    import torch

    from lwd.allocator import keep_freed_memory

    keep_freed_memory()
    if threads:
        torch.set_num_threads(threads)


def _progress(description: str):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )


REFERENCE_HELP = (
    "QAM reference flow: 'frozen' SFT (LWD) or 'bc', kept training by flow BC (QAM's code)"
)


def _override(cfg, **values):
    """``cfg`` with the fields given on the command line (None: not given) replaced."""
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if v is not None})


def setting_arg(text: str):
    """argparse type for ``FIELD=VALUE`` (:func:`lwd.config.parse_setting`)."""
    from lwd.config import parse_setting

    try:
        return parse_setting(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# -- commands ------------------------------------------------------------------------------
def cmd_data_generate(args) -> int:
    from lwd.sim.generate import GenerateConfig, generate

    cfg = GenerateConfig(
        suite=args.suite,
        episodes_per_task=args.episodes,
        seed=args.seed,
        workers=args.workers,
        robots=args.robots,
        tasks=tuple(args.tasks or ()),
        policy=args.policy or "",
    )
    with _progress("generating episodes") as bar:
        tid = bar.add_task("gen", total=None, info="")

        def on(done, total, r):
            bar.update(
                tid,
                completed=done,
                total=total,
                info=f"{r['task']} {r['kind']} {'ok' if r['success'] else 'fail'}",
            )

        summary = generate(cfg, args.out, progress=on)
    _print_store_summary(summary, args.out)
    return 0


def cmd_data_info(args) -> int:
    from lwd.data.store import EpisodeStore

    if not (Path(args.dir) / "index.sqlite").is_file():
        raise FileNotFoundError(f"{args.dir} is not an episode store (no index.sqlite)")
    _print_store_summary(EpisodeStore(args.dir).summary(), args.dir)
    return 0


def _print_store_summary(summary: dict, where) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"episode store {where}")
    for col in ("task", "episodes", "steps", "success rate"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for task, s in sorted(summary["tasks"].items()):
        table.add_row(task, str(s["episodes"]), str(s["steps"]), f"{s['success_rate']:.2f}")
    Console().print(table)
    print("sources:", json.dumps(summary["sources"]))


def cmd_train_sft(args) -> int:
    from lwd.config import preset
    from lwd.learner.sft import train_sft
    from lwd.sim.tasks import task_names

    cfg = _override(
        preset(args.preset),
        steps=args.steps,
        batch_size=args.batch_size,
        max_demos_per_task=args.max_demos_per_task,
        seed=args.seed,
        lr=args.lr,
    )
    if args.width:
        cfg = dataclasses.replace(cfg, policy=dataclasses.replace(cfg.policy, width=args.width))
    with _progress("SFT") as bar:
        tid = bar.add_task("sft", total=cfg.steps, info="")

        def on(step, total, m):
            if step % 10 == 0 or step == total:
                bar.update(tid, completed=step, info=f"loss {m['bc/loss']:.4f}")

        summary = train_sft(cfg, args.data, args.out, on_step=on, known_tasks=task_names())
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}, indent=1))
    print(f"checkpoint: {args.out}")
    return 0


def cmd_train_offline(args) -> int:
    from lwd.agent import check_agent_config
    from lwd.config import EvalConfig, preset, with_settings
    from lwd.eval.evaluator import evaluate
    from lwd.learner.offline import train_offline
    from lwd.policy.instruction import InstructionEncoder
    from lwd.sim.tasks import task_names

    agent = _override(
        preset(args.agent),
        lam=args.lam,
        critic_width=args.critic_width,
        tau_base=args.tau_base,
        actor_warmup=args.actor_warmup,
        reference=args.reference,
        best_of_n=args.best_of_n,
    )
    agent = with_settings(agent, args.set)
    check_agent_config(agent)  # before any data is read
    cfg = _override(
        preset(args.preset),
        steps=args.steps,
        batch_size=args.batch_size,
        n_step=args.n_step,
        seed=args.seed,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        agent=agent,
    )
    eval_cfg = EvalConfig(episodes_per_task=args.eval_episodes, workers=args.workers)

    def evaluator(policy_dir, step):
        report = evaluate(policy_dir, eval_cfg)
        print(f"step {step}: eval avg success {report.avg_success:.2f}")
        return {"eval/avg_success": report.avg_success, "eval/avg_score": report.avg_score}

    with _progress("offline RL") as bar:
        tid = bar.add_task("offline", total=cfg.steps, info="")

        def on(step, total, m):
            if step % 5 == 0 or step == total:
                info = f"Q {m['critic/q_mean']:.3f} V {m['value/mean']:.3f}"
                if "value/tau" in m:
                    info += f" tau {m['value/tau']:.2f}"
                bar.update(tid, completed=step, info=info)

        summary = train_offline(
            cfg,
            args.data,
            args.init,
            args.out,
            InstructionEncoder(),
            on_step=on,
            evaluator=evaluator if cfg.eval_every else None,
            known_tasks=task_names(),
        )
    print(json.dumps({k: v for k, v in summary.items() if k not in ("final", "replay")}, indent=1))
    print(f"acting policy: {Path(args.out) / 'policy'}  (TensorBoard: {Path(args.out) / 'tb'})")
    return 0


def cmd_server(args) -> int:
    from lwd.fleet.server import run_server
    from lwd.sim.tasks import task_names

    run_server(
        Path(args.root), args.host, args.port, known_tasks=task_names(), log_level=args.log_level
    )
    return 0


def cmd_robot(args) -> int:
    import signal

    from lwd.fleet.robot_host import HostConfig, RobotHost
    from lwd.sim.tasks import get_suite

    tasks = get_suite(args.suite)
    if args.tasks:
        tasks = [t for t in tasks if t.name in set(args.tasks)]
        if not tasks:
            raise ValueError(f"none of {args.tasks} is a task of suite {args.suite}")
    cfg = HostConfig(
        synthetic=args.synthetic,
        episode_s=args.episode_s,
        steps=args.steps,
        perturb=args.perturb,
        operator=not args.no_operator,
        seed=args.seed,
        timeout_s=args.timeout,
        prefetch_s=None if args.no_prefetch else args.prefetch_s,
        max_active=args.max_active,
    )
    with RobotHost(args.server, args.robot_id, args.count, args.workdir, cfg) as host:
        # SIGTERM: every robot finishes, spools and drains its episode, then exits.
        signal.signal(signal.SIGTERM, lambda *_: host.stop())
        done = host.run(tasks, num_episodes=args.episodes or None)
    for robot_id, episodes in done.items():
        print(f"{robot_id}: {episodes} episodes" if episodes >= 0 else f"{robot_id}: failed")
    return 1 if any(episodes < 0 for episodes in done.values()) else 0


def cmd_learner(args) -> int:
    from lwd.config import preset
    from lwd.durable import write_atomic
    from lwd.fleet.client import FleetClient
    from lwd.learner.online import (
        PHASES,
        HttpSink,
        HttpSource,
        OnlineLearner,
        adopt_architecture,
    )
    from lwd.policy.instruction import InstructionEncoder
    from lwd.sim.tasks import task_names

    cfg = preset(args.preset)
    cfg = _override(
        cfg,
        max_updates=args.max_updates,
        seed=args.seed,
        batch_size=args.batch_size,
        n_step=args.n_step,
        cut_at_source_change=args.cut_at_source_change,
        agent=_override(
            cfg.agent,
            lam=args.lam,
            critic_width=args.critic_width,
            actor_warmup=args.actor_warmup,
            tau_base=args.tau_base,
            reference=args.reference,
            best_of_n=args.best_of_n,
        ),
    )
    cfg = adopt_architecture(cfg, args.init, keep_acting=args.best_of_n is None)
    with FleetClient(args.server, timeout_s=30.0) as client:
        learner = OnlineLearner(
            cfg,
            args.init,
            args.offline_data,
            HttpSource(client),
            HttpSink(client),
            args.out,
            InstructionEncoder(),
            known_tasks=task_names(),
        )

        def on(step, m, st):
            if args.status_file and step % 10 == 0:
                write_atomic(Path(args.status_file), json.dumps({**st, **m}).encode())
            if step % 10 == 0:
                print(
                    f"update {step}: snapshot {st['snapshot']} online {st['online_transitions']} "
                    f"published v{st['published']} {st['updates_per_s']:.1f} upd/s "
                    f"Q {m['critic/q_mean']:.3f} time: "
                    + " ".join(f"{k} {st[f'share_{k}']:.0%}" for k in PHASES),
                    flush=True,
                )

        try:
            status = learner.run(on_update=on)
        except KeyboardInterrupt:
            status = {"step": learner.step, "interrupted": True}
    print(json.dumps(status))
    return 0


def cmd_eval(args) -> int:
    from rich.console import Console

    from lwd.config import EvalConfig
    from lwd.eval.evaluator import evaluate

    cfg = EvalConfig(
        suite=args.suite,
        tasks=tuple(args.tasks or ()),
        episodes_per_task=args.episodes,
        seed=args.seed,
        perturb=not args.no_perturb,
        workers=args.workers,
        best_of_n=args.best_of_n,
    )
    with _progress("evaluating") as bar:
        tid = bar.add_task("eval", total=None, info="")

        def on(done, total, r):
            bar.update(
                tid, completed=done, total=total, info=f"{r.task} {'ok' if r.success else 'fail'}"
            )

        report = evaluate(args.policy, cfg, on_episode=on)
    Console().print(report.table())
    if args.json:
        path = report.write_json(args.json)
        png = report.plot(Path(args.json).with_suffix(".png"))
        print(f"wrote {path} and {png}")
    return 0


def cmd_demo(args) -> int:
    from lwd.config import preset, with_settings
    from lwd.demo.run import run_demo

    cfg = with_settings(preset(args.preset), args.set)
    cfg = _override(cfg, minutes=args.minutes, robots=args.robots, best_of_n=args.best_of_n)
    run_demo(cfg, Path(args.out), workers=args.workers, port=args.port)
    return 0


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lwd", description="learning while deploying")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in this process (default: torch's choice)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="offline datasets").add_subparsers(
        dest="data_cmd", required=True
    )
    g = data.add_parser("generate", help="generate the offline buffer of a task suite")
    g.add_argument("--suite", default="fleet8")
    g.add_argument("--out", required=True, help="episode store directory to create or extend")
    g.add_argument("--episodes", type=int, default=40, help="episodes per task")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--robots", type=int, default=8, help="simulated robots in the pool")
    g.add_argument("--tasks", nargs="*", help="only these tasks of the suite")
    g.add_argument(
        "--policy",
        help="instead of scripted data, unassisted rollouts of this checkpoint (its deployment "
        "record; use a --seed other than the scripted data's)",
    )
    g.set_defaults(func=cmd_data_generate)
    i = data.add_parser("info", help="summarise an episode store")
    i.add_argument("dir")
    i.set_defaults(func=cmd_data_info)

    train = sub.add_parser("train", help="training").add_subparsers(dest="train_cmd", required=True)
    s = train.add_parser("sft", help="flow-matching behaviour cloning on demonstrations")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, help="checkpoint directory (resumed if present)")
    s.add_argument("--preset", default="sft-default")
    s.add_argument("--steps", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--max-demos-per-task", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--width", type=int)
    s.add_argument("--seed", type=int)
    s.set_defaults(func=cmd_train_sft)

    o = train.add_parser("offline", help="offline RL (DIVL + QAM) from an SFT checkpoint")
    o.add_argument("--data", required=True, help="episode store (all sources are used)")
    o.add_argument("--init", required=True, help="SFT policy checkpoint (the reference flow)")
    o.add_argument("--out", required=True, help="run directory (resumed if present)")
    o.add_argument("--preset", default="offline-default")
    o.add_argument(
        "--agent",
        default="agent-default",
        help="agent preset: agent-default, agent-expectile, agent-constant-tau, agent-fql, "
        "agent-awr, agent-qam-ensemble",
    )
    o.add_argument("--steps", type=int)
    o.add_argument("--batch-size", type=int)
    o.add_argument("--n-step", type=int, help="chunks per TD backup")
    o.add_argument("--lam", type=float, help="QAM temperature lambda")
    o.add_argument("--tau-base", type=float)
    o.add_argument("--critic-width", type=int)
    o.add_argument("--actor-warmup", type=int, help="critic-only updates before extraction")
    o.add_argument("--reference", choices=("frozen", "bc"), help=REFERENCE_HELP)
    o.add_argument(
        "--best-of-n", type=int, help="act with the best of N flow samples under the critic"
    )
    o.add_argument("--seed", type=int)
    o.add_argument("--checkpoint-every", type=int)
    o.add_argument("--eval-every", type=int, help="evaluate every N updates (0: never)")
    o.add_argument("--eval-episodes", type=int, default=5, help="episodes per task per eval")
    o.add_argument("--workers", type=int, default=2, help="evaluation worker processes")
    o.add_argument(
        "--set",
        action="append",
        default=[],
        type=setting_arg,
        metavar="FIELD=VALUE",
        help="set an AgentConfig field after the options above (repeatable; e.g. critic_heads=4)",
    )
    o.set_defaults(func=cmd_train_offline)

    e = sub.add_parser("eval", help="evaluate a policy with the fixed protocol")
    e.add_argument("--policy", required=True, help="checkpoint directory, or 'operator'")
    e.add_argument("--suite", default="fleet8")
    e.add_argument("--tasks", nargs="*", help="only these tasks (their seeds stay the same)")
    e.add_argument("--episodes", type=int, default=20, help="episodes per task")
    e.add_argument("--seed", type=int, default=1000)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--no-perturb", action="store_true", help="nominal robots only")
    e.add_argument(
        "--best-of-n", type=int, help="override the checkpoint's best-of-N (1: one sample)"
    )
    e.add_argument("--json", help="write the report here (and a PNG beside it)")
    e.set_defaults(func=cmd_eval)

    sv = sub.add_parser("server", help="the fleet server (episode store + policy registry)")
    sv.add_argument("--root", required=True, help="server directory (store, policies)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--log-level", default="info", help="uvicorn's (warning: no access log)")
    sv.set_defaults(func=cmd_server)

    r = sub.add_parser("robot", help="one simulated robot of the fleet (or --count K)")
    r.add_argument("--server", required=True, help="fleet server URL, e.g. http://127.0.0.1:8000")
    r.add_argument("--robot-id", required=True)
    r.add_argument("--workdir", default="robots", help="spool and policies go here")
    r.add_argument("--suite", default="fleet8")
    r.add_argument("--tasks", nargs="*", help="restrict to these tasks")
    r.add_argument("--episodes", type=int, default=0, help="stop after N episodes (0: never)")
    r.add_argument("--seed", type=int, help="default: derived from the robot id")
    r.add_argument("--no-perturb", dest="perturb", action="store_false")
    r.add_argument("--no-operator", action="store_true", help="no interventions")
    r.add_argument("--timeout", type=float, default=10.0, help="deadline per server call (s)")
    r.add_argument("--count", type=int, help="host K robots <robot-id>-0..K-1 in this process")
    r.add_argument("--synthetic", action="store_true", help="light robots: no MuJoCo, no inference")
    r.add_argument("--episode-s", type=float, default=10.0, help="synthetic: seconds/episode")
    r.add_argument("--steps", type=int, help="synthetic: steps per episode (default: horizon)")
    r.add_argument("--prefetch-s", type=float, default=1.0, help="policy poll period (s)")
    r.add_argument("--no-prefetch", action="store_true", help="fetch policies between episodes")
    r.add_argument(
        "--max-active", type=int, help="simulated robots in an episode at once (memory cap)"
    )
    r.set_defaults(func=cmd_robot)

    ln = sub.add_parser("learner", help="the online learner (DIVL + QAM on fleet data)")
    ln.add_argument("--server", required=True, help="fleet server URL")
    ln.add_argument("--init", required=True, help="offline run directory or SFT checkpoint")
    ln.add_argument("--offline-data", required=True, help="the offline episode store")
    ln.add_argument("--out", required=True, help="run directory (resumed if present)")
    ln.add_argument("--preset", default="online-default")
    ln.add_argument("--max-updates", type=int)
    ln.add_argument("--batch-size", type=int)
    ln.add_argument("--lam", type=float)
    ln.add_argument("--critic-width", type=int)
    ln.add_argument("--actor-warmup", type=int, help="critic-only updates first (SFT init)")
    ln.add_argument("--tau-base", type=float)
    ln.add_argument("--reference", choices=("frozen", "bc"), help=REFERENCE_HELP)
    ln.add_argument(
        "--best-of-n",
        type=int,
        help="act with the best of N flow samples under the critic (default: as --init acted)",
    )
    ln.add_argument("--n-step", type=int, help="chunks per TD backup online (paper: 1)")
    ln.add_argument(
        "--cut-at-source-change",
        action="store_true",
        default=None,
        help="stop each n-chunk return before a step of another source (policy/human) and "
        "bootstrap there, so --n-step > 1 never mixes them",
    )
    ln.add_argument("--status-file", help="write the learner's status here (JSON, atomically)")
    ln.add_argument("--seed", type=int)
    ln.set_defaults(func=cmd_learner)

    d = sub.add_parser("demo", help="the whole loop on one machine: server, fleet, learner")
    d.add_argument("--out", default="runs/demo", help="start (cached) and this run's record")
    d.add_argument(
        "--preset",
        default="demo-default",
        help="demo-default (4 robots, 15 min), demo-light (64 robots), demo-quick (2 min)",
    )
    d.add_argument("--minutes", type=float, help="how long the fleet runs")
    d.add_argument("--robots", type=int, help="fleet size")
    d.add_argument(
        "--best-of-n", type=int, help="the fleet acts with the best of N samples (1: one sample)"
    )
    d.add_argument("--port", type=int, help="server port (default: a free one)")
    d.add_argument("--workers", type=int, default=2, help="processes for data and evaluation")
    d.add_argument(
        "--set",
        action="append",
        default=[],
        type=setting_arg,
        metavar="FIELD=VALUE",
        help="set a DemoConfig field of the preset (repeatable; e.g. policy_width=256)",
    )
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_process(args.threads)
    from lwd.data.schema import EpisodeValidationError
    from lwd.durable import LockedError
    from lwd.policy.checkpoint import CheckpointError

    try:
        return args.func(args)
    except (
        FileNotFoundError,
        ValueError,
        KeyError,
        CheckpointError,
        EpisodeValidationError,
        LockedError,
    ) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"lwd: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
