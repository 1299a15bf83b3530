"""``lwd demo``: deployment → shared experience → policy improvement → redeployment, live.

One run::

    build (or reuse) the start    out/data: offline episodes of the demo tasks (lwd data generate)
                                  out/sft:  the imitation-learned policy (lwd train sft)
                                  out/data_deployed: out/data + the SFT's own rollouts
                                  out/offline: DIVL critic on it (lwd train offline); the
                                    fleet's first policy is the SFT acting best-of-N under it
    start the loop                lwd server  -> out/server (store + policy registry)
                                  lwd learner -> from out/offline, 1:1 offline:online, publishes
                                  lwd robot × N  (perturbed SimRobots, scripted operator)
    watch                         live view from the server's record (lwd.demo.view)
    stop, evaluate, report        SFT, start and final policy on the fixed protocol; table + PNGs

The start is cached in ``out`` and reused by later runs; the fleet's part (server, robots,
learner) starts fresh each run, so each report describes one run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from lwd.config import DemoConfig, EvalConfig, SFTConfig
from lwd.demo.processes import FleetProcesses, free_port
from lwd.demo.report import (
    fleet_report,
    improvement_lines,
    latency_table,
    report_table,
    write_report,
)
from lwd.demo.view import render
from lwd.demo.watch import FleetWatch
from lwd.durable import exclusive_lock
from lwd.eval.report import mean_se
from lwd.sim.generate import GenerateConfig, generate


@dataclasses.dataclass(frozen=True)
class Start:
    """What the fleet starts from (built once in ``out``, then reused)."""

    data: Path
    """The learner's offline store (the generated data, plus the SFT's deployment record)."""
    sft: Path
    """The imitation-learned policy."""
    init: Path
    """What the learner continues: the offline run, or ``sft`` without an offline stage."""


def build_start(cfg: DemoConfig, out: Path, workers: int, console: Console) -> Start:
    """Data, SFT and (with ``cfg.offline_steps``) the offline stage; each built once, then reused."""
    from lwd.learner.sft import train_sft

    _claim_start(cfg, out)
    data, sft = out / "data", out / "sft"
    _generate(
        data,
        GenerateConfig(
            tasks=cfg.tasks, episodes_per_task=cfg.episodes_per_task, seed=cfg.seed, workers=workers
        ),
        console,
        "offline data",
    )
    if not (sft / "config.json").is_file() or _unfinished(sft, cfg.sft_steps):
        base = SFTConfig()
        sft_cfg = dataclasses.replace(
            base,
            steps=cfg.sft_steps,
            seed=cfg.seed,
            policy=dataclasses.replace(base.policy, width=cfg.policy_width),
        )
        with _status(console, "training the SFT start", "updates", every=50) as on_step:
            train_sft(sft_cfg, data, sft, on_step=on_step)
    if not cfg.offline_steps:
        return Start(data, sft, sft)
    if cfg.deploy_episodes:
        deployed = out / "data_deployed"
        record = GenerateConfig(
            tasks=cfg.tasks,
            episodes_per_task=cfg.deploy_episodes,
            seed=cfg.seed + 1,
            workers=workers,
            policy=str(sft),
        )
        _generate(deployed, record, console, "the SFT's deployment record", copy_of=data)
        data = deployed
    return Start(data, sft, _offline_stage(cfg, data, sft, out / "offline", console))


START_FIELDS = (
    "tasks",
    "episodes_per_task",
    "sft_steps",
    "policy_width",
    "critic_width",
    "deploy_episodes",
    "offline_steps",
    "seed",
)
"""The DemoConfig fields the cached start is built from."""


def _claim_start(cfg: DemoConfig, out: Path) -> None:
    """Record what the start in ``out`` is built from; refuse to reuse one built otherwise
    (a cached SFT of another width or data would silently stand in for the one asked for)."""
    wanted = {k: v for k, v in dataclasses.asdict(cfg).items() if k in START_FIELDS}
    wanted["tasks"] = list(wanted["tasks"])
    record = out / "start.json"
    if record.is_file():
        built = json.loads(record.read_text())
        changed = sorted(k for k in wanted if built.get(k) != wanted[k])
        if changed:
            diff = ", ".join(f"{k}: {built.get(k)!r} there, {wanted[k]!r} asked" for k in changed)
            raise ValueError(
                f"{out} holds a demo start built with other settings ({diff}); pass another "
                "--out to build a new start there, or the same settings to reuse it"
            )
        return
    record.write_text(json.dumps(wanted, indent=1))


@contextlib.contextmanager
def _status(console: Console, what: str, unit: str, every: int = 1):
    """A spinner line ``what: done/total unit``; yields the ``(done, total, ...)`` callback."""
    with console.status(what) as status:

        def on(done: int, total: int, *_) -> None:
            if done % every == 0 or done == total:
                status.update(f"{what}: {done}/{total} {unit}")

        yield on


def _generate(
    store: Path, gen: GenerateConfig, console: Console, what: str, copy_of: Path | None = None
) -> None:
    """Generate ``gen`` into ``store`` (added to a copy of ``copy_of``), unless already there."""
    if (store / "index.sqlite").is_file():
        return
    tmp = store.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if copy_of is not None:
        shutil.copytree(copy_of, tmp)
    with _status(console, f"generating {what}", "episodes") as on:
        generate(gen, tmp, progress=on)
    tmp.rename(store)  # a half-built store is never mistaken for done


def _offline_stage(cfg: DemoConfig, data: Path, sft: Path, run: Path, console: Console) -> Path:
    """Offline DIVL on ``data``, critic only: the flow stays the SFT's, the critic learns to rank
    its samples, and the run's acting policy is the SFT acting best-of-N under that critic."""
    from lwd.config import AgentConfig, OfflineConfig
    from lwd.learner.offline import latest_checkpoint, train_offline
    from lwd.policy.instruction import InstructionEncoder

    last = latest_checkpoint(run) if run.is_dir() else None
    if last is not None and last.name == f"step-{cfg.offline_steps:07d}":
        return run
    agent = AgentConfig(
        critic_width=cfg.critic_width,
        lam=cfg.lam,
        actor_warmup=cfg.offline_steps,
        best_of_n=cfg.best_of_n,
    )
    off = OfflineConfig(steps=cfg.offline_steps, seed=cfg.seed, agent=agent)
    with _status(console, "training the offline critic", "updates", every=50) as on_step:
        train_offline(off, data, sft, run, InstructionEncoder(), on_step=on_step)  # resumes
    return run


