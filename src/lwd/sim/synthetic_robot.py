"""SyntheticRobot: a light robot without MuJoCo, for data-plane load tests.

It records schema-valid episodes with fleet8 shapes: ``(T+1, 78)`` float32 states in the
shared layout (:mod:`lwd.sim.layout`, the task's environment flag set), ``(T, 5)`` actions and
proposals in ``[-1, 1]``, ``T`` the task's horizon (successes end earlier), an intervention
segment in some episodes, the acting policy's version on every step; so episodes weigh what
real ones weigh (70-270 KB). It finishes one every ``episode_s`` wall seconds. The numbers are
smooth random walks, not physics: train on none of it.

Two ways to drive it:

- whole episodes, by :func:`synthetic_episode` as the RobotAgent's ``rollout``: one vectorised
  episode stamped with the acting policy's version, then a wait until ``episode_s`` has passed.
  No inference, so hundreds of robots fit on one machine and the server, spools, uploads and
  policy distribution are what a load test measures;
- step by step, as a ``Robot`` (``reset`` / ``observe`` / ``act`` / ``done``), by
  :func:`lwd.sim.rollout.policy_episode` with a real policy (each ``act`` paced to
  ``episode_s / T``).

Usage loop::

    robot = SyntheticRobot("robot-3", episode_s=10.0, seed=3)
    agent = RobotAgent(robot, client, spool, "robot-3", None, policy_dir,
                       rollout=synthetic_episode)
    agent.run(get_suite("fleet8"), stop=stop)  # one ~100 KB episode every 10 s
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable

import numpy as np

from lwd.sim.layout import ACTION_DIM, ENV_FLAG, PROPRIO, PUZZLE, SCENE, STATE_DIM
from lwd.sim.tasks import CONTROL_DT, TaskSpec
from lwd.types import Episode, Observation, Source, StepResult

_EE_POS = slice(12, 15)  # end-effector position slots, moved by actions[:, :3]


class SyntheticRobot:
    """A robot that makes up plausible trajectories at a chosen pace.

    Args:
        robot_id: name recorded with every episode.
        episode_s: wall seconds one episode takes (0: as fast as possible).
        steps: steps per episode; None: the task's horizon, or less for a success.
        success_rate: probability that an episode succeeds.
        intervention_rate: probability that an episode has an intervention segment.
        seed: seeds this robot's trajectories. A per-process nonce is mixed in, so a restarted
            robot never re-records bit-identical content (which the store would deduplicate).
        sleep: how to wait (a host passes ``stop.wait`` so that stopping cuts the wait short).
    """

    def __init__(
        self,
        robot_id: str,
        episode_s: float = 10.0,
        steps: int | None = None,
        success_rate: float = 0.5,
        intervention_rate: float = 0.3,
        seed: int = 0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if episode_s < 0 or (steps is not None and steps < 1):
            raise ValueError(f"need episode_s >= 0 and steps >= 1, got {episode_s}, {steps}")
        self.robot_id = robot_id
        self.episode_s = float(episode_s)
        self.steps_override = steps
        self.success_rate = float(success_rate)
        self.intervention_rate = float(intervention_rate)
        self.seed = int(seed)
        self._nonce = int.from_bytes(os.urandom(8), "little")
        self._sleep = sleep
        self.task: TaskSpec | None = None
        self.length = 0
        self.steps = 0
        self.success = False
        self.progress = 0.0
        self._will_succeed = False
        self._state = np.zeros(STATE_DIM, np.float32)
        self._live = SCENE
        self._rng = np.random.default_rng(0)
        self._started = 0.0

    @property
    def cycle_time_s(self) -> float:
        return self.steps * CONTROL_DT

    # -- Robot protocol -------------------------------------------------------------------
    def reset(self, task: TaskSpec, seed: int) -> Observation:
        """Start an episode of ``task``: draw its length, outcome and first state."""
        self._rng = rng = np.random.default_rng([self.seed, int(seed), self._nonce])
        self._will_succeed = bool(rng.random() < self.success_rate)
        if self.steps_override is not None:
            self.length = self.steps_override
        elif self._will_succeed:
            self.length = max(1, int(task.horizon * rng.uniform(0.4, 1.0)))
        else:
            self.length = task.horizon
        state = np.zeros(STATE_DIM, np.float32)
        live = SCENE if task.env_kind == "scene" else PUZZLE
        state[PROPRIO] = rng.normal(0.0, 0.5, PROPRIO.stop - PROPRIO.start)
        state[live] = rng.normal(0.0, 0.5, live.stop - live.start)
        state[ENV_FLAG] = (1.0, 0.0) if task.env_kind == "scene" else (0.0, 1.0)
        self._state, self._live = state, live
        self.task, self.steps, self.success, self.progress = task, 0, False, 0.0
        self._started = time.monotonic()
        return self.observe()

    def observe(self) -> Observation:
        if self.task is None:
            raise RuntimeError("call reset(task, seed) before observe()")
        return Observation(state=self._state.copy(), instruction=self.task.instruction)

    def act(self, action: np.ndarray) -> StepResult:
        """Execute one ``(A,)`` action in [-1, 1], paced to ``episode_s / T`` per step."""
        if self.done():
            raise RuntimeError("episode is over; call reset() before act()")
        action = np.clip(np.asarray(action, np.float32).reshape(-1), -1.0, 1.0)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be {ACTION_DIM} finite numbers, got {action!r}")
        self._state = self._state + self._deltas(action[None])[0]
        self.steps += 1
        self._finish_if_done()
        self._wait_until(self.episode_s * self.steps / self.length)
        return StepResult(
            state=self._state.copy(),
            reward=float(self.success),
            success=self.success,
            done=self.done(),
            progress=self.progress,
        )

    def done(self) -> bool:
        return self.task is None or self.steps >= self.length

    # -- whole episodes -------------------------------------------------------------------
    def record_episode(self, policy_version: int, task: TaskSpec, seed: int) -> Episode:
        """One whole episode at once, stamped with ``policy_version``; returns after the pace.

        ``created_at`` is the moment it returns, like a robot that just finished.
        """
        first = self.reset(task, seed).state
        rng, t = self._rng, self.length
        # Smooth actions: a random walk squashed into [-1, 1].
        actions = np.tanh(np.cumsum(rng.normal(0.0, 0.15, (t, ACTION_DIM)), axis=0)).astype(
            np.float32
        )
        states = np.empty((t + 1, STATE_DIM), np.float32)
        states[0] = first
        states[1:] = first + np.cumsum(self._deltas(actions), axis=0)
        proposals = np.clip(actions + rng.normal(0.0, 0.1, actions.shape), -1, 1)
        sources = np.full(t, Source.AUTONOMOUS, np.uint8)
        if t >= 10 and rng.random() < self.intervention_rate:
            start, length = int(rng.integers(0, t - t // 10)), max(1, t // 10)
            sources[start : start + length] = Source.INTERVENTION
        self.steps = t
        self._finish_if_done()
        rewards = np.zeros(t, np.float32)
        rewards[-1] = float(self.success)
        self._wait_until(self.episode_s)
        return Episode(
            episode_id=uuid.uuid4().hex,
            robot_id=self.robot_id,
            task=task.name,
            instruction=task.instruction,
            states=states,
            actions=actions,
            proposals=proposals.astype(np.float32),
            rewards=rewards,
            sources=sources,
            policy_versions=np.full(t, int(policy_version), np.int32),
            success=self.success,
            terminated=self.success,
            progress=self.progress,
            cycle_time_s=self.cycle_time_s,
            created_at=time.time(),
        )

    # -- internals ------------------------------------------------------------------------
    def _deltas(self, actions: np.ndarray) -> np.ndarray:
        """``(N, D)`` state changes for ``(N, A)`` actions: the end effector follows the
        action, live slots drift a little, the environment flag stays."""
        deltas = np.zeros((len(actions), STATE_DIM), np.float32)
        for part in (PROPRIO, self._live):
            deltas[:, part] = self._rng.normal(0.0, 0.01, (len(actions), part.stop - part.start))
        deltas[:, _EE_POS] += 0.05 * actions[:, :3]
        return deltas

    def _finish_if_done(self) -> None:
        if self.steps >= self.length:
            self.success = self._will_succeed
            self.progress = 1.0 if self.success else float(self._rng.uniform(0.0, 0.9))

    def _wait_until(self, offset_s: float) -> None:
        remaining = self._started + offset_s - time.monotonic()
        if remaining > 0:
            self._sleep(remaining)


def synthetic_episode(
    robot: SyntheticRobot, policy, task: TaskSpec, seed: int, operator: object = None
) -> Episode:
    """A RobotAgent ``rollout`` for a :class:`SyntheticRobot`: a whole episode at once,
    stamped with the acting ``policy.version`` (nothing is inferred).

    Raises:
        ValueError: an operator was given; synthetic episodes make up their own interventions.
    """
    if operator is not None:
        raise ValueError(
            "synthetic episodes make up their own interventions; run them with operator=None"
        )
    return robot.record_episode(policy.version, task, seed)
