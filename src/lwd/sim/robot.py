"""SimRobot: a simulated UR5e on OGBench manipulation, with per-robot deployment shift.

Usage loop (the same for real robots through the ``Robot`` protocol)::

    robot = SimRobot("robot-3", Perturbation.sample(seed=3))
    obs = robot.reset(task, seed=17)
    while not robot.done():
        for action in policy.infer(obs).actions:
            result = robot.act(action)
            if result.done:
                break
        obs = robot.observe()
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, replace
from typing import Protocol

import gymnasium as gym
import numpy as np
import ogbench.manipspace  # noqa: F401  (registers the OGBench manipulation environments)

from lwd.sim.layout import ACTION_DIM, pack_state
from lwd.sim.ogbench_env import seeded_reset
from lwd.sim.progress import SubtaskTracker
from lwd.sim.tasks import CONTROL_DT, SceneGoal, TaskSpec
from lwd.types import Observation, StepResult


class Robot(Protocol):
    """What the fleet needs from a robot, real or simulated."""

    def reset(self, task: TaskSpec, seed: int) -> Observation: ...
    def observe(self) -> Observation: ...
    def act(self, action: np.ndarray) -> StepResult: ...
    def done(self) -> bool: ...


@dataclass(frozen=True)
class Perturbation:
    """Deployment shift of one robot. All zeros/ones is the nominal robot.

    Attributes:
        action_noise: std of Gaussian noise added to every executed action (normalised units).
        action_delay: control steps between a command and its execution (commands queue up).
        object_offset: fixed (x, y) shift in metres of the cube's starting position.
        start_offset: fixed (x, y, z) shift in metres of the arm's start-pose sampling box.
        friction_scale: multiplier on every geom's sliding friction.
    """

    action_noise: float = 0.0
    action_delay: int = 0
    object_offset: tuple[float, float] = (0.0, 0.0)
    start_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    friction_scale: float = 1.0

    @classmethod
    def sample(cls, seed: int, strength: float = 1.0) -> Perturbation:
        """A robot's perturbation, drawn once from its seed; ``strength`` scales every shift."""
        rng = np.random.default_rng([seed, 7919])
        s = float(strength)
        return cls(
            action_noise=float(rng.uniform(0.0, 0.06) * s),
            action_delay=int(rng.uniform() < 0.25 * s),
            object_offset=tuple(float(v) for v in rng.uniform(-0.015, 0.015, 2) * s),
            start_offset=tuple(float(v) for v in rng.uniform(-0.03, 0.03, 3) * s),
            friction_scale=float(1.0 + rng.uniform(-0.2, 0.2) * s),
        )


