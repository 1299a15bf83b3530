"""RECAP (π*0.6 style): advantage-conditioned flow BC, the third online baseline (ALGORITHMS.md §5).

Pure functions. One round of the learner (``lwd.learner.recap``) uses them in this order::

    G = monte_carlo_returns(rewards, lengths, gamma)                    # per step, once per episode
    L_V = mc_value_loss(V(s_t), G[t], support)                          # value on MC returns
    A = n_step_advantage(r, discount, E[V(s')], E[V(s)])                # or monte_carlo_advantage
    eps = task_thresholds(A, task, forced, good_fraction)               # per-task percentile
    I = label_indicators(A, task, eps, forced)                          # BAD / GOOD per step
    L_pi = indicator_flow_loss(field, s, l, a, I, drop_prob=0.3, ...)   # CFG dropout to UNKNOWN

The returns and labels work on numpy arrays over the whole dataset (they run once per round);
the losses work on torch batches. Indicators are rows of
:data:`lwd.nets.velocity.INDICATORS` (``UNKNOWN``, ``BAD``, ``GOOD``).
"""

from __future__ import annotations

import numpy as np
import torch

from lwd.algo.divl import c51_project, categorical_value_loss
from lwd.algo.flow_bc import VelocityFn, flow_matching_loss
from lwd.nets.velocity import BAD, GOOD, UNKNOWN


