"""QAM: Q-learning with adjoint matching (ALGORITHMS.md §3), as pure functions.

The fine-tuned flow ``f_theta`` is pulled towards ``pi*(a|s) ~ pi_ref(a|s) exp(Q(s, a) / lambda)``
by regressing it onto the reference flow plus an adjoint correction::

    xs = memoryless_rollout(f_theta, x0, K)                 # K+1 states, no gradient
    g_K = -(1/lambda) dQ_target(s, clip(x_K)) / dx_K        # terminal adjoint
    gs = lean_adjoint(vjp of f_ref at (x_i, t_i + h), g_K, K)  # backwards, f_ref only
    L = adjoint_matching_loss(f_theta(xs), f_ref(xs), gs, sigmas)

Flow time ``w`` runs from 0 (noise) to 1 (data) in ``K`` Euler steps of ``h = 1 / K``; step ``i``
starts at ``t_i = i h``. Velocity callables take ``(x (N, X), t)`` with ``t`` a float or an
``(N,)`` tensor, and close over the (already encoded) observation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Velocity = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]
FieldVJP = Callable[[int, torch.Tensor], torch.Tensor]


def memoryless_sigma(w: torch.Tensor | float, h: float = 0.0) -> torch.Tensor | float:
    """``sigma(w) = sqrt(2 (1 - w + h) / (w + h))``; ``h = 1 / K`` keeps it finite at ``w = 0``.

    With ``h = 0`` this is the exact memoryless schedule of the rectified path: the SDE
    ``dx = (2 f - x / w) dw + sigma dB`` has the marginals of the ODE ``dx = f dw``.
    (The LWD paper prints ``sqrt(2 (1 - w) w)``; that is a typo, see ALGORITHMS.md.)
    """
    if isinstance(w, torch.Tensor):
        return torch.sqrt(2.0 * (1.0 - w + h) / (w + h))
    return math.sqrt(2.0 * (1.0 - w + h) / (w + h))


def memoryless_rollout(
    velocity: Velocity,
    x0: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    last_velocity: Velocity | None = None,
) -> list[torch.Tensor]:
    """Euler-Maruyama integration of the memoryless SDE; the last step is the plain ODE.

    For ``i < K - 1``: ``x <- x + h (2 f(x, t_i) - x / (t_i + h)) + sqrt(h) sigma(t_i) eps``;
    step ``K - 1``: ``x <- x + h f(x, t_{K-1})`` (deterministic, as in Adjoint Matching).

    Args:
        velocity: the field to roll out.
        x0: ``(B, X)`` noise.
        steps: ``K``.
        generator: RNG for ``eps``.
        last_velocity: field for the final ODE step (default: ``velocity``).

    Returns:
        ``K + 1`` tensors ``x_0 .. x_K`` of shape ``(B, X)``, without gradient. The chain is
        never differentiated; a ``velocity`` that keeps its own graph (to reuse its outputs in
        the loss) may do so, since its outputs are detached here.
    """
    h = 1.0 / steps
    x = x0.detach()
    xs = [x]
    for i in range(steps):
        t = i * h
        if i < steps - 1:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            drift = 2.0 * velocity(x, t).detach() - x / (t + h)
            x = x + h * drift + math.sqrt(h) * memoryless_sigma(t, h) * eps
        else:
            x = x + h * (last_velocity or velocity)(x, t).detach()
        xs.append(x)
    return xs


def lean_adjoint(field_vjp: FieldVJP, terminal: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrate the lean adjoint backwards through the *reference* field only.

    ``g_K = terminal``; for ``i = K-1 .. 0``:
    ``g_i = g_{i+1} + h * VJP_x[2 f_ref(x_i, t_i + h) - x_i / (t_i + h)](g_{i+1})``
    ``= g_{i+1} + h * (2 field_vjp(i, g_{i+1}) - g_{i+1} / (t_i + h))``.
    Nothing is differentiated through the sampling chain or the fine-tuned field.

    Args:
        field_vjp: ``(i, g) -> g^T df_ref/dx`` at ``(x_i, t_i + h)``; see :func:`autograd_vjp`
            (any field) and :meth:`lwd.nets.velocity.VelocityField.linearize` (batched).
        terminal: ``(B, X)`` terminal adjoint ``g_K``.
        steps: ``K``.

    Returns:
        ``(K, B, X)``: ``g_i`` for ``i = 0 .. K-1`` (``g_i`` pairs with ``x_i`` in the loss).
    """
    h = 1.0 / steps
    g = terminal.detach()
    out = [None] * steps
    for i in reversed(range(steps)):
        t = i * h
        g = g + h * (2.0 * field_vjp(i, g) - g / (t + h))
        out[i] = g
    return torch.stack(out)


def autograd_vjp(field: Velocity, xs, times) -> FieldVJP:
    """``(i, g) -> g^T df/dx`` at ``(xs[i], times[i])`` by autograd, one call per step.

    The generic ``field_vjp`` for :func:`lean_adjoint` (there: ``times[i] = t_i + h``); works
    for any field differentiable in ``x``.
    """

    def field_vjp(i: int, g: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = xs[i].detach().requires_grad_(True)
            (vjp,) = torch.autograd.grad(field(x, times[i]), x, grad_outputs=g)
        return vjp

    return field_vjp


def adjoint_matching_loss(
    v_finetuned: torch.Tensor,
    v_reference: torch.Tensor,
    adjoints: torch.Tensor,
    sigmas: torch.Tensor,
) -> torch.Tensor:
    """``mean_b sum_i || 2 (f_theta - f_ref) / sigma_i + sigma_i g_i ||^2``.

    Zero exactly when ``f_theta = f_ref - sigma_i^2 g_i / 2`` at every step (its fixed point).

    Args:
        v_finetuned: ``(K, B, X)`` fine-tuned velocities at ``(x_i, t_i)`` (with gradient).
        v_reference: ``(K, B, X)`` reference velocities at ``(x_i, t_i)``.
        adjoints: ``(K, B, X)`` lean adjoints ``g_i``.
        sigmas: ``(K,)`` ``sigma(t_i)``.
    """
    s = sigmas.to(v_finetuned.dtype)[:, None, None]
    residual = 2.0 * (v_finetuned - v_reference.detach()) / s + s * adjoints.detach()
    return residual.square().sum(-1).sum(0).mean()


def terminal_adjoint(
    q_fn: Callable[[torch.Tensor], torch.Tensor], x_final: torch.Tensor, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``g_K = -(1 / lambda) dQ/dx_K`` for every sample, and the Q values.

    Args:
        q_fn: ``(B, X)`` flow output -> ``(B,)`` critic value (it clips and denormalises the
            action itself, so the gradient includes those maps).
        x_final: ``(B, X)`` the rollout's last state.
        lam: temperature ``lambda > 0``.

    Returns:
        ``(g_K (B, X), q (B,))``, both without gradient.
    """
    with torch.enable_grad():
        x = x_final.detach().requires_grad_(True)
        q = q_fn(x)
        (grad,) = torch.autograd.grad(q.sum(), x)
    return -grad / lam, q.detach()