def _unfinished(sft: Path, steps: int) -> bool:
    state = sft / "trainer_state.json"
    return state.is_file() and json.loads(state.read_text()).get("step", steps) < steps


def _start_fleet(cfg: DemoConfig, out: Path, start: Start, port: int):
    procs = FleetProcesses(out / "logs")
    url = procs.start_server(out / "server", port)
    # From the offline run, the critic is already trained: the policy may move at once.
    warmup = cfg.actor_warmup if start.init == start.sft else 0
    procs.start(
        "learner",
        [
            "learner",
            "--server", url,
            "--init", str(start.init),
            "--offline-data", str(start.data),
            "--out", str(out / "learner"),
            "--critic-width", str(cfg.critic_width),
            "--lam", str(cfg.lam),
            "--actor-warmup", str(warmup),
            "--best-of-n", str(cfg.best_of_n),
            "--n-step", str(cfg.online_n_step),
            "--seed", str(cfg.seed),
            "--status-file", str(out / "learner" / "status.json"),
        ] + (["--cut-at-source-change"] if cfg.cut_at_source_change else []),
    )  # fmt: skip
    per = max(1, cfg.robots_per_process)
    for k in range(0, cfg.robots, per):
        count = min(per, cfg.robots - k)
        argv = ["robot", "--server", url, "--workdir", str(out / "robots"), "--tasks", *cfg.tasks]
        if per == 1:
            name = f"robot-{k}"
            argv += ["--robot-id", name]
        else:
            name = f"robots-{k // per}"
            argv += ["--robot-id", name, "--count", str(count)]
            if cfg.active_per_process:
                argv += ["--max-active", str(cfg.active_per_process)]
        procs.start(name, argv, nice=cfg.robot_nice)
    return procs, url


