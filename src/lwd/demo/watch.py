"""FleetWatch: what the fleet did so far, read from the server's durable record.

The server root holds everything that matters (the episode index, snapshots, the policy
registry); robots' ``events.jsonl`` add robot-side timings; the learner writes a status file.
Polling these is cheap, and a watcher can start, stop or crash without touching the fleet::

    watch = FleetWatch(server_root, robots_dir, learner_status, url)
    while running:
        watch.refresh()                      # new index rows, robot roster, learner status
        live.update(render(watch))           # lwd.demo.view

Success here is **autonomous** success: the episode succeeded with no intervention step, so the
operator's help never counts for the policy.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np

from lwd.data.store import EpisodeStore
from lwd.fleet.registry import PolicyRegistry
from lwd.sim.tasks import CONTROL_DT


def autonomous_success(row: dict) -> bool:
    return bool(row["success"]) and row["n_intervention"] == 0


def read_events(robots_dir: Path, kind: str) -> list[dict]:
    """Every ``kind`` record of every robot's ``events.jsonl`` under ``robots_dir``."""
    out = []
    for path in sorted(Path(robots_dir).glob("**/events.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill is not worth failing a report over
            if event.get("event", event.get("kind")) == kind:
                out.append(event)
    return out


class FleetWatch:
    """Accumulates the fleet's episodes (index rows), robots and learner status."""

    def __init__(
        self,
        server_root: Path,
        robots_dir: Path,
        learner_status: Path | None = None,
        url: str | None = None,
    ) -> None:
        self.server_root, self.robots_dir = Path(server_root), Path(robots_dir)
        self.learner_status_path = learner_status
        self.url = url
        self.store = EpisodeStore(self.server_root / "store")
        self.registry = PolicyRegistry(self.server_root / "policies")
        self.rows: list[dict] = []
        self.robots: dict[str, dict] = {}
        self.learner: dict = {}
        self.versions: dict[int, float] = {}  # version -> published at (unix s)
        self.started_at = time.time()

    def refresh(self) -> None:
        self.rows += self.store.index_rows(self.rows[-1]["seq"] if self.rows else 0)
        self.versions = {v.version: v.created_at for v in self.registry.versions()}
        if self.url:
            try:
                self.robots = httpx.get(f"{self.url}/v1/robots", timeout=2.0).json()
            except (httpx.HTTPError, ValueError, KeyError):
                pass  # the server may be restarting; keep the last roster
        if self.learner_status_path and self.learner_status_path.is_file():
            try:
                self.learner = json.loads(self.learner_status_path.read_text())
            except (OSError, ValueError):
                pass  # written atomically, but a read can still race a rename on some FSs

    # ---------------------------------------------------------------------- aggregates
    @property
    def robot_hours(self) -> float:
        return sum(r["num_steps"] for r in self.rows) * CONTROL_DT / 3600

    def tasks(self) -> list[str]:
        return sorted({r["task"] for r in self.rows})

    def version_buckets(self, max_columns: int = 5) -> list[tuple[int, int]]:
        """Contiguous policy-version ranges to tabulate, v1 (the start) always on its own."""
        versions = sorted({r["max_policy_version"] for r in self.rows})
        if not versions:
            return []
        top = versions[-1]
        buckets = [(versions[0], versions[0])]
        lo = versions[0] + 1
        if top >= lo:
            edges = np.linspace(lo, top + 1, min(max_columns - 1, top - lo + 1) + 1).round()
            buckets += [
                (int(a), int(b) - 1) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a
            ]
        return buckets

    def success_table(self, buckets: list[tuple[int, int]]) -> dict[str, list[tuple[int, int]]]:
        """task -> per bucket (autonomous successes, episodes)."""
        table: dict[str, list[list[int]]] = {t: [[0, 0] for _ in buckets] for t in self.tasks()}
        for r in self.rows:
            for k, (lo, hi) in enumerate(buckets):
                if lo <= r["max_policy_version"] <= hi:
                    cell = table[r["task"]][k]
                    cell[0] += autonomous_success(r)
                    cell[1] += 1
        return {t: [tuple(c) for c in cells] for t, cells in table.items()}

    def intervention_rate(self, last: int | None = None) -> float:
        """Fraction of episodes (the last ``last`` of them) in which the operator took over."""
        rows = self.rows[-last:] if last else self.rows
        return float(np.mean([r["n_intervention"] > 0 for r in rows])) if rows else float("nan")
