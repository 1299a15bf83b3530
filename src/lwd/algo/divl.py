"""DIVL: distributional implicit value learning (ALGORITHMS.md §2), and its IQL ablation.

Pure functions on tensors. One learner update uses them in this order::

    m = c51_project(min_heads(Q_target(s, a)), support)          # value label, on dataset a
    L_V = categorical_value_loss(V(s), m)                          # step V
    p = softmax(V(s'))                                             # with the *updated* V
    tau = adaptive_tau(normalized_entropy(p), ...)                 # stop-gradient
    y = td_target(r, discount, quantile_readout(p, support, tau))  # critic target
    L_Q = critic_loss(Q(s, a), y)                                  # step Q, then EMA

The expectile ablation replaces the categorical value by a scalar one trained with
:func:`expectile_loss` and bootstraps from ``V(s')`` directly.
"""

from __future__ import annotations

import math

import torch


def value_support(num_atoms: int, v_min: float, v_max: float) -> torch.Tensor:
    """``(K,)`` atoms uniformly spaced on ``[v_min, v_max]``."""
    if num_atoms < 2 or not v_max > v_min:
        raise ValueError(
            f"need at least 2 atoms on a non-empty range, got {num_atoms} on [{v_min}, {v_max}]"
        )
    return torch.linspace(v_min, v_max, num_atoms)


def c51_project(y: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Split each scalar label linearly onto its two neighbouring atoms (C51 projection).

    Args:
        y: ``(B,)`` labels; clipped to the support's range first.
        support: ``(K,)`` uniformly spaced atoms.

    Returns:
        ``(B, K)`` target distribution; each row sums to 1 and has mean ``clip(y)``.
    """
    k = support.shape[0]
    v_min, v_max = float(support[0]), float(support[-1])
    pos = (y.clamp(v_min, v_max) - v_min) / ((v_max - v_min) / (k - 1))  # in [0, K-1]
    lower = pos.floor().clamp(max=k - 2).long()
    upper_w = pos - lower.to(pos.dtype)  # mass on the upper atom
    m = torch.zeros(y.shape[0], k, dtype=y.dtype, device=y.device)
    m.scatter_(1, lower[:, None], (1.0 - upper_w)[:, None])
    m.scatter_add_(1, (lower + 1)[:, None], upper_w[:, None])
    return m


def categorical_value_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``-sum_i m_i log softmax(logits)_i``, averaged over the batch.

    Args:
        logits: ``(B, K)``.
        target: ``(B, K)`` target distribution (no gradient flows into it).
    """
    return -(target.detach() * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def normalized_entropy(probs: torch.Tensor) -> torch.Tensor:
    """``-(1 / log K) sum_i p_i log p_i`` in ``[0, 1]``: ``(B, K) -> (B,)``."""
    k = probs.shape[-1]
    plogp = torch.where(probs > 0, probs * probs.clamp_min(1e-30).log(), torch.zeros_like(probs))
    return -plogp.sum(-1) / math.log(k)


def adaptive_tau(
    entropy: torch.Tensor, base: float, alpha: float, tau_min: float, tau_max: float
) -> torch.Tensor:
    """``clip(base - alpha * entropy, tau_min, tau_max)``, no gradient: ``(B,) -> (B,)``."""
    return (base - alpha * entropy.detach()).clamp(tau_min, tau_max)


def quantile_readout(probs: torch.Tensor, support: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """The atom where the CDF of ``probs`` first reaches ``tau``.

    Args:
        probs: ``(B, K)`` distributions.
        support: ``(K,)`` atoms.
        tau: ``(B,)`` quantile levels in ``(0, 1]``.

    Returns:
        ``(B,)`` ``support[j]`` with ``j = min{j : sum_{i<=j} p_i >= tau}`` (the last atom if
        rounding keeps the CDF below ``tau``).
    """
    cdf = probs.cumsum(-1)
    reached = cdf >= (tau[:, None] - 1e-6)  # tolerate float rounding of the cumulative sum
    j = torch.where(reached.any(-1), reached.float().argmax(-1), probs.shape[-1] - 1)
    return support.to(probs.dtype)[j]


def td_target(
    reward: torch.Tensor, discount: torch.Tensor, bootstrap: torch.Tensor
) -> torch.Tensor:
    """``y = R + discount * bootstrap`` (``discount`` is 0 where the episode ended)."""
    return reward + discount * bootstrap


def critic_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over heads and batch of (Q - y)^2``: ``q`` ``(E, B)``, ``target`` ``(B,)``."""
    return (q - target.detach()[None, :]).square().mean()


def expectile_loss(value: torch.Tensor, target: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric L2: ``|e - 1(y < V)| (y - V)^2``, averaged: ``(B,), (B,) -> ()``."""
    diff = target.detach() - value
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.square()).mean()