def evaluate_policies(
    cfg: DemoConfig,
    policies: dict[str, Path],
    workers: int,
    console: Console,
    cache: Path | None = None,
) -> dict:
    """Each policy on the fixed protocol (same seeds and perturbations) for the demo tasks.

    ``policies``: name -> checkpoint, in the order the report shows them (``sft`` when the
    fleet did not start from it, ``start``: the fleet's first version, ``final``). With
    ``cache``, a policy whose files and protocol equal an earlier evaluation's is not run again
    (the SFT and the start are the same in every run from one cached start).

    Returns per-task success per policy, ``<name>_avg`` and ``<name>_se`` (over all episodes),
    and for the last policy against each earlier one the paired difference over the same
    episodes: ``<last>_minus_<name>``, its standard error ``..._se`` and the number of pairs ``..._n``.
    """
    protocol = EvalConfig(tasks=cfg.tasks, episodes_per_task=cfg.eval_episodes, workers=workers)
    result = {"episodes_per_task": cfg.eval_episodes, "policies": list(policies)}
    outcomes = {}
    for name, policy in policies.items():
        record = _evaluate_cached(policy, protocol, cache, console, f"the {name} policy")
        outcomes[name] = record["outcomes"]
        result[name] = record["success"]
        result[f"{name}_avg"], result[f"{name}_se"] = mean_se(list(record["outcomes"].values()))
    last = list(policies)[-1]
    for name in list(policies)[:-1]:
        pairs = outcomes[last].keys() & outcomes[name].keys()
        diff, se = mean_se([outcomes[last][k] - outcomes[name][k] for k in sorted(pairs)])
        result[f"{last}_minus_{name}"], result[f"{last}_minus_{name}_se"] = diff, se
        result[f"{last}_minus_{name}_n"] = len(pairs)
    return result


def _evaluate_cached(
    policy: Path, protocol: EvalConfig, cache: Path | None, console: Console, what: str
) -> dict:
    """``{"success": task -> rate, "outcomes": "task/seed" -> 0 or 1}`` of ``policy`` on
    ``protocol``; read from ``cache`` when an equal policy was evaluated there the same way."""
    import hashlib

    from lwd.config import to_dict
    from lwd.eval.evaluator import evaluate
    from lwd.fleet.registry import build_archive

    want = json.loads(json.dumps({k: v for k, v in to_dict(protocol).items() if k != "workers"}))
    saved = None
    if cache is not None:
        saved = cache / f"{hashlib.sha256(build_archive(policy)).hexdigest()[:20]}.json"
        if saved.is_file():
            record = json.loads(saved.read_text())
            if record.get("protocol") == want:
                return record
    with _status(console, f"evaluating {what}", "episodes") as on:
        report = evaluate(policy, protocol, on_episode=on)
    record = {
        "protocol": want,
        "policy": str(policy),
        "success": {t.task: t.success for t in report.tasks},
        "outcomes": {f"{e.task}/{e.seed}": float(e.success) for e in report.episodes},
    }
    if saved is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(record))
    return record


ACTIVE_ROBOT_MB = 300
"""Resident memory of a simulated robot in an episode: mostly the OGBench environment it
borrows (measured: a host process of 32 robots, all in episodes, held 9.7 GB)."""
IDLE_ROBOT_MB = 30
"""Resident memory of a robot waiting between episodes (its agent, spool and buffers)."""


