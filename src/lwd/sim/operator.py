"""The scripted operator: demonstrator, player, weak scripted policy and intervening human.

It looks at the simulator's true state (as a person watching the robot would) and drives the arm
through OGBench's oracles (:mod:`lwd.sim.skills`). Roles:

- ``demonstrator``: solves the task closed-loop with small action noise (SFT data);
- ``player``: chains random primitives with large noise (play data, never successful);
- ``weak``: a deliberately poor policy, distracted by random primitives, very noisy
  (successful and failed "rollouts" for the offline buffer);
- intervention (any role): :meth:`wants_control` says when to take over from a robot that made no
  progress for a while (or whose critic value dropped), and when to hand back after recovery.

Usage loop for interventions::

    if operator.wants_control(obs, value):
        action = operator.act(obs)           # recorded as Source.INTERVENTION
    else:
        action = next action of the policy   # Source.AUTONOMOUS
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lwd.sim.robot import SimRobot
from lwd.sim.skills import SkillRunner, plan, random_primitive
from lwd.types import Observation

ROLES = ("demonstrator", "player", "weak")
STUCK_STEPS = 30  # a skill whose arm moved less than STUCK_DISTANCE in this many steps is stuck
STUCK_DISTANCE = 0.01  # metres
RETREAT_STEPS = 6


@dataclass(frozen=True)
class OperatorConfig:
    """How the scripted operator behaves."""

    demo_noise: float = 0.05
    """Std of Gaussian noise on demonstrator actions (normalised units)."""
    play_noise: float = 0.3
    """Std of noise on player actions."""
    weak_noise: float = 0.35
    """Std of noise on the weak scripted policy's actions."""
    weak_distraction: float = 0.35
    """Probability that the weak policy's next primitive is a random one."""
    patience: int = 100
    """Steps without a newly completed subtask before the intervening operator takes over."""
    value_threshold: float = -1.0
    """Take over when the critic's value falls below this (disabled when negative)."""
    max_takeover: int = 150
    """Hand control back after this many steps even if no subtask completed."""
    budget: int = 3000
    """Intervention steps one robot's operator may spend in total (a person's attention)."""


class ScriptedOperator:
    """Scripted operator for one :class:`SimRobot`.

    Args:
        robot: the robot it watches and, when in control, drives.
        role: one of :data:`ROLES`.
        cfg: behaviour parameters.
        seed: seeds the operator's own randomness (noise, distractions, play targets).
    """

    def __init__(
        self,
        robot: SimRobot,
        role: str = "demonstrator",
        cfg: OperatorConfig | None = None,
        seed: int = 0,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown operator role {role!r}; expected one of {ROLES}")
        self.robot = robot
        self.role = role
        self.cfg = cfg or OperatorConfig()
        self._rng = np.random.default_rng([seed, 31])
        self._skill: SkillRunner | None = None
        self.budget_left = self.cfg.budget
        self.reset_episode()

    def reset_episode(self, seed: int | None = None) -> None:
        """Forget the current skill and intervention state; call after ``robot.reset``."""
        if seed is not None:
            self._rng = np.random.default_rng([seed, 31])
        # OGBench's oracles draw their retreat poses from numpy's global generator; seeding it
        # here is the only way to make scripted episodes reproducible.
        np.random.seed(int(self._rng.integers(2**31)))
        self._skill = None
        self._trail: list[np.ndarray] = []
        self._retreat = 0
        self.in_control = False
        self._last_progress = 0
        self._last_progress_step = 0
        self._takeover_step = 0
        self._takeover_progress = 0

    # -- acting ----------------------------------------------------------------------------
    def act(self, obs: Observation | None = None) -> np.ndarray:
        """The operator's action ``(5,)`` for the robot's current state."""
        env = self.robot.env
        info = env.compute_ob_info()
        if self._retreat > 0:
            return self._retreat_action()
        if self._stuck(info["proprio/effector_pos"]):
            return self._retreat_action()
        if self._skill is None or self._skill.done:
            self._skill = self._next_skill()
        if self._skill is None:  # goal reached: hold still
            return np.zeros(5)
        action = self._skill.act(info)
        noise = {
            "demonstrator": self.cfg.demo_noise,
            "player": self.cfg.play_noise,
            "weak": self.cfg.weak_noise,
        }[self.role]
        if self.in_control:
            noise = self.cfg.demo_noise
        action = action + self._rng.normal(0.0, noise, 5)
        return np.clip(action, -1.0, 1.0)

    def _stuck(self, effector: np.ndarray) -> bool:
        """True when the arm barely moved for ``STUCK_STEPS`` steps (e.g. caught on a handle)."""
        self._trail.append(np.asarray(effector, dtype=np.float64).copy())
        if len(self._trail) <= STUCK_STEPS or self._skill is None:
            return False
        moved = np.linalg.norm(self._trail[-1] - self._trail[-1 - STUCK_STEPS])
        self._trail = self._trail[-STUCK_STEPS - 1 :]
        if moved < STUCK_DISTANCE:
            self._retreat, self._skill, self._trail = RETREAT_STEPS, None, []
            return True
        return False

    def _retreat_action(self) -> np.ndarray:
        """Lift and open the gripper with a random sideways nudge, then replan."""
        self._retreat -= 1
        xy = self._rng.uniform(-0.5, 0.5, 2)
        return np.array([xy[0], xy[1], 1.0, 0.0, -1.0])

    def _next_skill(self) -> SkillRunner | None:
        robot, env = self.robot, self.robot.env
        kind = robot.task.env_kind
        explore = self.role == "player" or (
            self.role == "weak"
            and not self.in_control
            and self._rng.uniform() < self.cfg.weak_distraction
        )
        primitive = random_primitive(kind, env, self._rng) if explore else plan(robot.task, env)
        if primitive is None:
            return None
        return SkillRunner(env, primitive, kind)

    # -- intervening -----------------------------------------------------------------------
    def wants_control(self, obs: Observation | None = None, value: float | None = None) -> bool:
        """Should the operator be in control for the robot's next step?

        Takes over when no subtask was completed for ``patience`` steps, or the critic's
        ``value`` fell below ``value_threshold``; hands back once a subtask was completed (the
        robot is back on track) or after ``max_takeover`` steps; never exceeds the budget.
        """
        robot = self.robot
        step, progress = robot.steps, robot.subtasks_done
        if progress > self._last_progress:
            self._last_progress, self._last_progress_step = progress, step
        if self.in_control:
            recovered = progress > self._takeover_progress
            if (
                recovered
                or step - self._takeover_step >= self.cfg.max_takeover
                or self.budget_left <= 0
            ):
                self.in_control = False
                self._last_progress_step = step  # give the robot a fresh chance
            else:
                self.budget_left -= 1
            return self.in_control
        stalled = step - self._last_progress_step >= self.cfg.patience
        low_value = (
            value is not None and self.cfg.value_threshold >= 0 and value < self.cfg.value_threshold
        )
        if (stalled or low_value) and self.budget_left > 0:
            self.in_control = True
            self._skill = None
            self._takeover_step, self._takeover_progress = step, progress
            self.budget_left -= 1
        return self.in_control
