"""Action-chunk windows over one episode: the targets a chunked policy is trained on.

The policy emits ``H`` actions at a time, so every step ``t`` of an episode yields the chunk of
actions ``t .. t+H-1``. Near the end of the episode that window runs past the last action; the
missing positions repeat the last action (a hold, which is what a robot does after the episode
ends) and are marked invalid so losses can mask them out.

Example (``T = 3``, ``H = 2``, one action dimension)::

    actions = [[a0], [a1], [a2]]
    chunks  = [[[a0], [a1]],        valid = [[True, True],
               [[a1], [a2]],                 [True, True],
               [[a2], [a2]]]                 [True, False]]
"""

from __future__ import annotations

import numpy as np


def chunk_indices(num_steps: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Which action each chunk position takes, and whether it lies inside the episode.

    Args:
        num_steps: ``T >= 0``, the number of actions in the episode.
        horizon: ``H >= 1``, the chunk length.

    Returns:
        ``index``: ``(T, H)`` int64, ``min(t + h, T - 1)``;
        ``valid``: ``(T, H)`` bool, ``t + h < T``.
    """
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")
    if horizon < 1:
        raise ValueError(f"chunk horizon H must be >= 1, got {horizon}")
    raw = np.arange(num_steps)[:, None] + np.arange(horizon)[None, :]
    valid = raw < num_steps
    return np.minimum(raw, max(num_steps - 1, 0)), valid


def chunk_windows(actions: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Every length-``H`` window of actions, starting at each step, padded at the end.

    Args:
        actions: ``(T, A)`` actions of one episode, any dtype.
        horizon: ``H >= 1``, the chunk length.

    Returns:
        ``chunks``: ``(T, H, A)``, same dtype as ``actions``; ``chunks[t, h] = actions[t + h]``
        where ``t + h < T``, else ``actions[T - 1]``.
        ``valid``: ``(T, H)`` bool; True exactly where ``t + h < T``.
    """
    actions = np.asarray(actions)
    if actions.ndim != 2:
        raise ValueError(f"actions must be (T, A), got shape {actions.shape}")
    index, valid = chunk_indices(actions.shape[0], horizon)
    return actions[index], valid
