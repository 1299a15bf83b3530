"""The evaluation protocol: fixed seeds, episodes per task and per-robot perturbations.

Episode ``i`` of task ``j`` always runs with the same seed on the same simulated robot (robot
``i % num_robots``, whose perturbation is drawn from its index), so two policies evaluated with
the same :class:`~lwd.config.EvalConfig` face exactly the same situations. Episodes run in
parallel worker processes (JSON over pipes; see :mod:`lwd.workers`).

``policy`` is a checkpoint directory, or ``"operator"`` for the scripted demonstrator.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lwd.config import EvalConfig
from lwd.eval.report import EvalReport
from lwd.sim.tasks import get_suite
from lwd.types import EvalEpisodeResult
from lwd.workers import run_jobs

OPERATOR = "operator"
_ROBOT_SEED_BASE = 50_000  # eval robots differ from data-generation robots (10_000 + k)


def plan_episodes(cfg: EvalConfig) -> list[dict]:
    """The protocol's episodes, deterministic in ``cfg``."""
    if cfg.episodes_per_task < 1:
        raise ValueError(f"episodes_per_task must be at least 1, got {cfg.episodes_per_task}")
    if cfg.num_robots < 1:
        raise ValueError(f"num_robots must be at least 1, got {cfg.num_robots}")
    suite = get_suite(cfg.suite)
    unknown = set(cfg.tasks) - {t.name for t in suite}
    if unknown:
        raise ValueError(
            f"tasks {sorted(unknown)} are not in suite {cfg.suite!r} "
            f"(its tasks: {', '.join(t.name for t in suite)})"
        )
    jobs = []
    for j, task in enumerate(suite):
        if cfg.tasks and task.name not in cfg.tasks:
            continue
        for i in range(cfg.episodes_per_task):
            jobs.append(
                dict(
                    suite=cfg.suite,
                    task=task.name,
                    seed=cfg.seed * 100_003 + j * 1_009 + i,
                    robot=i % cfg.num_robots,
                    perturb=cfg.perturb,
                )
            )
    return jobs


def evaluate(
    policy: str | Path,
    cfg: EvalConfig,
    on_episode: Callable[[int, int, EvalEpisodeResult], None] | None = None,
) -> EvalReport:
    """Run the protocol with ``policy`` and return the report.

    Args:
        policy: checkpoint directory, or :data:`OPERATOR` for the scripted demonstrator.
        cfg: the protocol.
        on_episode: ``(done, total, result)`` after each episode (progress display).
    """
    policy = str(policy)
    if policy != OPERATOR and not (Path(policy) / "config.json").is_file():
        raise FileNotFoundError(
            f"{policy} is not a policy checkpoint (no config.json); train one with "
            f"`lwd train sft`, or pass --policy operator to evaluate the scripted demonstrator"
        )
    if policy != OPERATOR and cfg.best_of_n is not None and cfg.best_of_n > 1:
        from lwd.policy.ranker import require_ranker  # torch: only when best-of-N is asked for

        require_ranker(policy, cfg.best_of_n)  # here, before any worker starts
    jobs = plan_episodes(cfg)
    init = {"policy": policy if policy == OPERATOR else str(Path(policy).resolve())}
    init["best_of_n"] = cfg.best_of_n
    results = []
    for done, raw in enumerate(run_jobs("lwd.eval.worker", jobs, cfg.workers, init), 1):
        result = EvalEpisodeResult(**raw)
        results.append(result)
        if on_episode is not None:
            on_episode(done, len(jobs), result)
    order = {t.name: k for k, t in enumerate(get_suite(cfg.suite))}
    results.sort(key=lambda r: (order[r.task], r.seed))
    return EvalReport.from_results(policy, cfg, results)
