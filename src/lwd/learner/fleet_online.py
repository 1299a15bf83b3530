"""Online post-training methods under one robot-hour budget, on a synchronous simulated fleet.

Every online method (LWD-online, HG-DAgger, RECAP) has the same three calls, so the same
harness runs them with the same fleet, the same budget and the same learner compute::

    method = make_method("lwd_online", init, offline_data, out / "method", encoder,
                         updates_per_round=300)
    history = run_fleet_online(method, task_names("fleet8"), robots=8, rounds=6,
                               robot_hours_per_round=0.25, seed=0, workers=2,
                               store=out / "fleet")
      round k:  policy = method.start() (k = 0), else the previous improve()
                the fleet runs policy for the round's budget: N perturbed SimRobots, the
                scripted operator intervening, lwd.sim.rollout.policy_episode (as `lwd robot`)
                method.observe(the round's episodes)
                policy = method.improve()              # one round of learning
    evaluate(history[-1].improved, EvalConfig(...))    # the fixed protocol, once at the end

Robot-hours are simulated control time: ``steps * CONTROL_DT / 3600`` (OGBench runs at 20 Hz).
With a robot-hour budget each robot takes an equal share and runs whole episodes until its
share is used up (the last episode may run past it, as a real robot finishes its episode), and
what was actually spent is what is counted. Episodes are collected by worker processes
(``python -m lwd.learner.fleet_online``, JSON lines; policies travel as checkpoint directories
and episodes come back through an :class:`EpisodeStore` on disk, never pickled). Episode seeds
depend only on (seed, round, robot, episode index), so the fleet's episodes do not depend on
how many workers ran them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lwd.config import AgentConfig, OfflineConfig, OnlineConfig, from_dict, preset
from lwd.data.store import EpisodeStore
from lwd.learner.online import LocalSource, OnlineLearner, adopt_architecture
from lwd.policy.flow import TextEncoder
from lwd.sim.tasks import CONTROL_DT
from lwd.types import Episode, Source
from lwd.workers import run_jobs, serve

FLEET_ROBOT_SEED_BASE = 20_000
"""Robot ``r`` of the online fleet has ``Perturbation.sample(FLEET_ROBOT_SEED_BASE + r)``
(data generation uses 10_000 + k and evaluation 50_000 + k: three different sets of robots)."""


class OnlineMethod(Protocol):
    """An online post-training method, as the fleet harness drives it.

    Constructed as ``Cls(init, offline_data, out, encoder, *, seed=0, updates_per_round=...,
    batch_size=256, **overrides)``; ``init`` is the checkpoint it starts from (see
    :data:`STARTS`), ``offline_data`` the offline episode store, ``out`` its own directory.
    """

    name: str

    def start(self) -> Path:
        """The acting policy's checkpoint directory for round 0."""
        ...

    def observe(self, episodes: Sequence[Episode]) -> None:
        """Take the fleet's new episodes (whole episodes, in a deterministic order)."""
        ...

    def improve(self) -> Path:
        """One round of learning; returns the new acting policy's checkpoint directory."""
        ...


@dataclass(frozen=True)
class RoundRecord:
    """What one round of the fleet did with one policy (JSON-ready via ``asdict``)."""

    round: int  #: 0-based
    policy: str  #: checkpoint directory the fleet acted with
    version: int  #: policy version stamped on the round's steps (round + 1)
    episodes: int  #: episodes run this round
    steps: int  #: control steps run this round
    robot_hours: float  #: simulated robot time this round, hours
    robot_hours_total: float  #: simulated robot time so far, this round included
    success: float  #: autonomous success: share of episodes that succeeded with no intervention
    assisted_success: float  #: share of episodes that succeeded, with the operator's help or not
    intervention_rate: float  #: share of episodes in which the operator took over at least once
    intervention_steps: float  #: share of steps the operator controlled
    score: float  #: mean step-wise score (fraction of subtasks done; help included)
    cycle_time_s: float  #: mean episode duration, simulated seconds
    task_success: dict  #: task -> autonomous success this round
    improved: str  #: checkpoint directory that ``improve()`` returned after this round
    collect_s: float  #: wall seconds collecting
    improve_s: float  #: wall seconds in observe + improve


RoundCallback = Callable[[RoundRecord], None]


def episode_seed(seed: int, round_: int, robot: int, index: int) -> int:
    """The seed of a robot's ``index``-th episode of a round (start pose, noise, operator)."""
    return int(np.random.SeedSequence([seed, round_, robot, index]).generate_state(1)[0])


