"""RobotHost: K robots of the fleet as threads of one process, so one machine hosts a fleet.

Robot ``i`` is ``<robot_id>-i``, with its own robot (and perturbation seed), client, spool
(``workdir/<id>/spool``) and policy directory (``workdir/<id>/policies``): to the server it is
an independent robot. What the robots of a host share, to save the machine:

- one :class:`SharedPolicies`: each policy version's weights are loaded once (inference only
  reads them), not once per robot;
- one :class:`LatestPolicyCache`: the server is asked for its newest version at most once per
  ``max_age_s`` for the whole host, not once per robot and poll;
- one stop event: :meth:`RobotHost.stop` ends every robot after its current episode (spooled
  and drained); a synthetic robot cuts its pacing wait short.

Usage loop::

    host = RobotHost("http://fleet:8000", "rack-3", count=64, workdir=Path("robots"),
                     cfg=HostConfig(synthetic=True, episode_s=10.0))
    with host:
        done = host.run(get_suite("fleet8"))  # {"rack-3-0": 12, ...}; host.stop() from a signal

Simulated robots (``synthetic=False``) each hold their own MuJoCo environments (~200 MB per
environment kind), since threads run them at the same time; a host of many light robots uses
``synthetic=True`` (:class:`~lwd.sim.synthetic_robot.SyntheticRobot`: no MuJoCo, no inference).
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lwd.fleet.client import FleetClient, FleetError, PolicyRef
from lwd.fleet.robot_agent import RobotAgent
from lwd.fleet.spool import Spool
from lwd.policy.flow import FlowPolicy, TextEncoder
from lwd.policy.ranker import load_acting_policy
from lwd.sim.tasks import TaskSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostConfig:
    """How a host builds and runs its robots."""

    synthetic: bool = False
    """Light robots (SyntheticRobot, whole episodes, no MuJoCo, no inference) instead of
    simulated ones."""
    episode_s: float = 10.0
    """Synthetic robots: wall seconds per episode."""
    steps: int | None = None
    """Synthetic robots: steps per episode (None: the task's horizon, less for a success)."""
    perturb: bool = True
    """Simulated robots: each gets its own deployment shift drawn from its seed."""
    operator: bool = True
    """Simulated robots: a scripted operator intervenes when the policy makes no progress."""
    seed: int | None = None
    """Robot ``i`` gets seed ``seed + i``; None: a hash of its id."""
    timeout_s: float = 10.0
    """Deadline of one server call, seconds."""
    prefetch_s: float | None = 1.0
    """Seconds between policy prefetch polls of each robot; None: no prefetching."""
    stagger_s: float | None = None
    """Robots start spread over this many seconds, so uploads do not come in lockstep
    (None: ``episode_s`` for synthetic robots, 0 for simulated ones)."""
    device: str = "cpu"
    """Torch device for inference."""
    max_active: int | None = None
    """Simulated robots: at most this many in an episode at once; the others wait at their
    reset (None: no cap). Each robot in an episode holds a borrowed MuJoCo environment of
    about 300 MB, and a host's robots share its CPU, so past a few per core more active robots
    only cost memory."""


class SharedPolicies:
    """A :data:`~lwd.fleet.robot_agent.PolicyLoader` that loads each version once for a host.

    Versions are immutable on one server, so robots of a host (all talking to one server)
    can share a version's module: inference is ``torch.no_grad`` and never writes weights.

    Args:
        device: torch device to load onto.
        keep: versions kept loaded (older ones are dropped once no robot uses them).
    """

    def __init__(self, device: str = "cpu", keep: int = 3) -> None:
        self.device, self.keep = device, int(keep)
        self._lock = threading.Lock()
        self._loaded: OrderedDict[int, FlowPolicy] = OrderedDict()

    def __call__(self, version: int, path: Path) -> FlowPolicy:
        # Loading under the lock: when K robots reach a boundary together, one loads.
        with self._lock:
            policy = self._loaded.get(version)
            if policy is None:
                policy = load_acting_policy(path, device=self.device)
                self._loaded[version] = policy
                while len(self._loaded) > self.keep:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(version)
            return policy


class LatestPolicyCache:
    """The server's newest policy, asked at most once per ``max_age_s`` for all callers.

    Drop-in for ``FleetClient.latest_policy``: returns a :class:`PolicyRef` or None, raises
    :class:`FleetError`. A failure is remembered for ``max_age_s`` too, so that K robots do
    not each wait out a deadline while the server is down.
    """

    def __init__(
        self,
        client: FleetClient,
        max_age_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client, self.max_age_s, self._clock = client, float(max_age_s), clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._ref: PolicyRef | None = None
        self._error: FleetError | None = None

    def __call__(self) -> PolicyRef | None:
        with self._lock:  # held while asking: the others want this very answer
            if self._at is None or self._clock() - self._at >= self.max_age_s:
                try:
                    self._ref, self._error = self.client.latest_policy(), None
                except FleetError as exc:
                    self._ref, self._error = None, exc
                self._at = self._clock()
            if self._error is not None:
                raise self._error
            return self._ref


class RobotHost:
    """``count`` RobotAgents of one process (see the module docstring).

    Args:
        server: the fleet server's URL.
        robot_id: the robots' id, or their prefix when ``count`` is given.
        count: robots to host, ``<robot_id>-0 .. <robot_id>-<count-1>``; None: one robot
            named ``robot_id``.
        workdir: each robot keeps its spool and policies in ``workdir/<its id>/``.
        cfg: how to build and run them.
        encoder: instruction embedder of simulated robots' policies (one for the host);
            default: the shipped InstructionEncoder, built on first use.
    """

    def __init__(
        self,
        server: str,
        robot_id: str,
        count: int | None = None,
        workdir: str | Path = "robots",
        cfg: HostConfig | None = None,
        encoder: TextEncoder | None = None,
    ) -> None:
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.cfg = cfg = cfg or HostConfig()
        self.stop_event = threading.Event()
        ids = [robot_id] if count is None else [f"{robot_id}-{i}" for i in range(count)]
        self._latest_client: FleetClient | None = None
        latest = None
        if len(ids) > 1:  # one robot polls for itself
            self._latest_client = FleetClient(server, timeout_s=cfg.timeout_s, retries=1)
            latest = LatestPolicyCache(self._latest_client)
        policies = SharedPolicies(cfg.device)
        if encoder is None and not cfg.synthetic:
            from lwd.policy.instruction import InstructionEncoder

            encoder = InstructionEncoder()
        self._envs = None  # the OGBench environments the simulated robots borrow
        self.agents: list[RobotAgent] = []
        for i, rid in enumerate(ids):
            seed = zlib.crc32(rid.encode()) if cfg.seed is None else cfg.seed + i
            robot, operator, rollout = self._robot(rid, seed)
            work = Path(workdir) / rid
            agent = RobotAgent(
                robot,
                FleetClient(server, timeout_s=cfg.timeout_s, retries=1),
                Spool(work / "spool"),
                rid,
                encoder,
                work / "policies",
                operator=operator,
                seed=seed,
                device=cfg.device,
                prefetch_s=cfg.prefetch_s,
                latest=latest,
                load=policies,
                rollout=rollout,
            )
            self.agents.append(agent)

    def _robot(self, robot_id: str, seed: int):
        """``(robot, operator, rollout)`` of one robot."""
        cfg = self.cfg
        if cfg.synthetic:
            from lwd.sim.synthetic_robot import SyntheticRobot, synthetic_episode

            robot = SyntheticRobot(
                robot_id, cfg.episode_s, cfg.steps, seed=seed, sleep=self.stop_event.wait
            )
            return robot, None, synthetic_episode
        from lwd.sim.operator import ScriptedOperator  # loads MuJoCo: simulated robots only
        from lwd.sim.robot import EnvPool, Perturbation, SimRobot

        if self._envs is None:  # the host's robots run concurrently: they borrow environments
            self._envs = EnvPool(lend=True, max_active=cfg.max_active)
        pert = Perturbation.sample(seed) if cfg.perturb else None
        robot = SimRobot(robot_id, pert, pool=self._envs)
        operator = ScriptedOperator(robot, "demonstrator", seed=seed) if cfg.operator else None
        return robot, operator, None

    def stop(self) -> None:
        """Ask every robot to stop after its current episode (safe from a signal handler)."""
        self.stop_event.set()

    def run(self, tasks: Sequence[TaskSpec], num_episodes: int | None = None) -> dict[str, int]:
        """Run every robot until ``num_episodes`` each or :meth:`stop`; episodes run by id.

        A robot that fails unexpectedly is logged and counted as -1; the others go on.
        """
        if not tasks:
            raise ValueError("run() needs at least one task")
        stagger = self.cfg.stagger_s
        if stagger is None:
            stagger = self.cfg.episode_s if self.cfg.synthetic else 0.0
        done: dict[str, int] = {}

        def robot_loop(i: int, agent: RobotAgent) -> None:
            if self.stop_event.wait(stagger * i / len(self.agents)):
                done[agent.robot_id] = 0
                return
            try:
                done[agent.robot_id] = agent.run(tasks, num_episodes, self.stop_event)
            except Exception:  # one broken robot must not take the host's others down
                log.exception("%s stopped on an unexpected error", agent.robot_id)
                done[agent.robot_id] = -1

        threads = [
            threading.Thread(target=robot_loop, args=(i, a), name=a.robot_id, daemon=True)
            for i, a in enumerate(self.agents)
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():  # short joins keep Ctrl-C responsive
                    thread.join(0.5)
        except KeyboardInterrupt:
            self.stop()  # finish (spool, drain) the episodes in progress, then stop
            for thread in threads:
                thread.join()
        return {a.robot_id: done.get(a.robot_id, 0) for a in self.agents}

    def close(self) -> None:
        for agent in self.agents:
            agent.client.close()
        if self._latest_client is not None:
            self._latest_client.close()
        if self._envs is not None:
            self._envs.close()

    def __enter__(self) -> RobotHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
