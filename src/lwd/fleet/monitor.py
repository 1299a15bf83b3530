"""FleetMonitor: the fleet server's in-memory counters, robot roster and upload latencies.

Everything here lives in one server process and starts from zero when it restarts (the store
and the registry are the durable record). Thread-safe: endpoints run on a threadpool.

Usage (inside the server)::

    monitor = FleetMonitor()
    monitor.record_upload(stored=True, seconds=0.012)
    monitor.record_rejection("invalid")
    monitor.heartbeat("robot-3", policy_version=2, episodes_done=14, status="running")
    monitor.to_json(gauges)  # GET /v1/metrics
    monitor.to_prometheus(gauges)  # GET /metrics
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

#: Why an upload can be refused (the ``reason`` label of ``lwd_uploads_rejected_total``).
REJECTION_REASONS = ("undecodable", "invalid", "conflict", "too_large", "unsupported_media_type")
_QUANTILES = (0.5, 0.99)


@dataclass(frozen=True)
class RobotStatus:
    """What the server last heard from one robot."""

    robot_id: str
    policy_version: int | None  #: the version the robot runs (None: none loaded yet)
    episodes_done: int  #: episodes the robot finished since it started
    status: str  #: free-form state reported by the robot (e.g. "running", "idle")
    first_seen: float  #: unix time of its first heartbeat or registration
    last_seen: float  #: unix time of its latest heartbeat
    heartbeats: int  #: heartbeats (and registrations) received


@dataclass(frozen=True)
class Gauge:
    """A value read from durable state when metrics are rendered (e.g. episodes stored)."""

    help: str
    value: float | None


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile; NaN for no values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, bool):
        return str(int(value))
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class FleetMonitor:
    """Counters, latencies and the robot roster of one server process.

    Args:
        latency_window: how many of the latest upload latencies the quantiles cover.
        clock: monotonic seconds (ages); injectable for tests.
        wall: unix seconds (reported times); injectable for tests.
    """

    def __init__(
        self,
        latency_window: int = 2048,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._lock = threading.Lock()
        self._clock, self._wall = clock, wall
        self._started = clock()
        self._uploads: Counter[str] = Counter()  # "stored" | "duplicate"
        self._rejected: Counter[str] = Counter({r: 0 for r in REJECTION_REASONS})
        self._snapshots = 0
        self._publishes = 0
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._latency_sum = 0.0
        self._latency_count = 0
        self._robots: dict[str, RobotStatus] = {}
        self._robot_seen: dict[str, float] = {}  # robot id -> clock() of its last heartbeat

    @property
    def uptime_s(self) -> float:
        return self._clock() - self._started

    def record_upload(self, stored: bool, seconds: float) -> None:
        """An accepted upload: newly ``stored``, or a duplicate of a stored episode."""
        with self._lock:
            self._uploads["stored" if stored else "duplicate"] += 1
            self._latencies.append(seconds)
            self._latency_sum += seconds
            self._latency_count += 1

    def record_rejection(self, reason: str) -> None:
        """A refused upload; ``reason`` is one of :data:`REJECTION_REASONS`."""
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; known: {REJECTION_REASONS}")
        with self._lock:
            self._rejected[reason] += 1

    def record_snapshot(self) -> None:
        with self._lock:
            self._snapshots += 1

    def record_publish(self) -> None:
        with self._lock:
            self._publishes += 1

    def heartbeat(
        self,
        robot_id: str,
        policy_version: int | None = None,
        episodes_done: int = 0,
        status: str = "",
    ) -> RobotStatus:
        """Record that ``robot_id`` is alive (registering it on first contact)."""
        now = self._wall()
        with self._lock:
            old = self._robots.get(robot_id)
            robot = RobotStatus(
                robot_id=robot_id,
                policy_version=policy_version,
                episodes_done=episodes_done,
                status=status,
                first_seen=now if old is None else old.first_seen,
                last_seen=now,
                heartbeats=1 if old is None else old.heartbeats + 1,
            )
            self._robots[robot_id] = robot
            self._robot_seen[robot_id] = self._clock()
        return robot

    def robots(self) -> dict[str, dict]:
        """Every robot seen, by id: its :class:`RobotStatus` fields plus ``last_seen_age_s``."""
        now = self._clock()
        with self._lock:
            return {
                rid: {**asdict(r), "last_seen_age_s": now - self._robot_seen[rid]}
                for rid, r in sorted(self._robots.items())
            }

    def _latency(self) -> dict[str, float]:
        with self._lock:
            values = sorted(self._latencies)
            total, count = self._latency_sum, self._latency_count
        out = {f"p{round(q * 100)}": _quantile(values, q) for q in _QUANTILES}
        return {**out, "count": count, "sum": total}

    def to_json(self, gauges: Mapping[str, Gauge]) -> dict:
        """Everything as plain JSON values (NaN quantiles become None)."""
        latency = {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in self._latency().items()
        }
        with self._lock:
            counters = {
                "uploads": {
                    "stored": self._uploads["stored"],
                    "duplicate": self._uploads["duplicate"],
                },
                "rejected": dict(self._rejected),
                "snapshots_committed": self._snapshots,
                "policies_published": self._publishes,
            }
        return {
            "uptime_s": self.uptime_s,
            **counters,
            **{name: g.value for name, g in gauges.items()},
            "upload_latency_s": latency,
            "robots": self.robots(),
        }

    def to_prometheus(self, gauges: Mapping[str, Gauge]) -> str:
        """Prometheus text exposition (version 0.0.4); every name starts with ``lwd_``."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, object]]) -> None:
            lines.append(f"# HELP lwd_{name} {help_}")
            lines.append(f"# TYPE lwd_{name} {kind}")
            lines.extend(f"lwd_{name}{labels} {_number(v)}" for labels, v in samples)

        with self._lock:
            uploads = dict(self._uploads)
            rejected = dict(self._rejected)
            snapshots, publishes = self._snapshots, self._publishes
        metric(
            "uploads_total",
            "counter",
            "Episode uploads accepted since start, by result.",
            [(f'{{result="{r}"}}', uploads.get(r, 0)) for r in ("stored", "duplicate")],
        )
        metric(
            "uploads_rejected_total",
            "counter",
            "Episode uploads refused since start, by reason.",
            [(f'{{reason="{r}"}}', n) for r, n in sorted(rejected.items())],
        )
        metric(
            "snapshots_committed_total",
            "counter",
            "Snapshots committed since start.",
            [("", snapshots)],
        )
        metric(
            "policies_published_total",
            "counter",
            "Policy versions published since start.",
            [("", publishes)],
        )
        for name, g in gauges.items():
            metric(name, "gauge", g.help, [("", g.value)])
        latency = self._latency()
        lines.append(
            "# HELP lwd_upload_handler_seconds Time to decode, validate and store one upload."
        )
        lines.append("# TYPE lwd_upload_handler_seconds summary")
        for q in _QUANTILES:
            value = latency[f"p{round(q * 100)}"]
            lines.append(f'lwd_upload_handler_seconds{{quantile="{q}"}} {_number(value)}')
        lines.append(f"lwd_upload_handler_seconds_sum {_number(latency['sum'])}")
        lines.append(f"lwd_upload_handler_seconds_count {_number(latency['count'])}")
        robots = self.robots()
        metric("robots", "gauge", "Robots seen since start.", [("", len(robots))])
        metric(
            "robot_last_seen_age_seconds",
            "gauge",
            "Seconds since each robot's latest heartbeat.",
            [(f'{{robot="{_label(rid)}"}}', r["last_seen_age_s"]) for rid, r in robots.items()],
        )
        metric(
            "robot_policy_version",
            "gauge",
            "Policy version each robot reported running.",
            [(f'{{robot="{_label(rid)}"}}', r["policy_version"]) for rid, r in robots.items()],
        )
        return "\n".join(lines) + "\n"