def plan_round(
    tasks: Sequence[str],
    robots: int,
    round_: int,
    seed: int,
    robot_hours: float | None = None,
    episodes: int | None = None,
) -> list[dict]:
    """One job per robot: run episodes until its share of the round's budget is spent.

    Robot ``r``'s ``k``-th episode runs task ``tasks[(r + round + k) % len(tasks)]``, so every
    robot meets every task and a round covers the tasks evenly.
    """
    if (robot_hours is None) == (episodes is None):
        raise ValueError("give exactly one budget: robot_hours_per_round or episodes_per_round")
    if robots < 1 or not tasks:
        raise ValueError(f"need at least one robot and one task, got {robots} and {list(tasks)}")
    jobs = []
    for r in range(robots):
        job = dict(robot=r, round=round_, seed=seed, tasks=list(tasks), seconds=None, episodes=None)
        if robot_hours is not None:
            if robot_hours <= 0:
                raise ValueError(f"robot_hours_per_round must be > 0, got {robot_hours}")
            job["seconds"] = robot_hours * 3600.0 / robots
        else:
            job["episodes"] = episodes // robots + (r < episodes % robots)
        jobs.append(job)
    return jobs


def _fleet_worker(init: dict, encoder: TextEncoder | None = None) -> Callable[[dict], dict]:
    """The episode-collecting job handler (in a worker process, or in-process with ``encoder``)."""
    from lwd.policy.flow import FlowPolicyRunner
    from lwd.policy.ranker import load_acting_policy
    from lwd.sim.operator import ScriptedOperator
    from lwd.sim.robot import EnvPool, Perturbation, SimRobot
    from lwd.sim.rollout import policy_episode
    from lwd.sim.tasks import get_task

    runner = FlowPolicyRunner(
        load_acting_policy(init["policy"]), encoder, version=int(init["version"]), seed=0
    )
    store = EpisodeStore(init["store"])
    pool = EnvPool()  # one OGBench environment per kind, shared by this worker's robots
    robots: dict[int, SimRobot] = {}

    def handle(job: dict) -> dict:
        r = int(job["robot"])
        if r not in robots:
            pert = Perturbation.sample(FLEET_ROBOT_SEED_BASE + r) if init["perturb"] else None
            robots[r] = SimRobot(f"fleet-robot-{r}", pert, pool=pool)
        robot, tasks = robots[r], job["tasks"]
        # One operator per robot and round: its intervention budget is a person's attention
        # for this robot over the round (in `lwd robot` it lasts the robot's lifetime). Its
        # randomness is reseeded from the episode seed by policy_episode.
        operator = ScriptedOperator(robot, "demonstrator") if init["operator"] else None
        episodes, spent, k = [], 0.0, 0
        while (job["seconds"] is not None and spent < job["seconds"]) or (
            job["episodes"] is not None and k < job["episodes"]
        ):
            task = get_task(tasks[(r + job["round"] + k) % len(tasks)], init["suite"])
            seed = episode_seed(job["seed"], job["round"], r, k)
            runner.reseed(seed)
            ep = policy_episode(robot, runner, task, seed, operator)
            interventions = int((ep.sources == Source.INTERVENTION).sum())
            episodes.append(
                dict(
                    id=store.put(ep),
                    robot=r,
                    index=k,
                    task=task.name,
                    steps=ep.num_steps,
                    success=bool(ep.success),
                    interventions=interventions,
                    progress=float(ep.progress),
                    cycle_time_s=float(ep.cycle_time_s),
                )
            )
            spent += ep.num_steps * CONTROL_DT
            k += 1
        return dict(robot=r, episodes=episodes)

    return handle


def _serve_setup(init: dict) -> Callable[[dict], dict]:
    import torch

    torch.set_num_threads(1)  # one worker process per core
    return _fleet_worker(init)


def _collect(jobs: list[dict], init: dict, workers: int, encoder: TextEncoder | None) -> list:
    if workers == 0:  # in this process (tests, debugging): same handler, caller's encoder
        handle = _fleet_worker(init, encoder)
        return [handle(job) for job in jobs]
    return list(run_jobs(__name__, jobs, workers, init))