class EnvPool:
    """OGBench environments by kind, built lazily and shared by robots.

    One OGBench environment holds ~150-450 MB (its MJCF tree, a 67 MB MuJoCo model buffer
    and a 14 MB arena), so a process that simulates many robots must not keep one per robot
    per kind. Two ways to share:

    - ``lend=False``: one environment per kind for robots that take turns (evaluation and
      data generation step their robots one at a time).
    - ``lend=True``: robots that run concurrently (the threads of a robot host) each borrow an
      environment for one episode and give it back when the episode ends, so a host holds as
      many environments as it has robots *in an episode*. ``max_active`` caps those: a robot
      that would exceed it waits at its reset until another robot's episode ends, and the pool
      keeps at most ``max_active`` environments (a free one of another kind is closed to make
      room).
    """

    def __init__(self, lend: bool = False, max_active: int | None = None) -> None:
        if max_active is not None and (not lend or max_active < 1):
            raise ValueError(f"max_active needs lend=True and >= 1, got {max_active}")
        self.lend, self.max_active = lend, max_active
        self._envs: dict[tuple[str, int | None], gym.Env] = {}
        self._free: dict[tuple[str, int | None], list] = collections.defaultdict(list)
        self._keys: dict[int, tuple[str, int | None]] = {}
        self._base: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._active = 0
        self._cond = threading.Condition()

    def _build(self, key: tuple[str, int | None]):
        kind, image_size = key
        kwargs = dict(mode="task", terminate_at_goal=False, visualize_info=False)
        if image_size:
            kwargs.update(width=image_size, height=image_size)
        env = gym.make(f"{kind}-v0", **kwargs).unwrapped
        env.reset(options=dict(task_id=1))  # compiles the model
        base = (env._arm_sampling_bounds.copy(), env._model.geom_friction[:, 0].copy())
        with self._cond:
            self._base[id(env)], self._keys[id(env)] = base, key
        return env

    def get(self, kind: str, image_size: int | None = None):
        """The pool's one environment of ``kind`` (``lend=False`` pools)."""
        key = (kind, image_size)
        if key not in self._envs:
            self._envs[key] = self._build(key)
        return self._envs[key]

    def checkout(self, kind: str, image_size: int | None = None):
        """The environment for a robot's next episode of ``kind``.

        A lending pool lends a free one of the right kind (building one only when none is
        free), after waiting for a free slot if ``max_active`` robots are in an episode; give
        it back with :meth:`checkin`.
        """
        if not self.lend:
            return self.get(kind, image_size)
        key = (kind, image_size)
        evicted = None
        with self._cond:
            self._cond.wait_for(lambda: self.max_active is None or self._active < self.max_active)
            self._active += 1
            free = self._free[key]
            env = free.pop() if free else None
            if env is None and self.max_active is not None and len(self._keys) >= self.max_active:
                evicted = self._evict()  # hold at most max_active environments, whatever kind
        if evicted is not None:
            evicted.close()
        if env is None:
            try:
                env = self._build(key)
            except BaseException:
                self._release_slot()
                raise
        return env

    def _evict(self):
        """Forget a free environment of another kind (called with the lock held)."""
        for envs in self._free.values():
            if envs:
                env = envs.pop()
                del self._keys[id(env)], self._base[id(env)]
                return env
        return None  # unreachable while every active robot holds one environment

    def checkin(self, env) -> None:
        """Take back an environment lent by :meth:`checkout` (its episode is over)."""
        with self._cond:
            self._free[self._keys[id(env)]].append(env)
        self._release_slot()

    def _release_slot(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify()

    def size(self) -> int:
        """Environments built so far."""
        with self._cond:
            return len(self._keys)

    def base(self, env) -> tuple[np.ndarray, np.ndarray]:
        """The unperturbed arm start box and sliding frictions of ``env``."""
        return self._base[id(env)]

    def close(self) -> None:
        with self._cond:
            envs = list(self._envs.values()) + [e for f in self._free.values() for e in f]
            self._envs.clear()
            self._free.clear()
            self._keys.clear()
            self._base.clear()
        for env in envs:
            env.close()


class SimRobot:
    """A simulated robot; one OGBench environment per environment kind, built lazily.

    Args:
        robot_id: name recorded with every step.
        perturbation: this robot's deployment shift.
        image_size: if set, observations carry ``(image_size, image_size, 3)`` uint8 frames
            (needs MuJoCo offscreen rendering, e.g. ``MUJOCO_GL=osmesa``).
        pool: environments shared with other robots of this process (a robot re-applies its own
            perturbation at every reset, so sharing is safe while they run one at a time, or
            concurrently with a lending pool, ``EnvPool(lend=True)``).
    """

    def __init__(
        self,
        robot_id: str,
        perturbation: Perturbation | None = None,
        image_size: int | None = None,
        pool: EnvPool | None = None,
    ) -> None:
        self.robot_id = robot_id
        self.perturbation = perturbation or Perturbation()
        self.image_size = image_size
        self._owns_pool = pool is None
        self._pool = pool or EnvPool()
        self.env = None
        self._borrowed = False  # self.env is lent by the pool for this episode
        self._final: Observation | None = None
        self.task: TaskSpec | None = None
        self.info: dict = {}
        self._raw_ob: np.ndarray | None = None
        self._rng = np.random.default_rng(0)
        self._queue: collections.deque = collections.deque()
        self._tracker: SubtaskTracker | None = None
        self.steps = 0
        self.success = False
        self._done = True

    # -- environment management -------------------------------------------------------------
    def _apply_perturbation(self, env) -> None:
        base_bounds, base_friction = self._pool.base(env)
        p = self.perturbation
        env._arm_sampling_bounds = np.clip(
            base_bounds + np.asarray(p.start_offset),
            env._workspace_bounds[0],
            env._workspace_bounds[1],
        )
        env._model.geom_friction[:, 0] = base_friction * p.friction_scale

    def _task_info(self, task: TaskSpec) -> dict:
        info = task.ogbench_task_info()
        if task.env_kind == "scene" and any(self.perturbation.object_offset):
            init: SceneGoal = task.init
            dx, dy = self.perturbation.object_offset
            x, y, z = init.cube_xyz
            info["init"] = replace(init, cube_xyz=(x + dx, y + dy, z)).as_ogbench()
        return info

    # -- Robot protocol ---------------------------------------------------------------------
    def reset(self, task: TaskSpec, seed: int) -> Observation:
        """Start an episode of ``task``; ``seed`` fixes the start pose and all noise."""
        self._give_back()  # an episode abandoned midway
        self.env = self._pool.checkout(task.env_kind, self.image_size)
        self._borrowed, self._final = self._pool.lend, None
        self._apply_perturbation(self.env)
        self.task = task
        self._rng = np.random.default_rng([seed, 104729])
        self._raw_ob, self.info = seeded_reset(
            self.env, seed, options=dict(task_info=self._task_info(task))
        )
        self._queue = collections.deque(
            np.zeros(ACTION_DIM) for _ in range(self.perturbation.action_delay)
        )
        self._tracker = SubtaskTracker(task, self.env)
        self.steps = 0
        self.success = False
        self._done = False
        return self.observe()

    def observe(self) -> Observation:
        if self.task is None:
            raise RuntimeError("call reset(task, seed) before observe()")
        if self._final is not None:  # the episode is over and its environment given back
            return self._final
        image = None
        if self.image_size:
            camera = "front_pixels" if self.task.env_kind == "scene" else "front"
            image = np.ascontiguousarray(self.env.render(camera=camera), dtype=np.uint8)
        state = pack_state(self.task.env_kind, self._raw_ob)
        return Observation(state=state, instruction=self.task.instruction, image=image)

    def act(self, action: np.ndarray) -> StepResult:
        """Execute one action (``(A,)`` in [-1, 1]); perturbations apply here."""
        if self._done:
            raise RuntimeError("episode is over; call reset() before act()")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be {ACTION_DIM} finite numbers, got {action!r}")
        self._queue.append(np.clip(action, -1.0, 1.0))
        executed = self._queue.popleft()
        if self.perturbation.action_noise > 0:
            executed = executed + self._rng.normal(0.0, self.perturbation.action_noise, ACTION_DIM)
        self._raw_ob, _, _, _, self.info = self.env.step(np.clip(executed, -1.0, 1.0))
        self.steps += 1
        self.success = bool(self.env._success)
        self._tracker.update()
        self._done = self.success or self.steps >= self.task.horizon
        if self._done and self._borrowed:
            self._final = self.observe()
            self._give_back()
        return StepResult(
            state=pack_state(self.task.env_kind, self._raw_ob),
            reward=1.0 if self.success else 0.0,
            success=self.success,
            done=self._done,
            progress=self.progress,
        )

    def done(self) -> bool:
        return self._done

    # -- episode facts ----------------------------------------------------------------------
    @property
    def progress(self) -> float:
        """Fraction of the task's subtasks achieved so far (1.0 once the goal is reached)."""
        if self._tracker is None:
            return 0.0
        return 1.0 if self.success else self._tracker.fraction

    @property
    def subtasks_done(self) -> int:
        return 0 if self._tracker is None else self._tracker.count

    @property
    def cycle_time_s(self) -> float:
        return self.steps * CONTROL_DT

    def close(self) -> None:
        """Close the robot's own environments; a shared pool's stay open for the others."""
        if self._owns_pool:
            self._pool.close()
        self._give_back()
        self.env = None

    def _give_back(self) -> None:
        if self._borrowed:
            self._borrowed = False
            self._pool.checkin(self.env)
            self.env = None
