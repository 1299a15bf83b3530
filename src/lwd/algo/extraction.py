"""Policy extraction losses: QAM (the method) and two baselines, FQL and advantage-weighted BC.

Each is a pure function ``(...) -> (loss, metrics)`` over velocity fields that expose
``encode_context(state_n, lang, image) -> ctx`` and ``velocity(ctx, x, w)`` (see
:class:`lwd.nets.velocity.VelocityField`), plus ``q_fn``: a map from flow outputs ``(B, X)``
(the policy's normalised action space) to the critic's value ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lwd.algo.flow_bc import flow_matching_loss
from lwd.algo.qam import (
    adjoint_matching_loss,
    lean_adjoint,
    memoryless_rollout,
    memoryless_sigma,
    terminal_adjoint,
)

QFn = Callable[[torch.Tensor], torch.Tensor]


def qam_actor_loss(
    finetuned: nn.Module,
    reference: nn.Module,
    state_n: torch.Tensor,
    lang: torch.Tensor,
    image: torch.Tensor | None,
    q_fn: QFn,
    *,
    lam: float,
    steps: int,
    generator: torch.Generator | None = None,
    rollout: str = "finetuned",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The QAM loss for a batch of observations (ALGORITHMS.md §3, steps 1-5).

    The rollout of ``f_theta`` passes through exactly the points ``(x_i, t_i)`` where the
    regression needs ``f_theta``, so its outputs are kept (with their graph) and reused instead
    of evaluating the field again. After the rollout every ``x_i`` is known, so ``f_ref`` runs
    as two batched calls of ``K * B`` rows: a linearised one at ``(x_i, t_i + h)`` whose
    hand-written VJPs drive the lean adjoint (instead of ``K`` autograd forward-backward
    pairs) and one at ``(x_i, t_i)`` for the regression target.

    Args:
        finetuned: ``f_theta`` (gradients flow only here).
        reference: ``f_ref`` (frozen; used for the lean adjoint and the regression target).
        state_n: ``(B, D)`` normalised states.
        lang: ``(B, L)`` instruction embeddings.
        image: ``(B, h, w, 3)`` uint8 or None.
        q_fn: flow output ``(B, X)`` -> target critic ``(B,)``.
        lam: temperature ``lambda``.
        steps: ``K`` flow steps.
        generator: RNG for the noise.
        rollout: "finetuned" (QAM) or "reference" (LWD's Algorithm 2) field for the rollout.
    """
    b, size = state_n.shape[0], finetuned.action_size
    h = 1.0 / steps
    with torch.no_grad():
        ctx_ref = reference.encode_context(state_n, lang, image)
    ctx_ft = finetuned.encode_context(state_n, lang, image)  # with gradient, for the loss
    kept: list[torch.Tensor] = []

    def v_ft(x, t):  # with gradient into f_theta; the rollout itself detaches
        v = finetuned.velocity(ctx_ft, x, t)
        kept.append(v)
        return v

    def v_ref(x, t):
        with torch.no_grad():
            return reference.velocity(ctx_ref, x, t)

    x0 = torch.randn(b, size, generator=generator, device=state_n.device)
    xs = memoryless_rollout(v_ft if rollout == "finetuned" else v_ref, x0, steps, generator)
    g_terminal, q = terminal_adjoint(q_fn, xs[-1], lam)

    # Every x_i is known now, so f_ref runs as batched calls of K * B rows.
    times = torch.arange(steps, dtype=state_n.dtype, device=state_n.device) * h
    x_steps = torch.stack(xs[:steps])  # (K, B, X), block i = step i
    _, lin = reference.linearize(ctx_ref, x_steps, times + h)
    adjoints = lean_adjoint(lin.vjp, g_terminal, steps)
    with torch.no_grad():
        v_base = reference.velocity_steps(ctx_ref, x_steps, times)
    if rollout == "finetuned":
        v_fine = torch.stack(kept)
    else:
        v_fine = finetuned.velocity_steps(ctx_ft, x_steps, times)
    loss = adjoint_matching_loss(v_fine, v_base, adjoints, memoryless_sigma(times, h))
    metrics = {
        "actor/qam_loss": loss.detach(),
        "actor/q_sample": q.mean(),
        "actor/adjoint_norm": g_terminal.norm(dim=-1).mean(),
        "actor/velocity_gap": (v_fine.detach() - v_base).norm(dim=-1).mean(),
    }
    return loss, metrics


def flow_ode(field: nn.Module, ctx: torch.Tensor, x0: torch.Tensor, steps: int) -> torch.Tensor:
    """``x_K`` of ``K`` Euler steps of ``dx = f dw`` from ``x0`` (no gradient)."""
    h, x = 1.0 / steps, x0
    with torch.no_grad():
        for i in range(steps):
            x = x + h * field.velocity(ctx, x, i * h)
    return x


def fql_actor_loss(
    one_step: nn.Module,
    reference: nn.Module,
    state_n: torch.Tensor,
    lang: torch.Tensor,
    image: torch.Tensor | None,
    q_fn: QFn,
    *,
    alpha: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """FQL: a one-step policy ``mu(s, z) = z + g(s, z, 0)`` distilled from the reference flow.

    ``L = alpha * || mu(s, z) - ODE_ref(s, z) ||^2 - Q(s, mu(s, z)) / mean|Q|`` (FQL normalises
    the Q term by its magnitude). Acting with ``one_step`` as a flow of ``K = 1`` step gives
    exactly ``mu``.
    """
    b = state_n.shape[0]
    z = torch.randn(b, one_step.action_size, generator=generator, device=state_n.device)
    with torch.no_grad():
        target = flow_ode(reference, reference.encode_context(state_n, lang, image), z, steps)
    ctx = one_step.encode_context(state_n, lang, image)
    action = z + one_step.velocity(ctx, z, 0.0)
    distill = (action - target).square().sum(-1).mean()
    q = q_fn(action)
    q_loss = -q.mean() / q.detach().abs().mean().clamp_min(1e-6)
    loss = alpha * distill + q_loss
    metrics = {
        "actor/fql_distill": distill.detach(),
        "actor/q_sample": q.detach().mean(),
        "actor/fql_loss": loss.detach(),
    }
    return loss, metrics


def awr_actor_loss(
    field: nn.Module,
    state_n: torch.Tensor,
    lang: torch.Tensor,
    image: torch.Tensor | None,
    actions_n: torch.Tensor,
    advantage: torch.Tensor,
    *,
    beta: float,
    max_weight: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Advantage-weighted flow BC: flow matching on dataset chunks, weighted ``exp(beta A)``.

    Args:
        actions_n: ``(B, H, A)`` dataset chunks in the policy's action space.
        advantage: ``(B,)`` ``Q(s, a) - V(s)`` (no gradient).
    """
    weights = torch.exp(beta * advantage.detach()).clamp(max=max_weight)
    loss, info = flow_matching_loss(
        field, state_n, lang, actions_n, image, generator=generator, sample_weight=weights
    )
    metrics = {
        "actor/awr_loss": loss.detach(),
        "actor/awr_weight_mean": weights.mean(),
        "actor/awr_weight_max": weights.max(),
        "actor/advantage_mean": advantage.detach().mean(),
    }
    return loss, metrics