def monte_carlo_returns(rewards: np.ndarray, lengths: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted return to the end of its episode for every step of concatenated episodes.

    ``G_t = sum_{k=t}^{T-1} gamma^(k-t) r_k`` within the episode of step ``t``; nothing crosses
    an episode end (every end is terminal, as in the replay buffer). Only non-zero rewards cost
    work, so the sparse success reward is cheap on long episodes.

    Args:
        rewards: ``(N,)`` per-step rewards, episodes back to back.
        lengths: ``(E,)`` steps per episode, summing to ``N``.
        gamma: per-control-step discount in ``[0, 1]``.

    Returns:
        ``(N,)`` float32 returns.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.sum() != rewards.shape[0] or (lengths < 0).any():
        raise ValueError(
            f"episode lengths sum to {int(lengths.sum())} but there are {rewards.shape[0]} "
            "rewards; pass one non-negative length per episode, in the rewards' order"
        )
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma is a per-step discount and must be in [0, 1], got {gamma}")
    starts = np.cumsum(lengths) - lengths
    episode = np.repeat(np.arange(len(lengths)), lengths)
    out = np.zeros_like(rewards)
    for k in np.flatnonzero(rewards):
        first = starts[episode[k]]
        out[first : k + 1] += rewards[k] * gamma ** np.arange(k - first, -1, -1, dtype=np.float64)
    return out.astype(np.float32)


def expected_value(logits: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Mean of the categorical value distribution: ``softmax(logits) @ support``, ``(B,)``."""
    return torch.softmax(logits, dim=-1) @ support.to(logits.dtype)


def mc_value_loss(
    logits: torch.Tensor, returns: torch.Tensor, support: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Distributional value on Monte-Carlo returns: C51-project ``G``, then cross-entropy.

    Args:
        logits: ``(B, K)`` value logits ``V(s_t)``.
        returns: ``(B,)`` Monte-Carlo returns ``G_t`` (clipped to the support).
        support: ``(K,)`` atoms (DIVL's :func:`~lwd.algo.divl.value_support`).

    Returns:
        ``(loss, metrics)`` with ``value/loss``, ``value/mean`` and ``value/return_mean``.
    """
    target = c51_project(returns.to(logits.dtype), support.to(logits.dtype))
    loss = categorical_value_loss(logits, target)
    metrics = {
        "value/loss": loss.detach(),
        "value/mean": expected_value(logits.detach(), support).mean(),
        "value/return_mean": returns.mean(),
    }
    return loss, metrics


def monte_carlo_advantage(returns: np.ndarray, value: np.ndarray) -> np.ndarray:
    """``A_t = G_t - V(s_t)``, ``(N,)`` each."""
    return np.asarray(returns, np.float32) - np.asarray(value, np.float32)


def n_step_advantage(
    reward: np.ndarray, discount: np.ndarray, next_value: np.ndarray, value: np.ndarray
) -> np.ndarray:
    """``A_t = r_t + discount_t V(s_{t+nH}) - V(s_t)``, ``(N,)`` each.

    ``reward`` and ``discount`` are the replay buffer's n-chunk sums (``discount`` is 0 where
    the episode ends inside the window, so the return is then exact).
    """
    reward, discount = np.asarray(reward, np.float32), np.asarray(discount, np.float32)
    return reward + discount * np.asarray(next_value, np.float32) - np.asarray(value, np.float32)


def task_thresholds(
    advantage: np.ndarray, task: np.ndarray, forced_good: np.ndarray, good_fraction: float
) -> np.ndarray:
    """Per-task threshold ``eps``: the ``1 - good_fraction`` quantile of the task's advantages.

    Steps forced good (interventions) are left out, so about ``good_fraction`` of each task's
    *other* steps end up above the threshold. A task with no such step gets ``+inf``.

    Args:
        advantage: ``(N,)`` per-step advantages.
        task: ``(N,)`` int task index in ``[0, num_tasks)``.
        forced_good: ``(N,)`` bool.
        good_fraction: in ``[0, 1]``.

    Returns:
        ``(num_tasks,)`` float32, ``num_tasks = task.max() + 1``.
    """
    if not 0.0 <= good_fraction <= 1.0:
        raise ValueError(f"good_fraction must be in [0, 1], got {good_fraction}")
    advantage, task = np.asarray(advantage, np.float64), np.asarray(task, np.int64)
    num_tasks = int(task.max()) + 1 if task.size else 0
    out = np.full(num_tasks, np.inf)
    free = ~np.asarray(forced_good, bool)
    for j in range(num_tasks):
        values = advantage[free & (task == j)]
        if values.size:
            out[j] = np.quantile(values, 1.0 - good_fraction)
    return out.astype(np.float32)


def label_indicators(
    advantage: np.ndarray, task: np.ndarray, thresholds: np.ndarray, forced_good: np.ndarray
) -> np.ndarray:
    """``GOOD`` where ``A > eps[task]`` or the step is forced good, else ``BAD``: ``(N,)`` int64."""
    advantage = np.asarray(advantage, np.float32)
    eps = np.asarray(thresholds, np.float32)[np.asarray(task, np.int64)]
    good = (advantage > eps) | np.asarray(forced_good, bool)
    return np.where(good, GOOD, BAD).astype(np.int64)


def drop_indicators(
    indicator: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Classifier-free-guidance dropout: each label becomes ``UNKNOWN`` with ``drop_prob``."""
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must be in [0, 1], got {drop_prob}")
    u = torch.rand(indicator.shape, generator=generator, device=indicator.device)
    return torch.where(u < drop_prob, torch.full_like(indicator, UNKNOWN), indicator)


def indicator_flow_loss(
    field: VelocityFn,
    state_n: torch.Tensor,
    lang: torch.Tensor,
    actions: torch.Tensor,
    indicator: torch.Tensor,
    image: torch.Tensor | None = None,
    valid_mask: torch.Tensor | None = None,
    *,
    drop_prob: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flow-matching BC conditioned on the (CFG-dropped) advantage indicator.

    Args:
        field: a velocity field taking ``indicator=`` (a ``VelocityField`` built with
            ``PolicyConfig.indicator``).
        state_n: ``(B, D)`` normalised states.
        lang: ``(B, L)`` instruction embeddings.
        actions: ``(B, H, A)`` dataset chunks in the policy's action space.
        indicator: ``(B,)`` int64 ``BAD`` / ``GOOD`` labels of the chunks.
        image: ``(B, h, w, 3)`` uint8 frames, or None.
        valid_mask: ``(B, H)`` False past an episode's end.
        drop_prob: chance that a label is replaced by ``UNKNOWN`` (π*0.6: about 0.3).
        generator: torch RNG for the dropout, the noise and the flow times.

    Returns:
        ``(loss, metrics)``: flow BC's ``bc/*`` plus ``recap/good_frac`` and
        ``recap/dropped_frac`` of the batch.
    """
    shown = drop_indicators(indicator, drop_prob, generator)

    def conditioned(s, lng, x, w, img):
        return field(s, lng, x, w, img, indicator=shown)

    loss, metrics = flow_matching_loss(
        conditioned, state_n, lang, actions, image, valid_mask, generator=generator
    )
    metrics["recap/good_frac"] = (indicator == GOOD).float().mean()
    metrics["recap/dropped_frac"] = (shown == UNKNOWN).float().mean()
    return loss, metrics
