"""Flow-matching behaviour cloning: regress the velocity of the rectified path.

For an action chunk ``x1`` (data, ``w = 1``) and noise ``x0 ~ N(0, I)`` (``w = 0``), the
point ``x_w = w * x1 + (1 - w) * x0`` moves with constant velocity ``x1 - x0``; the field is
trained to predict it (ALGORITHMS.md §3)::

    L = E_{w ~ U[0, 1), x0} || f(s, l, x_w, w) - (x1 - x0) ||^2

averaged over valid (unmasked) chunk positions and action dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

VelocityFn = Callable[..., torch.Tensor]
"""``f(state_n (B, D), lang (B, L), x (B, H*A), w (B,), image) -> (B, H*A)``."""


def flow_matching_loss(
    field: VelocityFn,
    state_n: torch.Tensor,
    lang: torch.Tensor,
    actions: torch.Tensor,
    image: torch.Tensor | None = None,
    valid_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    noise: torch.Tensor | None = None,
    w: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Conditional flow-matching loss on a batch of action chunks.

    Args:
        field: the velocity field (e.g. a :class:`~lwd.nets.velocity.VelocityField`).
        state_n: ``(B, D)`` normalised states.
        lang: ``(B, lang_dim)`` instruction embeddings.
        actions: ``(B, H, A)`` target chunks in the policy's action space (already passed
            through ``Normalizer.normalize_action``; the identity by default).
        image: ``(B, h, w, 3)`` uint8 frames, or None.
        valid_mask: ``(B, H)`` bool/0-1; False marks padded positions past an episode's end,
            which are excluded from the loss. None: all valid.
        generator: torch RNG for ``x0`` and ``w`` (on the batch's device).
        noise: ``(B, H, A)`` ``x0`` to use instead of sampling (tests, variance reduction).
        w: ``(B,)`` flow times to use instead of sampling ``U[0, 1)``.
        sample_weight: ``(B,)`` non-negative per-sample weights (advantage-weighted BC); the
            loss is then ``sum_b c_b err_b / sum_b c_b`` over valid positions.

    Returns:
        ``(loss, metrics)``: the scalar loss (differentiable) and detached scalar tensors
        ``bc/loss``, ``bc/pred_norm`` (mean L2 norm of the predicted velocity),
        ``bc/target_norm`` and ``bc/valid_frac``. Call ``float()`` on them to log.
    """
    if actions.ndim != 3:
        raise ValueError(f"actions must have shape (B, H, A), got {tuple(actions.shape)}")
    b, horizon, adim = actions.shape
    x1 = actions.reshape(b, horizon * adim)
    if noise is None:
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    elif noise.numel() != x1.numel():
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(actions.shape)}")
    else:
        x0 = noise.reshape(b, horizon * adim).to(x1.dtype)
    if w is None:
        w = torch.rand(b, generator=generator, device=x1.device, dtype=x1.dtype)
    elif w.shape != (b,):
        raise ValueError(f"w must have shape ({b},), got {tuple(w.shape)}")
    wc = w[:, None]
    x_w = wc * x1 + (1.0 - wc) * x0
    target = x1 - x0
    pred = field(state_n, lang, x_w, w, image)
    if pred.shape != target.shape:
        raise ValueError(
            f"velocity field returned {tuple(pred.shape)}, expected {tuple(target.shape)}"
        )
    err = (pred - target).square().reshape(b, horizon, adim)
    if valid_mask is None:
        m = torch.ones(b, horizon, dtype=err.dtype, device=err.device)
    elif valid_mask.shape != (b, horizon):
        raise ValueError(
            f"valid_mask must have shape ({b}, {horizon}), got {tuple(valid_mask.shape)}"
        )
    else:
        m = valid_mask.to(err.dtype)
    valid_frac = m.mean()
    if sample_weight is not None:
        if sample_weight.shape != (b,):
            raise ValueError(
                f"sample_weight must have shape ({b},), got {tuple(sample_weight.shape)}"
            )
        m = m * sample_weight.detach().to(err.dtype)[:, None]
    loss = (err * m[:, :, None]).sum() / (m.sum() * adim).clamp(min=1e-12)
    metrics = {
        "bc/loss": loss.detach(),
        "bc/pred_norm": pred.detach().norm(dim=-1).mean(),
        "bc/target_norm": target.norm(dim=-1).mean(),
        "bc/valid_frac": valid_frac.detach(),
    }
    return loss, metrics
