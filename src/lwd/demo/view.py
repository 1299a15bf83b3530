"""The demo's live terminal view: robots, success per task per policy version, learner.

``render(watch, elapsed_s, total_s)`` turns a :class:`~lwd.demo.watch.FleetWatch` into one
rich renderable; the demo redraws it with ``rich.live.Live`` a few times a second.
"""

from __future__ import annotations

import time

from rich.console import Group
from rich.table import Table
from rich.text import Text

from lwd.demo.watch import FleetWatch

_MAX_ROBOT_ROWS = 8


def _pct(successes: int, n: int) -> str:
    return f"{successes / n:4.0%} ({n})" if n else "–"


def robots_table(watch: FleetWatch) -> Table:
    table = Table(title="robots", title_justify="left", expand=False)
    for col in ("robot", "policy", "episodes", "status", "last seen"):
        table.add_column(col, justify="right" if col != "robot" else "left")
    robots = sorted(watch.robots.values(), key=lambda r: r["robot_id"])
    now = time.time()
    for r in robots[:_MAX_ROBOT_ROWS]:
        version = r.get("policy_version")
        table.add_row(
            r["robot_id"],
            f"v{version}" if version is not None else "–",
            str(r.get("episodes_done", 0)),
            r.get("status", ""),
            f"{now - r['last_seen']:.0f} s ago",
        )
    if len(robots) > _MAX_ROBOT_ROWS:
        versions = [r.get("policy_version") or 0 for r in robots[_MAX_ROBOT_ROWS:]]
        table.add_row(
            f"… {len(robots) - _MAX_ROBOT_ROWS} more",
            f"v{min(versions)}–v{max(versions)}",
            str(sum(r.get("episodes_done", 0) for r in robots[_MAX_ROBOT_ROWS:])),
            "",
            "",
        )
    return table


def success_table(watch: FleetWatch) -> Table:
    buckets = watch.version_buckets()
    table = Table(
        title="autonomous success by task and policy version (episodes)",
        title_justify="left",
    )
    table.add_column("task")
    for lo, hi in buckets:
        table.add_column(f"v{lo}" if lo == hi else f"v{lo}–v{hi}", justify="right")
    cells = watch.success_table(buckets)
    totals = [[0, 0] for _ in buckets]
    for task, row in cells.items():
        table.add_row(task, *(_pct(s, n) for s, n in row))
        for k, (s, n) in enumerate(row):
            totals[k][0] += s
            totals[k][1] += n
    if cells:
        table.add_row(Text("all", style="bold"), *(_pct(s, n) for s, n in totals))
    return table


def summary_line(watch: FleetWatch, elapsed_s: float, total_s: float) -> Text:
    learner = watch.learner
    parts = [
        f"{elapsed_s / 60:4.1f}/{total_s / 60:.0f} min",
        f"{len(watch.rows)} episodes",
        f"{watch.robot_hours:.2f} robot-h",
        f"interventions {watch.intervention_rate():.0%} (last 40: {watch.intervention_rate(40):.0%})",
    ]
    if learner:
        parts.append(
            f"learner: update {learner.get('step', 0)}, {learner.get('updates_per_s', 0):.1f} upd/s, "
            f"published v{learner.get('published')}, Q {learner.get('critic/q_mean', float('nan')):.2f}"
        )
    else:
        parts.append("learner: starting")
    return Text("   ".join(parts))


def render(watch: FleetWatch, elapsed_s: float, total_s: float) -> Group:
    return Group(summary_line(watch, elapsed_s, total_s), robots_table(watch), success_table(watch))
