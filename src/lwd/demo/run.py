"""``lwd demo``: deployment → shared experience → policy improvement → redeployment, live.

One run::

    build (or reuse) the start    out/data: offline episodes of the demo tasks (lwd data generate)
                                  out/sft:  the imitation-learned policy (lwd train sft)
    start the loop                lwd server  -> out/server (store + policy registry)
                                  lwd learner -> from out/sft, 1:1 offline:online, publishes
                                  lwd robot × N  (perturbed SimRobots, scripted operator)
    watch                         live view from the server's record (lwd.demo.view)
    stop, evaluate, report        start vs final policy on the fixed protocol; table + PNGs

The start is cached in ``out`` and reused by later runs; the fleet's part (server, robots,
learner) starts fresh each run, so each report describes one run.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from lwd.config import DemoConfig, EvalConfig, SFTConfig
from lwd.demo.processes import FleetProcesses, free_port
from lwd.demo.report import fleet_report, latency_table, report_table, write_report
from lwd.demo.view import render
from lwd.demo.watch import FleetWatch


def build_start(cfg: DemoConfig, out: Path, workers: int, console: Console) -> tuple[Path, Path]:
    """The offline store and SFT checkpoint the fleet starts from (built once, then reused)."""
    from lwd.learner.sft import train_sft
    from lwd.sim.generate import GenerateConfig, generate

    data, sft = out / "data", out / "sft"
    if not (data / "index.sqlite").is_file():
        gen = GenerateConfig(
            tasks=cfg.tasks, episodes_per_task=cfg.episodes_per_task, seed=cfg.seed, workers=workers
        )
        with console.status("generating offline data") as status:

            def on(done, total, r):
                status.update(f"generating offline data: {done}/{total} episodes")

            generate(gen, data.with_suffix(".tmp"), progress=on)
        data.with_suffix(".tmp").rename(data)  # a half-built store is never mistaken for done
    if not (sft / "config.json").is_file() or _sft_unfinished(sft, cfg.sft_steps):
        base = SFTConfig()
        sft_cfg = dataclasses.replace(
            base,
            steps=cfg.sft_steps,
            seed=cfg.seed,
            policy=dataclasses.replace(base.policy, width=cfg.policy_width),
        )
        with console.status("training the SFT start") as status:

            def on_step(step, total, m):
                if step % 50 == 0:
                    status.update(f"training the SFT start: {step}/{total} updates")

            train_sft(sft_cfg, data, sft, on_step=on_step)
    return data, sft


def _sft_unfinished(sft: Path, steps: int) -> bool:
    import json

    state = sft / "trainer_state.json"
    return state.is_file() and json.loads(state.read_text()).get("step", steps) < steps


def _start_fleet(cfg: DemoConfig, out: Path, data: Path, sft: Path, port: int):
    procs = FleetProcesses(out / "logs")
    url = procs.start_server(out / "server", port)
    procs.start(
        "learner",
        [
            "learner",
            "--server", url,
            "--init", str(sft),
            "--offline-data", str(data),
            "--out", str(out / "learner"),
            "--critic-width", str(cfg.critic_width),
            "--lam", str(cfg.lam),
            "--actor-warmup", str(cfg.actor_warmup),
            "--seed", str(cfg.seed),
            "--status-file", str(out / "learner" / "status.json"),
        ],
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


def evaluate_start_and_final(
    cfg: DemoConfig, start: Path, final: Path, workers: int, console: Console
) -> dict:
    """Both policies on the fixed protocol (same seeds and perturbations) for the demo tasks."""
    from lwd.eval.evaluator import evaluate

    protocol = EvalConfig(tasks=cfg.tasks, episodes_per_task=cfg.eval_episodes, workers=workers)
    result = {"episodes_per_task": cfg.eval_episodes}
    for name, policy in (("start", start), ("final", final)):
        with console.status(f"evaluating the {name} policy") as status:

            def on(done, total, r, name=name):
                status.update(f"evaluating the {name} policy: {done}/{total} episodes")

            report = evaluate(policy, protocol, on_episode=on)
        result[name] = {t.task: t.success for t in report.tasks}
        result[f"{name}_avg"] = report.avg_success
    return result


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
    check_memory(cfg, available_mb())
    console = Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, sft = build_start(cfg, out, workers, console)
    for part in ("server", "robots", "learner", "logs", "report"):
        shutil.rmtree(out / part, ignore_errors=True)  # the loop starts fresh every run
    procs, url = _start_fleet(cfg, out, data, sft, port or free_port())
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
        evaluation = evaluate_start_and_final(cfg, sft, final, workers, console)
    report = fleet_report(watch, evaluation)
    paths = write_report(report, out / "report")
    console.print(report_table(report))
    console.print(latency_table(report))
    console.print(
        f"{report['episodes']} episodes, {report['robot_hours']:.2f} robot-hours, "
        f"{report['policy_versions']} policy versions; report: {paths[0].parent}"
    )
    return report