def available_mb() -> float | None:
    """``MemAvailable`` from /proc/meminfo, or None where there is none (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def fleet_memory_mb(cfg: DemoConfig) -> float:
    """What the demo's simulated fleet needs resident: active robots hold an environment."""
    per = max(1, cfg.robots_per_process)
    sizes = [min(per, cfg.robots - k) for k in range(0, cfg.robots, per)]
    active = sum(min(n, cfg.active_per_process or n) for n in sizes)
    return active * ACTIVE_ROBOT_MB + (cfg.robots - active) * IDLE_ROBOT_MB


def check_memory(cfg: DemoConfig, available: float | None) -> None:
    """Refuse a fleet this machine cannot hold, before anything starts (not after an OOM kill)."""
    need = fleet_memory_mb(cfg)
    if available is not None and need > 0.9 * available:
        fits = max(1, int(0.9 * available / ACTIVE_ROBOT_MB))
        raise ValueError(
            f"{cfg.robots} simulated robots need about {need / 1024:.1f} GB "
            f"({ACTIVE_ROBOT_MB} MB for each robot in an episode: it holds a MuJoCo "
            f"environment) but {available / 1024:.1f} GB is available; run at most {fits} robots "
            f"in episodes at once here (--robots, or robots_per_process with "
            f"active_per_process)"
        )


def run_demo(cfg: DemoConfig, out: Path, workers: int = 2, port: int | None = None) -> dict:
    """Build the start, run the fleet for ``cfg.minutes``, evaluate, report; returns the report."""
    if cfg.best_of_n > 1 and not cfg.offline_steps:
        raise ValueError(
            f"best_of_n={cfg.best_of_n} needs the offline stage's critic to rank samples, but "
            f"offline_steps=0; set offline_steps > 0 or best_of_n=1 (--best-of-n 1)"
        )
    check_memory(cfg, available_mb())
    out = Path(out)
    with exclusive_lock(out / ".lock", "lwd demo"):  # two runs would delete each other's fleet
        return _run_demo(cfg, out, workers, port)


def _run_demo(cfg: DemoConfig, out: Path, workers: int, port: int | None) -> dict:
    console = Console()
    start = build_start(cfg, out, workers, console)
    for part in ("server", "robots", "learner", "logs", "report"):
        shutil.rmtree(out / part, ignore_errors=True)  # the loop starts fresh every run
    procs, url = _start_fleet(cfg, out, start, port or free_port())
    watch = FleetWatch(out / "server", out / "robots", out / "learner" / "status.json", url)
    total_s, t0 = cfg.minutes * 60, time.monotonic()
    failed: list[str] = []
    try:
        with Live(render(watch, 0, total_s), console=console, refresh_per_second=2) as live:
            while (elapsed := time.monotonic() - t0) < total_s:
                time.sleep(1.0)
                watch.refresh()
                live.update(render(watch, elapsed, total_s))
                failed = procs.failed()
                if failed:
                    break
    except KeyboardInterrupt:
        console.print("interrupted: stopping the fleet and writing the report")
    finally:
        procs.stop()
    if failed:
        details = "\n".join(f"--- {n} ---\n{procs.tail(n)}" for n in failed)
        raise RuntimeError(f"{', '.join(failed)} exited with an error:\n{details}")
    watch.refresh()
    evaluation = None
    versions = sorted(watch.versions)
    if cfg.eval_episodes and len(versions) > 1:
        final = watch.registry.get(versions[-1])
        # the start is the version the fleet ran first (the learner's v1), as published
        policies = {"start": watch.registry.get(versions[0]), "final": final}
        if start.init != start.sft:
            policies = {"sft": start.sft} | policies
        evaluation = evaluate_policies(cfg, policies, workers, console, cache=out / "evals")
    report = fleet_report(watch, evaluation)
    paths = write_report(report, out / "report")
    console.print(report_table(report))
    for line in improvement_lines(report):
        console.print(line)
    console.print(latency_table(report))
    console.print(
        f"{report['episodes']} episodes, {report['robot_hours']:.2f} robot-hours, "
        f"{report['policy_versions']} policy versions; report: {paths[0].parent}"
    )
    return report