def _summarize(k, policy, improved, rows, total_before, collect_s, improve_s) -> RoundRecord:
    steps = sum(e["steps"] for e in rows)
    hours = steps * CONTROL_DT / 3600.0
    auto = [e["success"] and e["interventions"] == 0 for e in rows]
    by_task: dict[str, list[bool]] = {}
    for e, ok in zip(rows, auto, strict=True):
        by_task.setdefault(e["task"], []).append(ok)
    n = max(len(rows), 1)
    return RoundRecord(
        round=k,
        policy=str(policy),
        version=k + 1,
        episodes=len(rows),
        steps=steps,
        robot_hours=hours,
        robot_hours_total=total_before + hours,
        success=sum(auto) / n,
        assisted_success=sum(e["success"] for e in rows) / n,
        intervention_rate=sum(e["interventions"] > 0 for e in rows) / n,
        intervention_steps=sum(e["interventions"] for e in rows) / max(steps, 1),
        score=float(np.mean([e["progress"] for e in rows])) if rows else 0.0,
        cycle_time_s=float(np.mean([e["cycle_time_s"] for e in rows])) if rows else 0.0,
        task_success={t: float(np.mean(v)) for t, v in by_task.items()},
        improved=str(improved),
        collect_s=collect_s,
        improve_s=improve_s,
    )


def run_fleet_online(
    method: OnlineMethod,
    tasks: Sequence[str],
    robots: int,
    rounds: int,
    *,
    store: str | Path,
    robot_hours_per_round: float | None = None,
    episodes_per_round: int | None = None,
    seed: int = 0,
    workers: int = 2,
    suite: str = "fleet8",
    perturb: bool = True,
    operator: bool = True,
    encoder: TextEncoder | None = None,
    on_round: RoundCallback | None = None,
) -> list[RoundRecord]:
    """Deploy ``method``'s policy on a simulated fleet for ``rounds`` rounds, learning between.

    Args:
        method: the online method (start / observe / improve).
        tasks: task names of ``suite`` the fleet works on.
        robots: simulated robots, each with its own perturbation.
        rounds: deploy-then-improve rounds.
        store: episode store the fleet's episodes are written to (created if missing).
        robot_hours_per_round: the round's budget in simulated robot-hours; or
        episodes_per_round: the round's budget in episodes (exactly one of the two).
        seed: seeds every episode (with round, robot and index).
        workers: collecting processes; 0 collects in this process (with ``encoder``).
        suite: the task suite.
        perturb: per-robot deployment shift.
        operator: the scripted operator intervenes (a fleet without one records only
            autonomous steps).
        encoder: instruction embedder for ``workers=0`` (default: the shipped model).
        on_round: called with each round's record.

    Returns:
        one :class:`RoundRecord` per round; ``history[-1].improved`` is the final policy.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    store = Path(store).resolve()
    fleet = EpisodeStore(store)
    policy = Path(method.start())
    total, history = 0.0, []
    for k in range(rounds):
        t0 = time.perf_counter()
        jobs = plan_round(tasks, robots, k, seed, robot_hours_per_round, episodes_per_round)
        init = dict(
            policy=str(policy.resolve()),
            version=k + 1,
            store=str(store),
            suite=suite,
            perturb=perturb,
            operator=operator,
        )
        rows = [e for result in _collect(jobs, init, workers, encoder) for e in result["episodes"]]
        rows.sort(key=lambda e: (e["robot"], e["index"]))  # not completion order: deterministic
        episodes = [fleet.get(e["id"]) for e in rows]
        t1 = time.perf_counter()
        method.observe(episodes)
        improved = Path(method.improve())
        record = _summarize(k, policy, improved, rows, total, t1 - t0, time.perf_counter() - t1)
        total = record.robot_hours_total
        history.append(record)
        if on_round is not None:
            on_round(record)
        policy = improved
    return history


# ------------------------------------------------------------------------------ LWD-online
class DirectorySink:
    """A :class:`~lwd.learner.online.PolicySink` keeping every published policy as ``root/vNNNN``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.versions: list[Path] = sorted(self.root.glob("v[0-9][0-9][0-9][0-9]"))

    def publish(self, checkpoint_dir: Path) -> int:
        version = len(self.versions) + 1
        dest = self.root / f"v{version:04d}"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(checkpoint_dir, dest)
        self.versions.append(dest)
        return version

    @property
    def latest(self) -> Path:
        if not self.versions:
            raise RuntimeError(f"nothing was published to {self.root} yet")
        return self.versions[-1]


