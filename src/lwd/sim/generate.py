"""Offline data generation: the mixture a real team's offline buffer holds.

Per task: demonstrations (about half), rollouts of a weak scripted policy (successful and failed,
labelled by outcome), and play (labelled unsuccessful). Episodes come from a pool of perturbed
simulated robots and are written into an :class:`~lwd.data.store.EpisodeStore` by parallel worker
processes.

With ``policy`` set, every episode is instead an unassisted rollout of that checkpoint: the record
of a prior deployment of the policy, which is what gives a critic failures of the policy's own
actions to learn from (scripted data alone are nearly all successes or play).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lwd.data.store import EpisodeStore
from lwd.policy.ranker import load_runner
from lwd.sim.operator import ScriptedOperator
from lwd.sim.robot import EnvPool, Perturbation, SimRobot
from lwd.sim.rollout import policy_episode, scripted_episode
from lwd.sim.tasks import get_suite, get_task, task_names
from lwd.types import Source
from lwd.workers import run_jobs, serve

KINDS = {
    "demo": ("demonstrator", Source.DEMO),
    "weak": ("weak", Source.AUTONOMOUS),
    "play": ("player", Source.PLAY),
    "deploy": (None, Source.AUTONOMOUS),  # the checkpoint acts alone, no operator
}


@dataclass(frozen=True)
class GenerateConfig:
    """What to generate."""

    suite: str = "fleet8"
    """Task suite."""
    tasks: tuple[str, ...] = ()
    """Generate only these tasks of the suite (empty: all)."""
    episodes_per_task: int = 40
    """Episodes per task, split by the fractions below."""
    demo_fraction: float = 0.5
    """Share of demonstrations."""
    weak_fraction: float = 0.3
    """Share of weak-policy rollouts (the rest is play)."""
    robots: int = 8
    """Simulated robots in the pool, each with its own perturbation."""
    perturbation_strength: float = 1.0
    """Scale of every robot's deployment shift."""
    seed: int = 0
    """Base seed; job i uses seed (seed, i)."""
    workers: int = 2
    """Parallel worker processes."""
    policy: str = ""
    """A policy checkpoint: generate only its unassisted rollouts (its deployment record)."""


def plan_jobs(cfg: GenerateConfig) -> list[dict]:
    """The list of episodes to generate, deterministic in ``cfg``."""
    if cfg.episodes_per_task < 1:
        raise ValueError("episodes_per_task must be at least 1")
    if not 0 <= cfg.demo_fraction + cfg.weak_fraction <= 1:
        raise ValueError("demo_fraction + weak_fraction must lie in [0, 1]")
    jobs = []
    n = cfg.episodes_per_task
    n_demo = round(n * cfg.demo_fraction)
    n_weak = round(n * cfg.weak_fraction)
    names = task_names(cfg.suite)
    unknown = set(cfg.tasks) - set(names)
    if unknown:
        raise ValueError(f"tasks {sorted(unknown)} are not in suite {cfg.suite!r}: {names}")
    for task in names:
        if cfg.tasks and task not in cfg.tasks:
            continue
        if cfg.policy:
            kinds = ["deploy"] * n
        else:
            kinds = ["demo"] * n_demo + ["weak"] * n_weak + ["play"] * (n - n_demo - n_weak)
        for i, kind in enumerate(kinds):
            idx = len(jobs)
            jobs.append(
                dict(
                    suite=cfg.suite,
                    task=task,
                    kind=kind,
                    seed=cfg.seed * 1_000_003 + idx,
                    robot=idx % cfg.robots,
                    strength=cfg.perturbation_strength,
                    paraphrase=i,
                )
            )
    return jobs


def generate(cfg: GenerateConfig, out: str | Path, progress=None) -> dict:
    """Generate the offline dataset into the store at ``out``; returns its summary.

    ``progress(done, total, result)`` is called after every episode if given.
    """
    get_suite(cfg.suite)  # fail early on a bad suite name
    if cfg.policy and not (Path(cfg.policy) / "config.json").is_file():
        raise FileNotFoundError(
            f"{cfg.policy} is not a policy checkpoint (no config.json); pass the directory "
            f"written by `lwd train sft` (or an offline run's OUT/policy)"
        )
    store = EpisodeStore(out, known_tasks=task_names(cfg.suite))
    jobs = plan_jobs(cfg)
    init = {"store": str(Path(out).resolve()), "suite": cfg.suite}
    if cfg.policy:
        init["policy"] = str(Path(cfg.policy).resolve())
    for done, result in enumerate(run_jobs("lwd.sim.generate", jobs, cfg.workers, init), 1):
        if progress is not None:
            progress(done, len(jobs), result)
    store.snapshot()
    return store.summary()


def _worker_setup(init: dict):
    store = EpisodeStore(init["store"], known_tasks=task_names(init["suite"]))
    runner = load_runner(init["policy"]) if "policy" in init else None
    robots: dict[int, SimRobot] = {}
    pool = EnvPool()

    def handle(job: dict) -> dict:
        key = job["robot"]
        if key not in robots:
            pert = Perturbation.sample(seed=10_000 + key, strength=job["strength"])
            robots[key] = SimRobot(f"gen-robot-{key}", pert, pool=pool)
        robot = robots[key]
        task = get_task(job["task"], job["suite"])
        role, source = KINDS[job["kind"]]
        instruction = task.instructions[job["paraphrase"] % len(task.instructions)]
        if role is None:
            runner.reseed(job["seed"])
            ep = policy_episode(robot, runner, task, job["seed"], None, instruction)
        else:
            operator = ScriptedOperator(robot, role, seed=job["seed"])
            ep = scripted_episode(robot, operator, task, job["seed"], source, instruction)
        episode_id = store.put(ep)
        return dict(
            task=task.name,
            kind=job["kind"],
            success=ep.success,
            steps=ep.num_steps,
            progress=ep.progress,
            id=episode_id,
        )

    return handle


if __name__ == "__main__":
    serve(_worker_setup)
