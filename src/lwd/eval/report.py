"""Evaluation reports: per-task success, step-wise score and cycle time; table, JSON, plot."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lwd.config import EvalConfig, to_dict
from lwd.sim.tasks import get_suite
from lwd.types import EvalEpisodeResult


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (``std(ddof=1) / sqrt(n)``; 0 for one value)."""
    v = np.asarray(values, dtype=np.float64)
    se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else 0.0
    return float(v.mean()), float(se)


@dataclass(frozen=True)
class TaskStats:
    """Aggregates over one task's evaluation episodes."""

    task: str
    long: bool
    episodes: int
    success: float  #: success rate
    success_se: float  #: standard error of the success rate
    progress: float  #: mean step-wise score (fraction of subtasks done)
    cycle_time_s: float  #: mean episode duration (all episodes)
    cycle_time_success_s: float  #: mean duration of successful episodes (nan if none)


@dataclass(frozen=True)
class EvalReport:
    policy: str
    config: EvalConfig
    tasks: tuple[TaskStats, ...]
    episodes: tuple[EvalEpisodeResult, ...]

    @classmethod
    def from_results(cls, policy: str, cfg: EvalConfig, results: list[EvalEpisodeResult]):
        stats = []
        for spec in get_suite(cfg.suite):
            rs = [r for r in results if r.task == spec.name]
            if not rs:
                continue
            succ = np.array([r.success for r in rs], dtype=np.float64)
            times = np.array([r.cycle_time_s for r in rs])
            success, success_se = mean_se(succ)
            stats.append(
                TaskStats(
                    task=spec.name,
                    long=spec.long,
                    episodes=len(rs),
                    success=success,
                    success_se=success_se,
                    progress=float(np.mean([r.progress for r in rs])),
                    cycle_time_s=float(times.mean()),
                    cycle_time_success_s=float(times[succ > 0].mean()) if succ.any() else math.nan,
                )
            )
        return cls(policy, cfg, tuple(stats), tuple(results))

    # -- aggregates -------------------------------------------------------------------------
    @property
    def avg_success(self) -> float:
        return float(np.mean([t.success for t in self.tasks]))

    @property
    def avg_score(self) -> float:
        """The paper's score: success on short tasks, step-wise score on long tasks."""
        return float(np.mean([t.progress if t.long else t.success for t in self.tasks]))

    @property
    def min_success(self) -> float:
        return float(min(t.success for t in self.tasks))

    # -- outputs ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dict(
            policy=self.policy,
            config=to_dict(self.config),
            avg_success=self.avg_success,
            avg_score=self.avg_score,
            min_success=self.min_success,
            tasks=[dataclasses.asdict(t) for t in self.tasks],
            episodes=[dataclasses.asdict(e) for e in self.episodes],
        )

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, default=_nan_safe)
        path.write_text(text.replace("NaN", "null"))
        return path

    def table(self, title: str | None = None):
        """A rich Table (print it with ``rich.console.Console().print``)."""
        from rich.table import Table

        table = Table(title=title or f"{self.policy} on {self.config.suite}")
        for col in ("task", "kind", "episodes", "success", "step-wise score", "cycle time (s)"):
            table.add_column(col, justify="left" if col in ("task", "kind") else "right")
        for t in self.tasks:
            table.add_row(
                t.task,
                "long" if t.long else "short",
                str(t.episodes),
                f"{t.success:.2f} ± {t.success_se:.2f}",
                f"{t.progress:.2f}",
                f"{t.cycle_time_s:.1f}",
            )
        table.add_section()
        table.add_row(
            "average",
            "",
            str(len(self.episodes)),
            f"{self.avg_success:.2f}",
            f"{self.avg_score:.2f} (score)",
            "",
        )
        return table

    def plot(self, path: str | Path) -> Path:
        """Bar chart of success and step-wise score per task (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        names = [t.task for t in self.tasks]
        x = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
        ax.bar(
            x - 0.2,
            [t.success for t in self.tasks],
            0.4,
            yerr=[t.success_se for t in self.tasks],
            label="success",
            capsize=3,
        )
        ax.bar(x + 0.2, [t.progress for t in self.tasks], 0.4, label="step-wise score")
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title(
            f"{Path(self.policy).name} on {self.config.suite}: avg success {self.avg_success:.2f}"
        )
        ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def _nan_safe(value):
    return None if isinstance(value, float) and math.isnan(value) else value
