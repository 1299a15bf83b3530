"""Core value types shared by every part of lwd.

These are plain frozen dataclasses: they hold data and document shapes, never logic beyond
trivial derived properties. ``T`` is the number of control steps in an episode, ``D`` the
state dimension (see :mod:`lwd.sim.layout`), ``A`` the action dimension (5 for the UR5e),
``H`` the action-chunk length.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import torch

#: Policy version recorded for steps that no learned policy produced (scripted demonstrator,
#: player, or a data generator's weak scripted policy). Learned versions start at 1.
SCRIPTED_VERSION = 0


class Source(enum.IntEnum):
    """Who chose the executed action of a step."""

    DEMO = 0  #: a demonstrator (human teleop, or the scripted operator) did the whole episode
    AUTONOMOUS = 1  #: the deployed policy acted on its own
    INTERVENTION = 2  #: a human (or the scripted operator) took over from the policy
    PLAY = 3  #: deliberate exploration; the episode always counts as unsuccessful

    @classmethod
    def parse(cls, name: str) -> Source:
        try:
            return cls[name.upper()]
        except KeyError:
            known = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown source {name!r}; expected one of: {known}") from None


@dataclass(frozen=True)
class Episode:
    """One whole episode, as a robot records it and the store keeps it.

    Attributes:
        episode_id: unique id (a UUID hex string); the store deduplicates on ``content_hash``.
        robot_id: the robot that ran it.
        task: task name from the suite (e.g. ``"open-drawer"``).
        instruction: the natural-language instruction the policy was given.
        states: ``(T+1, D)`` float32; row ``t`` is the observation before action ``t``; the last
            row is the observation after the final action.
        actions: ``(T, A)`` float32 in ``[-1, 1]``; the executed actions.
        proposals: ``(T, A)`` float32; the policy's own proposal at each step (equal to
            ``actions`` where no learned policy was asked, e.g. demos and play).
        rewards: ``(T,)`` float32; sparse: 1 on the final step of a successful episode, else 0.
        sources: ``(T,)`` uint8 values of :class:`Source`.
        policy_versions: ``(T,)`` int32; the policy version acting at each step
            (:data:`SCRIPTED_VERSION` for scripted actors).
        success: the episode reached its goal (always False for play).
        terminated: the episode ended because the goal was reached (not by the time limit).
        progress: fraction of the task's subtasks completed, in ``[0, 1]``; evaluation only.
        cycle_time_s: simulated (or wall) seconds from reset to the end of the episode.
        images: optional ``(T+1, h, w, 3)`` uint8 camera frames aligned with ``states``.
        created_at: unix time at which the robot finished the episode.
    """

    episode_id: str
    robot_id: str
    task: str
    instruction: str
    states: np.ndarray
    actions: np.ndarray
    proposals: np.ndarray
    rewards: np.ndarray
    sources: np.ndarray
    policy_versions: np.ndarray
    success: bool
    terminated: bool
    progress: float
    cycle_time_s: float
    images: np.ndarray | None = None
    created_at: float = 0.0

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])


@dataclass(frozen=True)
class StepResult:
    """What a robot reports after one control step."""

    state: np.ndarray  #: ``(D,)`` float32 observation after the action
    reward: float  #: sparse reward of this step (1.0 only on reaching the goal)
    success: bool  #: the goal is reached now
    done: bool  #: the episode is over (goal reached or time limit)
    progress: float  #: fraction of subtasks completed so far


@dataclass(frozen=True)
class Observation:
    """What a policy sees at one decision point.

    Attributes:
        state: ``(D,)`` float32 state vector in the suite layout.
        instruction: the task's natural-language instruction.
        image: optional ``(h, w, 3)`` uint8 camera frame.
    """

    state: np.ndarray
    instruction: str
    image: np.ndarray | None = None


@dataclass(frozen=True)
class ActionChunk:
    """A chunk of actions produced by a policy.

    Attributes:
        actions: ``(H, A)`` float32 in ``[-1, 1]``, executed in order.
        version: the policy version that produced it.
    """

    actions: np.ndarray
    version: int


@dataclass(frozen=True)
class EvalEpisodeResult:
    """The outcome of one evaluation episode (a plain record, JSON-friendly)."""

    task: str
    seed: int
    success: bool
    progress: float
    cycle_time_s: float
    num_steps: int
    extras: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """A batch of n-chunk transitions for the RL learner (torch tensors, one device).

    ``B`` samples; sample ``b`` starts at step ``t`` of some episode and backs up over ``n``
    chunks of ``H`` steps (``n * H`` control steps), truncated where the episode ends.

    Attributes:
        state: ``(B, D)`` float32 raw state ``s_t``.
        lang: ``(B, L)`` float32 embedding of the episode's instruction.
        actions: ``(B, H, A)`` float32 executed actions ``a_{t:t+H}`` in ``[-1, 1]``; past the
            episode's end the last action is repeated (see :mod:`lwd.data.windows`).
        reward: ``(B,)`` float32 ``sum_{k < min(nH, T-t)} gamma^k r_{t+k}``.
        discount: ``(B,)`` float32 bootstrap factor ``gamma^{nH}``, or 0 when the episode ends
            inside the window (``t + nH >= T``): then the return is truncated, no bootstrap.
        next_state: ``(B, D)`` float32 bootstrap state ``s_{t+nH}`` (the episode's last state
            when the window is truncated; it is then multiplied by a zero ``discount``).
        source: ``(B,)`` int64 :class:`Source` of step ``t``.
        policy_version: ``(B,)`` int64 policy version that chose step ``t``.
        episode: ``(B,)`` int64 index of the episode inside its replay buffer.
        step: ``(B,)`` int64 ``t``.
        online: ``(B,)`` bool, True for samples drawn from the online (fleet) buffer.
        image: ``(B, h, w, 3)`` uint8 frame at ``t``, or None.
        next_image: ``(B, h, w, 3)`` uint8 frame at ``t + nH``, or None.
    """

    state: torch.Tensor
    lang: torch.Tensor
    actions: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    next_state: torch.Tensor
    source: torch.Tensor
    policy_version: torch.Tensor
    episode: torch.Tensor
    step: torch.Tensor
    online: torch.Tensor
    image: torch.Tensor | None = None
    next_image: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.state.shape[0])
