"""The demo's closing report: how the fleet's policy changed, and how fast data moved.

Built from a :class:`~lwd.demo.watch.FleetWatch` after the fleet stopped::

    report = fleet_report(watch)           # plain JSON-friendly dict
    write_report(report, out_dir)          # report.json + three PNGs
    console.print(report_table(report))

- Success vs robot-hours per task: episodes in the order they finished; a trailing window of
  each task's episodes gives its autonomous success rate at that point of the fleet's time.
- Intervention rate over wall-clock time (fraction of episodes the operator took over).
- Data plane: episode finished → stored by the server → in a committed snapshot (available to
  the learner), and policy published → loaded by a robot (robots' ``policy_loaded`` events).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from rich.table import Table

from lwd.demo.watch import FleetWatch, autonomous_success, read_events
from lwd.sim.tasks import CONTROL_DT

_WINDOW = 20  # episodes per task in the trailing success window


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50_s": math.nan, "p99_s": math.nan, "max_s": math.nan}
    v = np.asarray(values)
    return {
        "n": len(v),
        "p50_s": float(np.percentile(v, 50)),
        "p99_s": float(np.percentile(v, 99)),
        "max_s": float(v.max()),
    }


def _rate(successes: list[bool]) -> float:
    return float(np.mean(successes)) if successes else math.nan


def success_curves(rows: list[dict]) -> dict[str, dict[str, list[float]]]:
    """task -> {"robot_hours", "success"}: trailing-window autonomous success over fleet time."""
    rows = sorted(rows, key=lambda r: r["created_at"])
    hours = np.cumsum([r["num_steps"] for r in rows]) * CONTROL_DT / 3600
    curves: dict[str, dict[str, list[float]]] = {}
    seen: dict[str, list[bool]] = {}
    for h, r in zip(hours, rows, strict=True):
        outcomes = seen.setdefault(r["task"], [])
        outcomes.append(autonomous_success(r))
        curve = curves.setdefault(r["task"], {"robot_hours": [], "success": []})
        curve["robot_hours"].append(float(h))
        curve["success"].append(_rate(outcomes[-_WINDOW:]))
    return curves


def first_vs_last(rows: list[dict]) -> dict[str, dict]:
    """Per task: autonomous success in the first and the last third of the fleet's episodes
    (by start time; the fleet's own, unstaged measurement, whatever version ran them).

    The starting version alone would not do: the learner ships its next one within a minute,
    so it runs only a handful of episodes per task.
    """
    out = {}
    for task in sorted({r["task"] for r in rows}):
        mine = sorted((r for r in rows if r["task"] == task), key=lambda r: r["created_at"])
        third = len(mine) // 3
        early = [autonomous_success(r) for r in mine[:third]]
        late = [autonomous_success(r) for r in mine[len(mine) - third :]]
        out[task] = {
            "early_success": _rate(early),
            "early_episodes": len(early),
            "late_success": _rate(late),
            "late_episodes": len(late),
        }
    return out


def fleet_report(watch: FleetWatch, evaluation: dict | None = None) -> dict:
    """Everything the closing table and plots show, as a JSON-friendly dict."""
    rows = watch.rows
    snapshots = watch.store.snapshots()
    first_version = min(watch.versions) if watch.versions else 1
    # an episode is available to the learner once a committed snapshot covers its seq
    snap_seq = np.array([s["max_seq"] for s in snapshots])
    snap_t = np.array([s["created_at"] for s in snapshots])
    to_store, to_learner = [], []
    for r in rows:
        to_store.append(r["stored_at"] - r["created_at"])
        k = np.searchsorted(snap_seq, r["seq"])  # snapshots' max_seq only grows
        if k < len(snap_seq):
            to_learner.append(float(snap_t[k] - r["created_at"]))
    to_robot = [
        e["loaded_at"] - watch.versions[e["version"]]
        for e in read_events(watch.robots_dir, "policy_loaded")
        if e.get("version") in watch.versions and e["version"] != first_version
    ]
    t0 = min((r["created_at"] for r in rows), default=watch.started_at)
    minute = np.array([int((r["created_at"] - t0) // 60) for r in rows], dtype=int)
    helped = np.array([r["n_intervention"] > 0 for r in rows], dtype=float)
    intervention = [
        {
            "minute": float(m),
            "episodes": int((minute == m).sum()),
            "rate": float(helped[minute == m].mean()),
        }
        for m in np.unique(minute)
    ]
    return {
        "episodes": len(rows),
        "robot_hours": watch.robot_hours,
        "robots": len({r["robot_id"] for r in rows}),
        "policy_versions": len(watch.versions),
        "learner": watch.learner,
        "per_task": first_vs_last(rows),
        "success_curves": success_curves(rows),
        "intervention_over_time": intervention,
        "latency": {
            "episode_to_store": _quantiles(to_store),
            "episode_to_learner": _quantiles(to_learner),
            "policy_to_robot": _quantiles(to_robot),
        },
        "evaluation": evaluation or {},
    }


def _pct(rate: float, n: int | None = None) -> str:
    if n == 0 or math.isnan(rate):
        return "–"
    return f"{rate:.0%}" if n is None else f"{rate:.0%} ({n})"


_LATENCY_LABELS = {
    "episode_to_store": "episode finished → stored",
    "episode_to_learner": "episode finished → in a snapshot (learner)",
    "policy_to_robot": "policy published → loaded by a robot",
}


def report_table(report: dict) -> Table:
    evaluation = report.get("evaluation") or {}
    evaluated = evaluation.get("policies", ["start", "final"]) if evaluation else []
    table = Table(title="what the fleet learned (autonomous success)", title_justify="left")
    table.add_column("task")
    table.add_column("first third (fleet)", justify="right")
    table.add_column("last third (fleet)", justify="right")
    for k, name in enumerate(evaluated):
        per = f" ({evaluation['episodes_per_task']}/task)" if k == 0 else ""
        table.add_column(f"eval {name}{per}", justify="right")
    for task, t in report["per_task"].items():
        row = [
            task,
            _pct(t["early_success"], t["early_episodes"]),
            _pct(t["late_success"], t["late_episodes"]),
        ]
        row += [_pct(evaluation[name].get(task, math.nan)) for name in evaluated]
        table.add_row(*row)
    if evaluated:
        table.add_row("average", "", "", *[_avg_cell(evaluation, n) for n in evaluated])
    return table


def _avg_cell(evaluation: dict, name: str) -> str:
    se = evaluation.get(f"{name}_se")
    avg = _pct(evaluation[f"{name}_avg"])
    return avg if se is None else f"{avg} ± {100 * se:.0f}"


def improvement_lines(report: dict) -> list[str]:
    """The last evaluated policy against each earlier one, paired over the same episodes:
    ``final − sft: +13 points ± 5 (s.e., paired over 120 episodes)``."""
    evaluation = report.get("evaluation") or {}
    names = evaluation.get("policies", [])
    lines = []
    for name in names[:-1]:
        key = f"{names[-1]}_minus_{name}"
        if key in evaluation:
            lines.append(
                f"{names[-1]} − {name}: {100 * evaluation[key]:+.0f} points "
                f"± {100 * evaluation[key + '_se']:.0f} (s.e., paired over "
                f"{evaluation[key + '_n']} episodes)"
            )
    return lines


def latency_table(report: dict) -> Table:
    table = Table(title="data plane (seconds)", title_justify="left")
    for col in ("path", "n", "P50", "P99", "max"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for name, q in report["latency"].items():
        table.add_row(
            _LATENCY_LABELS.get(name, name),
            str(q["n"]),
            f"{q['p50_s']:.2f}",
            f"{q['p99_s']:.2f}",
            f"{q['max_s']:.2f}",
        )
    return table


def write_report(report: dict, out: Path) -> list[Path]:
    """``report.json`` and the PNG plots into ``out``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, path: Path) -> Path:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json"]
    paths[0].write_text(json.dumps(report, indent=2, default=float))

    fig, ax = plt.subplots(figsize=(7, 4))
    for task, c in report["success_curves"].items():
        ax.plot(c["robot_hours"], c["success"], label=task)
    ax.set(xlabel="fleet robot-hours", ylabel=f"autonomous success (last {_WINDOW} episodes)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths.append(save(fig, out / "success_vs_robot_hours.png"))

    fig, ax = plt.subplots(figsize=(7, 3))
    iv = report["intervention_over_time"]
    ax.plot([b["minute"] + 0.5 for b in iv], [b["rate"] for b in iv], marker="o")
    ax.set(xlabel="minutes", ylabel="episodes with an intervention")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    paths.append(save(fig, out / "intervention_rate.png"))

    fig, ax = plt.subplots(figsize=(7, 3))
    names = list(report["latency"])
    for k, name in enumerate(names):
        q = report["latency"][name]
        ax.barh(
            [k - 0.2], [q["p50_s"]], height=0.4, color="tab:blue", label="P50" if k == 0 else None
        )
        ax.barh(
            [k + 0.2], [q["p99_s"]], height=0.4, color="tab:orange", label="P99" if k == 0 else None
        )
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set(xlabel="seconds")
    ax.legend()
    paths.append(save(fig, out / "data_plane_latency.png"))

    evaluation = report.get("evaluation") or {}
    if evaluation.get("policies"):
        paths.append(save(_evaluation_figure(plt, evaluation), out / "evaluation.png"))
    return paths


def _evaluation_figure(plt, evaluation: dict):
    """Fixed-protocol success per task and on average, one bar per policy (average: ± s.e.)."""
    names = evaluation["policies"]
    tasks = list(evaluation[names[0]])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        x = np.arange(len(tasks) + 1) + (k - (len(names) - 1) / 2) * width
        bars = ax.bar(x[:-1], [evaluation[name][t] for t in tasks], width, label=name)
        se = evaluation.get(f"{name}_se")
        ax.bar(x[-1:], [evaluation[f"{name}_avg"]], width, color=bars.patches[0].get_facecolor(),
               yerr=None if se is None else [se], capsize=3)  # fmt: skip
    ax.set_xticks(range(len(tasks) + 1), tasks + ["average"], fontsize=8)
    ax.set(ylabel="success", title=f"fixed protocol, {evaluation['episodes_per_task']}/task")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return fig
