"""Reset an OGBench manipulation environment so that the episode depends on its seed alone.

OGBench's task-mode ``reset`` first poses the goal scene and takes two steps with
``self.action_space.sample()`` to settle it, then restores positions and velocities but keeps
those steps' controls and the solver's warm start. ``action_space`` is a property that builds a
new, unseeded ``Box`` on every access, so ``env.reset(seed=s)`` left each episode's first steps
(and, through chaotic contacts, sometimes its outcome) different from one process to the next,
and ``env.action_space.seed(s)`` had no effect. :func:`seeded_reset` gives the environment one
``Box`` for good and seeds it with the episode's seed::

    ob, info = seeded_reset(env, seed, options=dict(task_id=2))
"""

from __future__ import annotations

import gymnasium as gym

_PINNED = "_lwd_action_space"


def _pin_action_space(raw) -> gym.spaces.Space:
    """The raw env's action space as one object (its class is swapped for a subclass whose
    ``action_space`` returns it); idempotent."""
    if not hasattr(raw, _PINNED):
        space = raw.action_space
        cls = type(raw)
        pinned = type(cls.__name__, (cls,), {"action_space": property(lambda self: space)})
        raw.__class__ = pinned
        setattr(raw, _PINNED, space)
    return getattr(raw, _PINNED)


def seeded_reset(env, seed: int, options: dict | None = None):
    """``env.reset(seed=seed, options=options)`` with OGBench's settle steps drawn from ``seed``
    too; ``env`` may be wrapped. Returns what ``reset`` returns."""
    _pin_action_space(env.unwrapped).seed(int(seed))
    return env.reset(seed=int(seed), options=options)
