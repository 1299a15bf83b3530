"""Run whole episodes on a robot and record them as :class:`lwd.types.Episode`.

Three drivers share one recorder: a scripted operator alone (demos, play, weak rollouts), and a
policy with an optional intervening operator (evaluation and deployment).
"""

from __future__ import annotations

import time
import uuid
from typing import Protocol

import numpy as np

from lwd.sim.operator import ScriptedOperator
from lwd.sim.robot import SimRobot
from lwd.sim.tasks import TaskSpec
from lwd.types import SCRIPTED_VERSION, ActionChunk, Episode, Observation, Source


class Policy(Protocol):
    """Anything that maps an observation to an action chunk (local or remote)."""

    version: int

    def infer(self, obs: Observation) -> ActionChunk: ...


class EpisodeRecorder:
    """Accumulates one episode's steps; :meth:`finish` returns the immutable Episode."""

    def __init__(self, robot: SimRobot, task: TaskSpec, instruction: str, first: Observation):
        self.robot, self.task, self.instruction = robot, task, instruction
        self.states = [first.state]
        self.images = [first.image] if first.image is not None else None
        self.actions: list[np.ndarray] = []
        self.proposals: list[np.ndarray] = []
        self.sources: list[int] = []
        self.versions: list[int] = []

    def record(self, action, proposal, source: Source, version: int, obs: Observation) -> None:
        self.actions.append(np.asarray(action, dtype=np.float32))
        self.proposals.append(np.asarray(proposal, dtype=np.float32))
        self.sources.append(int(source))
        self.versions.append(int(version))
        self.states.append(obs.state)
        if self.images is not None:
            self.images.append(obs.image)

    def finish(self, play: bool = False) -> Episode:
        robot = self.robot
        success = bool(robot.success) and not play
        rewards = np.zeros(len(self.actions), dtype=np.float32)
        if success:
            rewards[-1] = 1.0
        return Episode(
            episode_id=uuid.uuid4().hex,
            robot_id=robot.robot_id,
            task=self.task.name,
            instruction=self.instruction,
            states=np.stack(self.states).astype(np.float32),
            actions=np.clip(np.stack(self.actions), -1.0, 1.0).astype(np.float32),
            proposals=np.clip(np.stack(self.proposals), -1.0, 1.0).astype(np.float32),
            rewards=rewards,
            sources=np.asarray(self.sources, dtype=np.uint8),
            policy_versions=np.asarray(self.versions, dtype=np.int32),
            success=success,
            terminated=success,
            progress=float(robot.progress),
            cycle_time_s=float(robot.cycle_time_s),
            images=None if self.images is None else np.stack(self.images).astype(np.uint8),
            created_at=time.time(),
        )


def scripted_episode(
    robot: SimRobot,
    operator: ScriptedOperator,
    task: TaskSpec,
    seed: int,
    source: Source,
    instruction: str | None = None,
) -> Episode:
    """One episode driven entirely by the scripted operator (demo, weak rollout or play)."""
    obs = robot.reset(task, seed)
    operator.reset_episode(seed)
    rec = EpisodeRecorder(robot, task, instruction or task.instruction, obs)
    while not robot.done():
        action = operator.act(obs)
        robot.act(action)
        obs = robot.observe()
        rec.record(action, action, source, SCRIPTED_VERSION, obs)
    return rec.finish(play=source == Source.PLAY)


def policy_episode(
    robot: SimRobot,
    policy: Policy,
    task: TaskSpec,
    seed: int,
    operator: ScriptedOperator | None = None,
    instruction: str | None = None,
) -> Episode:
    """One episode of ``policy`` acting in chunks; ``operator`` may take over at any step.

    While the operator is in control its actions are recorded as interventions and the policy's
    proposals are still queried so that both are stored. A chunk interrupted by a takeover is
    dropped; the policy replans from the state where control comes back.
    """
    instruction = instruction or task.instruction
    obs = robot.reset(task, seed)
    obs = Observation(obs.state, instruction, obs.image)
    if operator is not None:
        operator.reset_episode(seed)
    rec = EpisodeRecorder(robot, task, instruction, obs)
    chunk: list[np.ndarray] = []
    while not robot.done():
        if not chunk:
            chunk = list(policy.infer(obs).actions)
        proposal = chunk.pop(0)
        if operator is not None and operator.wants_control(obs):
            action, source = operator.act(obs), Source.INTERVENTION
            chunk = []
        else:
            action, source = proposal, Source.AUTONOMOUS
        robot.act(action)
        nxt = robot.observe()
        obs = Observation(nxt.state, instruction, nxt.image)
        rec.record(action, proposal, source, policy.version, obs)
    return rec.finish()
