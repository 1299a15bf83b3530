"""RobotAgent: one robot of the fleet, acting with a local policy and feeding the server.

One episode of the loop (:meth:`RobotAgent.run_episode`)::

    check the server for a newer policy    # only here, between episodes
      newer? download (checksummed, atomic) + load it; failures keep the current policy
    run the episode with local inference   # lwd.sim.rollout.policy_episode: every step records
                                           # its source, the policy's proposal and version; the
                                           # operator may intervene
    spool the episode                      # on disk before any upload
    drain the spool                        # oldest first; stops at the first transient failure
    heartbeat                              # best effort

The server being down never stops the robot: it keeps acting with the policy it has, and its
episodes wait in the spool until an upload is acknowledged (at-least-once; the server
deduplicates). Policies live in ``policy_dir/<version>/``; after a restart the agent starts
from the newest one found there, so it can act before it reaches the server.

Timing records for latency measurements go to the spool's ``events.jsonl``:

- ``policy_loaded``: version, ``seen_at`` (first time the agent learned the version exists, from
  a policy check or a heartbeat), ``loaded_at``, ``load_s`` (download + load);
- ``episode``: episode id, task, steps, outcome, interventions, the version that acted and its
  ``seen_at`` / ``loaded_at``, ``started_at``, ``finished_at``, ``spooled_at``, inference calls
  and seconds;
- ``acked`` (written by the spool): episode id, ``finished_at``, ``t`` (acknowledged at).

A version's publish time is in the server's registry (``PolicyRegistry.versions()``); join on
the version to get publish-to-robot latency.

Usage::

    agent = RobotAgent(robot, FleetClient(url), Spool(d / "spool"), "robot-3",
                       InstructionEncoder(), d / "policies", operator=ScriptedOperator(robot))
    agent.run(tasks, stop=stop_event)  # until stopped
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

from lwd.fleet.client import Backoff, FleetClient, FleetError, RejectedError
from lwd.fleet.spool import DrainResult, Spool
from lwd.policy.checkpoint import CheckpointError, load_policy
from lwd.policy.flow import FlowPolicyRunner, TextEncoder
from lwd.sim.tasks import TaskSpec
from lwd.types import ActionChunk, Episode, Observation, Source

if TYPE_CHECKING:  # importing lwd.sim.robot loads MuJoCo; `import lwd.fleet` must stay light
    from lwd.sim.operator import ScriptedOperator
    from lwd.sim.robot import Robot

log = logging.getLogger(__name__)


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
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
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
        self._clock, self._sleep = clock, sleep
        self._rng = np.random.default_rng([self.seed, 4099])
        self._jitter = random.Random(self.seed)
        self.policy: FlowPolicyRunner | None = None
        self.policy_info: dict = {}
        self.episodes_done = 0
        self.last_drain: DrainResult | None = None
        self._seen_at: dict[int, float] = {}
        self._bad_versions: set[int] = set()
        self.policy_dir.mkdir(parents=True, exist_ok=True)
        self._load_local()

    @property
    def policy_version(self) -> int | None:
        """The version acting now (None before any was loaded)."""
        return None if self.policy is None else self.policy.version

    # ---------------------------------------------------------------------------- policy
    def _install(self, version: int, path: Path, **info: object) -> None:
        policy = load_policy(path, device=self.device)
        self.policy = FlowPolicyRunner(policy, self.encoder, version=version, seed=self.seed)
        self.policy_info = {"version": version, **info}

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

    def sync_policy(self) -> bool:
        """Load the server's newest version if it is newer than the one acting.

        Never raises for fleet or checkpoint failures: the agent keeps its current policy,
        and a version that the server refuses or that does not load is not tried again.

        Returns:
            True if a new version was loaded.
        """
        try:
            ref = self.client.latest_policy()
        except FleetError as exc:
            log.warning("%s: policy check failed, keeping the current one: %s", self.robot_id, exc)
            return False
        if ref is None:
            return False
        self._saw(ref.version)
        current = self.policy_version
        if (current is not None and ref.version <= current) or ref.version in self._bad_versions:
            return False
        start = time.perf_counter()
        try:
            path = self.client.download_policy(
                ref.version, self.policy_dir / str(ref.version), sha256=ref.sha256
            )
            self._install(
                ref.version,
                path,
                sha256=ref.sha256,
                seen_at=self._seen_at[ref.version],
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
        return True

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
        from lwd.sim.rollout import policy_episode  # loads MuJoCo; only robots need it

        self.policy.reseed(seed)
        timed = _TimedPolicy(self.policy)
        info = dict(self.policy_info)
        started_at = self._clock()
        ep = policy_episode(self.robot, timed, task, seed, self.operator)  # type: ignore[arg-type]
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

        While no policy is available the agent heartbeats ``"waiting"`` every ``wait_s``.

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
        done = 0
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
        self.heartbeat("idle")
        return done