def lwd_online_config(
    init: str | Path, *, seed: int, batch_size: int, updates_per_round: int, **overrides
) -> OnlineConfig:
    """``preset("online-default")`` for the synchronous fleet, starting from ``init``.

    Online semantics stay the paper's (tau_base 0.9, n = 1, 1:1 offline:online). One refresh,
    one publish and one checkpoint per round (the fleet only ever runs the round's last
    version). The value/critic architecture and lambda come from the offline run ``init``
    (lambda is set by the reward scale, not by the stage); ``overrides`` name fields of
    :class:`OnlineConfig` or of its :class:`AgentConfig` and win over both.
    """
    agent_fields = {f.name for f in dataclasses.fields(AgentConfig)}
    online_fields = {f.name for f in dataclasses.fields(OnlineConfig)} - {"agent"}
    unknown = set(overrides) - agent_fields - online_fields
    if unknown:
        raise ValueError(
            f"unknown LWD-online settings {sorted(unknown)}; use fields of OnlineConfig "
            f"{sorted(online_fields)} or AgentConfig {sorted(agent_fields)}"
        )
    cfg = dataclasses.replace(
        preset("online-default"),
        seed=seed,
        batch_size=batch_size,
        publish_every=updates_per_round,
        refresh_every=updates_per_round,
        refresh_s=None,  # nothing arrives while a round learns
        checkpoint_every=updates_per_round,
        **{k: v for k, v in overrides.items() if k in online_fields},
    )
    cfg = adopt_architecture(cfg, init, keep_acting="best_of_n" not in overrides)
    agent = {k: v for k, v in overrides.items() if k in agent_fields}
    offline_cfg = Path(init) / "offline_config.json"
    if "lam" not in agent and offline_cfg.is_file():
        agent["lam"] = from_dict(OfflineConfig, json.loads(offline_cfg.read_text())).agent.lam
    return dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, **agent))


class LwdOnlineMethod:
    """The paper's online stage: :class:`OnlineLearner` continued from an offline RL run.

    ``init`` is the output directory of ``lwd train offline`` (an SFT checkpoint also works:
    value and critic then start from scratch). The fleet's episodes go to a local episode
    store that the learner reads through :class:`LocalSource`; every ``improve`` runs
    ``updates_per_round`` updates on 1:1 offline:online batches and publishes.
    """

    name = "lwd_online"

    def __init__(
        self,
        init: str | Path,
        offline_data: str | Path,
        out: str | Path,
        encoder: TextEncoder,
        *,
        seed: int = 0,
        updates_per_round: int = 300,
        batch_size: int = 256,
        known_tasks: Sequence[str] | None = None,
        **overrides,
    ) -> None:
        out = Path(out)
        self.updates_per_round = int(updates_per_round)
        self.cfg = lwd_online_config(
            init,
            seed=seed,
            batch_size=batch_size,
            updates_per_round=self.updates_per_round,
            **overrides,
        )
        self.store = EpisodeStore(out / "fleet_episodes")
        self.sink = DirectorySink(out / "policies")
        self.learner = OnlineLearner(
            self.cfg,
            init,
            offline_data,
            LocalSource(self.store),
            self.sink,
            out / "learner",
            encoder,
            known_tasks,
        )

    def start(self) -> Path:
        if not self.learner.published:
            self.learner.publish()  # version 1: the offline run's acting policy
        return self.sink.latest

    def observe(self, episodes: Sequence[Episode]) -> None:
        for ep in episodes:
            self.store.put(ep)

    def improve(self) -> Path:
        # run() refreshes at the round's first update (refresh_every = updates_per_round) and
        # publishes after its last (publish_every = updates_per_round).
        self.learner.run(until=self.learner.step + self.updates_per_round)
        return self.sink.latest


# --------------------------------------------------------------------------------- factory
STARTS = {"lwd_online": "offline", "hgdagger": "sft", "recap": "sft"}
"""Which checkpoint each method starts from: the LWD-offline run, or the SFT policy."""


def make_method(
    name: str,
    init: str | Path,
    offline_data: str | Path,
    out: str | Path,
    encoder: TextEncoder,
    *,
    seed: int = 0,
    updates_per_round: int = 300,
    batch_size: int = 256,
    **overrides,
) -> OnlineMethod:
    """Build the online method ``name`` (one of :data:`STARTS`)."""
    if name == "lwd_online":
        cls = LwdOnlineMethod
    elif name == "hgdagger":
        from lwd.learner.hgdagger import HGDaggerMethod as cls
    elif name == "recap":
        from lwd.learner.recap import RecapMethod as cls  # written separately; imported late
    else:
        raise ValueError(f"unknown online method {name!r}; known: {', '.join(STARTS)}")
    return cls(
        init,
        offline_data,
        out,
        encoder,
        seed=seed,
        updates_per_round=updates_per_round,
        batch_size=batch_size,
        **overrides,
    )


if __name__ == "__main__":
    serve(_serve_setup)
