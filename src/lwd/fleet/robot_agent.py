"""RobotAgent: one robot of the fleet, acting with a local policy and feeding the server.

One episode of the loop (:meth:`RobotAgent.run_episode`)::

    check the server for a newer policy    # only here, between episodes
      newer? load it (downloading it first unless the prefetcher already has); failures keep
      the current policy
    run the episode with local inference   # lwd.sim.rollout.policy_episode: every step records
                                           # its source, the policy's proposal and version; the
                                           # operator may intervene
    spool the episode                      # on disk before any upload
    drain the spool                        # oldest first; stops at the first transient failure
    heartbeat                              # best effort

Meanwhile, while :meth:`RobotAgent.run` runs, a background **prefetcher** asks the server for
its newest version every ``prefetch_s`` seconds (and at once when a heartbeat announces one) and
downloads it (checksummed, atomic, into ``policy_dir/<version>/``), so that a version published
mid-episode is on the robot within about a second. It never loads anything: the acting policy
changes only between episodes. Its failures are logged and retried at the next poll.

The server being down never stops the robot: it keeps acting with the policy it has, and its
episodes wait in the spool until an upload is acknowledged (at-least-once; the server
deduplicates). After a restart the agent starts from the newest version found in
``policy_dir``, so it can act before it reaches the server.

Timing records for latency measurements go to the spool's ``events.jsonl``:

- ``policy_received`` (see :class:`~lwd.fleet.policy_fetcher.PolicyFetcher`): version,
  ``seen_at`` (first time the agent learned the version exists), ``received_at``, ``fetch_s``,
  ``via`` ("prefetch" or "sync");
- ``policy_loaded``: version, ``seen_at``, ``received_at``, ``loaded_at``, ``load_s`` (time spent
  at the episode boundary: the download if it was not prefetched, plus the load);
- ``episode``: episode id, task, steps, outcome, interventions, the version that acted and its
  ``seen_at`` / ``loaded_at``, ``started_at``, ``finished_at``, ``spooled_at``, inference calls
  and seconds;
- ``acked`` (written by the spool): episode id, ``finished_at``, ``t`` (acknowledged at).

A version's publish time is in the server's registry (``created_at``); join on the version to
get publish-to-robot latencies.

Usage::

    agent = RobotAgent(robot, FleetClient(url), Spool(d / "spool"), "robot-3",
                       InstructionEncoder(), d / "policies", operator=ScriptedOperator(robot))
    agent.run(tasks, stop=stop_event)  # until stopped; prefetches in the background meanwhile
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lwd.fleet.client import Backoff, FleetClient, FleetError, PolicyRef, RejectedError
from lwd.fleet.policy_fetcher import PolicyFetcher
from lwd.fleet.spool import DrainResult, Spool
from lwd.policy.checkpoint import CheckpointError
from lwd.policy.flow import FlowPolicy, FlowPolicyRunner, TextEncoder
from lwd.policy.ranker import load_acting_policy
from lwd.sim.tasks import TaskSpec
from lwd.types import ActionChunk, Episode, Observation, Source

if TYPE_CHECKING:  # importing lwd.sim.robot loads MuJoCo; `import lwd.fleet` must stay light
    from lwd.sim.operator import ScriptedOperator
    from lwd.sim.robot import Robot

log = logging.getLogger(__name__)

#: Records one episode: ``(robot, policy, task, seed, operator) -> Episode``; the default is
#: :func:`lwd.sim.rollout.policy_episode` (:func:`lwd.sim.synthetic_robot.synthetic_episode`
#: for load tests).
Rollout = Callable[..., Episode]
#: Loads a fetched version: ``(version, directory) -> FlowPolicy`` (a host shares one).
PolicyLoader = Callable[[int, Path], FlowPolicy]


class NoPolicyError(RuntimeError):
    """The agent has no policy to act with: none on disk, and none could be fetched."""


class _TimedPolicy:
    """A Policy that times every ``infer`` of the one it wraps."""

    def __init__(self, policy: FlowPolicyRunner) -> None:
        self.inner = policy
        self.calls = 0
        self.total_s = 0.0
        self.max_s = 0.0

    @property
    def version(self) -> int:
        return self.inner.version

    def infer(self, obs: Observation) -> ActionChunk:
        start = time.perf_counter()
        chunk = self.inner.infer(obs)
        spent = time.perf_counter() - start
        self.calls += 1
        self.total_s += spent
        self.max_s = max(self.max_s, spent)
        return chunk


class RobotAgent:
    """A robot, its policy, its spool and its connection to the fleet server.

    Args:
        robot: the robot (a :class:`~lwd.sim.robot.SimRobot`, or anything implementing the
            ``Robot`` protocol plus ``robot_id``, ``success``, ``progress`` and
            ``cycle_time_s``, which the episode recorder reads).
        client: the fleet server's client.
        spool: where finished episodes wait for the server.
        robot_id: the name reported to the server and stamped on every episode.
        encoder: instruction embedder given to every loaded policy.
        policy_dir: downloaded versions live in ``policy_dir/<version>/``.
        operator: optional intervening operator (its actions are recorded as interventions).
        seed: seeds task and episode-seed choice in :meth:`run`, and the policy's noise.
        backoff: retry schedule of one upload inside a drain.
        drain_max: episodes uploaded per drain at most (None: all pending).
        device: torch device for inference.
        prefetch_s: seconds between the background prefetcher's polls while :meth:`run` runs
            (jittered by +-20% so robots do not poll in lockstep); None: no prefetcher, new
            versions are downloaded only between episodes.
        latest: how to ask for the server's newest version (default
            ``client.latest_policy``); a host of many robots shares one rate-limited query.
        load: how to load a fetched version (default
            :func:`~lwd.policy.ranker.load_acting_policy` on ``device``); a host shares one so
            that its robots share each version's weights.
        rollout: how to record an episode (default :func:`lwd.sim.rollout.policy_episode`).
        clock: unix seconds (injectable for tests).
        sleep: how to wait (injectable for tests).
    """

    def __init__(
        self,
        robot: Robot,
        client: FleetClient,
        spool: Spool,
        robot_id: str,
        encoder: TextEncoder | None,
        policy_dir: str | Path,
        operator: ScriptedOperator | None = None,
        seed: int = 0,
        *,
        backoff: Backoff | None = None,
        drain_max: int | None = None,
        device: str = "cpu",
        prefetch_s: float | None = 1.0,
        latest: Callable[[], PolicyRef | None] | None = None,
        load: PolicyLoader | None = None,
        rollout: Rollout | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if prefetch_s is not None and prefetch_s <= 0:
            raise ValueError(f"prefetch_s must be positive seconds or None, got {prefetch_s}")
        self.robot = robot
        self.client = client
        self.spool = spool
        self.robot_id = robot_id
        self.encoder = encoder
        self.policy_dir = Path(policy_dir)
        self.operator = operator
        self.seed = int(seed)
        self.backoff = backoff or Backoff(attempts=2, base_s=0.5)
        self.drain_max = drain_max
        self.device = device
        self.prefetch_s = prefetch_s
        self._load = load or (lambda version, path: load_acting_policy(path, device=self.device))
        self._rollout = rollout
        self._clock, self._sleep = clock, sleep
        self._rng = np.random.default_rng([self.seed, 4099])
        self._jitter = random.Random(self.seed)
        self.fetcher = PolicyFetcher(client, self.policy_dir, spool, robot_id, latest, clock)
        self.policy: FlowPolicyRunner | None = None
        self.policy_info: dict = {}
        self.episodes_done = 0
        self.last_drain: DrainResult | None = None
        self._seen_at: dict[int, float] = {}
        self._bad_versions: set[int] = set()
        self._loaded_versions: set[int] = set()
        self._wake = threading.Event()  # a heartbeat heard of a version: prefetch it now
        self._prefetch_stop = threading.Event()
        self._prefetcher: threading.Thread | None = None
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        self._load_local()

    @property
    def policy_version(self) -> int | None:
        """The version acting now (None before any was loaded)."""
        return None if self.policy is None else self.policy.version

    # ---------------------------------------------------------------------------- policy
    def _install(self, version: int, path: Path, **info: object) -> None:
        policy = self._load(version, path)
        self.policy = FlowPolicyRunner(policy, self.encoder, version=version, seed=self.seed)
        self.policy_info = {"version": version, **info}
        self._loaded_versions.add(version)

    def _load_local(self) -> None:
        """Start from the newest loadable version already in ``policy_dir`` (a restart)."""
        versions = sorted(
            (int(p.name) for p in self.policy_dir.iterdir() if p.is_dir() and p.name.isdigit()),
            reverse=True,
        )
        for version in versions:
            try:
                self._install(version, self.policy_dir / str(version), loaded_at=self._clock())
            except CheckpointError as exc:
                log.warning("%s: ignoring local policy version %d: %s", self.robot_id, version, exc)
                continue
            self.spool.log(
                "policy_loaded", robot_id=self.robot_id, source="disk", **self.policy_info
            )
            return

    def _saw(self, version: int | None) -> None:
        if version is not None:
            self._seen_at.setdefault(version, self._clock())

    def _wants(self, version: int) -> bool:
        """Is ``version`` newer than the acting one and not known to be broken?"""
        current = self.policy_version  # read once: the main thread may swap the policy
        return (current is None or version > current) and version not in self._bad_versions

    def _newer_version(self, failure: str, level: int):
        """The server's newest policy if this robot wants it (newer, not refused), else None.

        A failed query is logged at ``level`` as ``failure`` and answers None.
        """
        try:
            ref = self.fetcher.latest()
        except FleetError as exc:
            log.log(level, "%s: %s: %s", self.robot_id, failure, exc)
            return None
        if ref is None:
            return None
        self._saw(ref.version)
        return ref if self._wants(ref.version) else None

    def sync_policy(self) -> bool:
        """Load the server's newest version if it is newer than the one acting.

        Called between episodes only. Uses the prefetched copy when there is one, else
        downloads it now. Never raises for fleet or checkpoint failures: the agent keeps its
        current policy, and a version that the server refuses or that does not load is not
        tried again.

        Returns:
            True if a new version was loaded.
        """
        ref = self._newer_version("policy check failed, keeping the current one", logging.WARNING)
        if ref is None:
            return False
        start = time.perf_counter()
        try:
            path = self.fetcher.fetch(ref, seen_at=self._seen_at[ref.version], via="sync")
            receipt = self.fetcher.receipt(ref.version) or {}
            self._install(
                ref.version,
                path,
                sha256=ref.sha256,
                seen_at=self._seen_at[ref.version],
                received_at=receipt.get("received_at"),
                loaded_at=self._clock(),
                load_s=time.perf_counter() - start,
            )
        except RejectedError as exc:
            self._bad_versions.add(ref.version)
            log.warning("%s: policy version %d refused: %s", self.robot_id, ref.version, exc)
            return False
        except FleetError as exc:
            log.warning("%s: policy version %d not fetched: %s", self.robot_id, ref.version, exc)
            return False
        except CheckpointError as exc:
            self._bad_versions.add(ref.version)
            log.error("%s: policy version %d does not load: %s", self.robot_id, ref.version, exc)
            return False
        self.spool.log("policy_loaded", robot_id=self.robot_id, source="server", **self.policy_info)
        # Versions prefetched but superseded before a boundary never acted: free their disk.
        self.fetcher.prune(below=ref.version, keep=self._loaded_versions)
        return True

    # -------------------------------------------------------------------------- prefetch
    def prefetch_policy(self) -> bool:
        """Download, never load, the server's newest version if it is newer than the acting one.

        Safe to call from any thread, concurrently with :meth:`run_episode`. Never raises for
        fleet failures (they are logged; the next poll tries again).

        Returns:
            True if a version was downloaded now.
        """
        ref = self._newer_version("prefetch poll failed (will retry)", logging.INFO)
        if ref is None:
            return False
        receipt = self.fetcher.receipt(ref.version)
        if receipt is not None and receipt["sha256"] == ref.sha256:
            return False
        try:
            self.fetcher.fetch(ref, seen_at=self._seen_at[ref.version], via="prefetch")
        except RejectedError as exc:
            self._bad_versions.add(ref.version)
            log.warning("%s: policy version %d refused: %s", self.robot_id, ref.version, exc)
            return False
        except FleetError as exc:
            log.info(
                "%s: prefetch of version %d failed (will retry): %s",
                self.robot_id,
                ref.version,
                exc,
            )
            return False
        return True

    def start_prefetch(self) -> None:
        """Start the background prefetcher (no-op if ``prefetch_s`` is None or it runs)."""
        if self.prefetch_s is None or (self._prefetcher and self._prefetcher.is_alive()):
            return
        # A fresh event per thread: one left finishing a slow download stops all the same.
        self._prefetch_stop = stop = threading.Event()
        self._prefetcher = threading.Thread(
            target=self._prefetch_loop, args=(stop,), name=f"{self.robot_id}-prefetch", daemon=True
        )
        self._prefetcher.start()

    def stop_prefetch(self, timeout_s: float = 5.0) -> None:
        """Stop the prefetcher; waits up to ``timeout_s`` for a download in flight."""
        self._prefetch_stop.set()
        self._wake.set()
        if self._prefetcher is not None:
            self._prefetcher.join(timeout_s)
            self._prefetcher = None

    def _prefetch_loop(self, stop: threading.Event) -> None:
        assert self.prefetch_s is not None
        rng = random.Random(f"{self.robot_id}/prefetch")
        while not stop.is_set():
            try:
                self.prefetch_policy()
            except Exception:  # a full disk or a bug must not kill the thread: log, retry
                log.exception("%s: prefetch failed (will retry)", self.robot_id)
            self._wake.wait(self.prefetch_s * rng.uniform(0.8, 1.2))
            self._wake.clear()

    # --------------------------------------------------------------------------- episodes
    def run_episode(self, task: TaskSpec, seed: int) -> Episode:
        """One turn of the loop: policy check, episode, spool, drain, heartbeat.

        Returns:
            The recorded episode (already on disk in the spool; uploaded if the server is up).

        Raises:
            NoPolicyError: no policy on disk and none could be fetched from the server.
        """
        self.sync_policy()
        if self.policy is None:
            raise NoPolicyError(
                f"{self.robot_id} has no policy to act with: none in {self.policy_dir} and "
                f"none fetched from {getattr(self.client, 'base_url', 'the server')}; publish "
                "one (lwd learner / POST /v1/policies) or check the server is reachable"
            )
        rollout = self._rollout
        if rollout is None:
            from lwd.sim.rollout import policy_episode as rollout  # loads MuJoCo: robots only

        self.policy.reseed(seed)
        timed = _TimedPolicy(self.policy)  # the acting policy is fixed for the whole episode
        info = dict(self.policy_info)
        started_at = self._clock()
        ep = rollout(self.robot, timed, task, seed, self.operator)
        if ep.robot_id != self.robot_id:
            ep = dataclasses.replace(ep, robot_id=self.robot_id)
        self.spool.put(ep)
        self.episodes_done += 1
        self.spool.log(
            "episode",
            episode_id=ep.episode_id,
            robot_id=self.robot_id,
            task=task.name,
            seed=int(seed),
            steps=ep.num_steps,
            success=ep.success,
            progress=ep.progress,
            interventions=int(np.count_nonzero(ep.sources == Source.INTERVENTION)),
            policy_version=info.get("version"),
            policy_seen_at=info.get("seen_at"),
            policy_loaded_at=info.get("loaded_at"),
            policy_load_s=info.get("load_s"),
            started_at=started_at,
            finished_at=ep.created_at,
            spooled_at=self._clock(),
            infer_calls=timed.calls,
            infer_s_total=timed.total_s,
            infer_s_max=timed.max_s,
        )
        self.last_drain = self.drain()
        self.heartbeat("running")
        return ep

    def drain(self) -> DrainResult:
        """Upload what the spool holds (see :meth:`Spool.drain`); never raises on failures."""
        result = self.spool.drain(
            self.client, self.drain_max, self.backoff, rng=self._jitter, sleep=self._sleep
        )
        if result.error:
            log.warning(
                "%s: %d episode(s) wait in the spool: %s",
                self.robot_id,
                result.pending,
                result.error,
            )
        return result

    def heartbeat(self, status: str) -> int | None:
        """Tell the server this robot is alive; the latest version it announces, if reached."""
        try:
            latest = self.client.heartbeat(
                self.robot_id, self.policy_version, self.episodes_done, status
            )
        except FleetError as exc:
            log.info("%s: heartbeat failed: %s", self.robot_id, exc)
            return None
        self._saw(latest)
        if latest is not None and self._wants(latest) and self.fetcher.receipt(latest) is None:
            self._wake.set()  # the prefetcher fetches it now rather than at its next poll
        return latest

    def run(
        self,
        tasks: Sequence[TaskSpec],
        num_episodes: int | None = None,
        stop: threading.Event | None = None,
        *,
        wait_s: float = 5.0,
    ) -> int:
        """Run episodes of tasks drawn at random until ``num_episodes`` or ``stop`` is set.

        The prefetcher runs meanwhile (if ``prefetch_s`` is set). While no policy is
        available the agent heartbeats ``"waiting"`` every ``wait_s``. ``stop`` is checked
        between episodes: the episode in progress is finished, spooled and drained first.

        Returns:
            Episodes run.
        """
        if not tasks:
            raise ValueError("run() needs at least one task")
        stop = stop or threading.Event()
        try:
            self.client.register(self.robot_id)
        except FleetError as exc:
            log.info("%s: registration failed (will heartbeat later): %s", self.robot_id, exc)
        self.start_prefetch()
        done = 0
        try:
            while (num_episodes is None or done < num_episodes) and not stop.is_set():
                task = tasks[int(self._rng.integers(len(tasks)))]
                seed = int(self._rng.integers(2**31))
                try:
                    self.run_episode(task, seed)
                except NoPolicyError as exc:
                    log.warning("%s", exc)
                    self.heartbeat("waiting")
                    stop.wait(wait_s)
                    continue
                done += 1
        finally:
            self.stop_prefetch()
        self.heartbeat("idle")
        return done
