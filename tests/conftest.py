"""Shared test fixtures: small, valid, random episodes."""

from __future__ import annotations

import dataclasses
import os
import uuid

# The test session is an entry point: offline model loading and offscreen rendering, set before
# any library reads them.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import numpy as np
import pytest

from lwd.config import PolicyConfig
from lwd.sim.layout import ACTION_DIM, STATE_DIM
from lwd.types import SCRIPTED_VERSION, Episode, Source

TINY_POLICY = PolicyConfig(
    state_dim=4, action_dim=2, chunk=2, flow_steps=3, width=16, depth=2, lang_dim=8
)


def make_tiny_policy(seed: int = 0):
    """A seeded :data:`TINY_POLICY` flow policy with fitted (random) normalisation statistics."""
    import torch

    from lwd.policy.flow import FlowPolicy
    from lwd.policy.normalizer import Normalizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    norm = Normalizer(4, 2).fit(rng.normal(size=(50, 4)), rng.uniform(-1, 1, (50, 2)))
    return FlowPolicy(TINY_POLICY, norm)


def make_episode(
    num_steps: int = 8,
    *,
    seed: int = 0,
    task: str = "open-drawer",
    robot_id: str = "robot-0",
    source: Source = Source.AUTONOMOUS,
    success: bool = False,
    policy_version: int = 1,
    images: tuple[int, int] | None = None,
    **overrides: object,
) -> Episode:
    """A valid random episode with ``num_steps`` steps, every step from ``source``.

    Args:
        num_steps: ``T``.
        seed: seeds the arrays (and the episode id, so equal arguments give equal episodes).
        task: task name.
        robot_id: robot name.
        source: the source of every step; demo and play steps get the scripted version and
            proposals equal to the actions.
        success: outcome; a success gets reward 1 on its final step.
        policy_version: version for autonomous and intervention steps.
        images: ``(h, w)`` to attach random ``(T+1, h, w, 3)`` uint8 frames.
        **overrides: any Episode field, replaced after construction (may make it invalid).

    Returns:
        The episode.
    """
    rng = np.random.default_rng(seed)
    t = num_steps
    actions = rng.uniform(-1.0, 1.0, (t, ACTION_DIM)).astype(np.float32)
    scripted = source in (Source.DEMO, Source.PLAY)
    proposals = actions.copy() if scripted else rng.uniform(-1, 1, actions.shape).astype(np.float32)
    rewards = np.zeros(t, dtype=np.float32)
    if success:
        rewards[-1] = 1.0
    version = SCRIPTED_VERSION if scripted else policy_version
    ep = Episode(
        episode_id=uuid.UUID(bytes=rng.bytes(16)).hex,
        robot_id=robot_id,
        task=task,
        instruction=f"please {task.replace('-', ' ')}",
        states=rng.normal(size=(t + 1, STATE_DIM)).astype(np.float32),
        actions=actions,
        proposals=proposals,
        rewards=rewards,
        sources=np.full(t, source, dtype=np.uint8),
        policy_versions=np.full(t, version, dtype=np.int32),
        success=success,
        terminated=success,
        progress=1.0 if success else float(rng.uniform(0.0, 0.9)),
        cycle_time_s=0.05 * t,
        images=None if images is None else rng.integers(0, 256, (t + 1, *images, 3), np.uint8),
        created_at=1_700_000_000.0 + seed,
    )
    return dataclasses.replace(ep, **overrides) if overrides else ep


def assert_same_episode(a: Episode, b: Episode) -> None:
    """Every field equal; arrays equal in dtype, shape and every bit."""
    for f in dataclasses.fields(Episode):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray), f.name
            assert (x.dtype, x.shape) == (y.dtype, y.shape), f.name
            assert x.tobytes() == y.tobytes(), f.name
        else:
            assert x == y and type(x) is type(y), f.name


@pytest.fixture(name="make_episode")
def _make_episode_fixture():
    """The :func:`make_episode` factory, for tests that prefer fixtures to imports."""
    return make_episode
