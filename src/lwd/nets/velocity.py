"""The flow-matching velocity field ``f(s, l, x, w)`` of the VLA-style policy.

The field predicts the velocity ``dx/dw`` of a flattened action chunk ``x`` (``(B, H*A)``) at
flow time ``w`` in ``[0, 1]`` (``w = 0`` noise, ``w = 1`` data), conditioned on the normalised
state, the instruction embedding and optionally a camera frame.

Its first layer is split into three matmuls whose outputs are summed::

    h1 = act(norm(W_c @ context + W_x @ x + W_t @ time_features(w) + b))

``W_c @ context`` depends only on the observation, so :meth:`VelocityField.encode_context`
computes it once per sample and every Euler step (and every call of the RL learner, which
evaluates the field ``K`` times per sample) pays only for the ``x`` and time parts::

    ctx = field.encode_context(state_n, lang, image)   # (B, width), once
    for i in range(K):
        x = x + h * field.velocity(ctx, x, i * h)       # cheap per step

With ``PolicyConfig.indicator`` on (RECAP, ALGORITHMS.md §5) the context also carries a learned
embedding of an advantage indicator, index into :data:`INDICATORS` (``unknown`` = unconditioned,
the classifier-free-guidance "dropped" label)::

    ctx = W_c @ context + E[indicator]                  # E starts at zero
"""

from __future__ import annotations

import torch
from torch import nn

from lwd.config import PolicyConfig
from lwd.nets.image import ImageEncoder
from lwd.nets.mlp import MLP, Linearization, make_activation, sinusoidal_time_embedding

_ACTIVATION = "gelu"

INDICATORS = ("unknown", "bad", "good")
"""Advantage-indicator labels, in embedding-row order (RECAP): 0 unknown, 1 bad, 2 good."""
UNKNOWN, BAD, GOOD = range(len(INDICATORS))


class VelocityField(nn.Module):
    """MLP velocity field conditioned on state, language, optional image and flow time.

    Args:
        cfg: the policy architecture (state/action/chunk sizes, width, depth, features).
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        if cfg.depth < 1:
            raise ValueError(f"PolicyConfig.depth must be at least 1, got {cfg.depth}")
        self.cfg = cfg
        self.action_size = cfg.chunk * cfg.action_dim
        self.lang_proj = nn.Sequential(
            nn.Linear(cfg.lang_dim, cfg.lang_proj), nn.LayerNorm(cfg.lang_proj)
        )
        self.image_encoder = (
            ImageEncoder(cfg.image_features, cfg.image_size) if cfg.use_images else None
        )
        context_dim = cfg.state_dim + cfg.lang_proj + (cfg.image_features if cfg.use_images else 0)
        self.context_in = nn.Linear(context_dim, cfg.width)
        self.x_in = nn.Linear(self.action_size, cfg.width, bias=False)
        self.time_in = nn.Linear(cfg.time_dim, cfg.width, bias=False)
        self.indicator_embed = None
        if cfg.indicator:
            if cfg.act_indicator not in INDICATORS:
                raise ValueError(
                    f"PolicyConfig.act_indicator must be one of {INDICATORS}, "
                    f"got {cfg.act_indicator!r}"
                )
            # Zero rows: a converted unconditioned policy acts exactly as before, any label.
            self.indicator_embed = nn.Embedding(len(INDICATORS), cfg.width)
            nn.init.zeros_(self.indicator_embed.weight)
        self.first_norm = nn.LayerNorm(cfg.width) if cfg.layer_norm else nn.Identity()
        self.first_act = make_activation(_ACTIVATION)
        self.trunk = MLP(
            cfg.width,
            (cfg.width,) * (cfg.depth - 1),
            self.action_size,
            layer_norm=cfg.layer_norm,
            activation=_ACTIVATION,
        )

    def encode_context(
        self,
        state: torch.Tensor,
        lang: torch.Tensor,
        image: torch.Tensor | None = None,
        indicator: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Observation part of the first layer, computed once per sample.

        Args:
            state: ``(B, D)`` normalised state.
            lang: ``(B, lang_dim)`` instruction embeddings.
            image: ``(B, h, w, 3)`` uint8 frames; required when ``cfg.use_images``, ignored
                otherwise.
            indicator: ``(B,)`` int64 or one int, rows of :data:`INDICATORS`; only for fields
                built with ``cfg.indicator`` (None there means ``unknown``).

        Returns:
            ``(B, width)`` context features (pre-activation) for :meth:`velocity`.
        """
        cfg = self.cfg
        if state.ndim != 2 or state.shape[1] != cfg.state_dim:
            raise ValueError(
                f"state must have shape (B, {cfg.state_dim}), got {tuple(state.shape)}"
            )
        if lang.ndim != 2 or lang.shape != (state.shape[0], cfg.lang_dim):
            raise ValueError(
                f"instruction embeddings must have shape ({state.shape[0]}, {cfg.lang_dim}), "
                f"got {tuple(lang.shape)}"
            )
        dtype = self.context_in.weight.dtype
        parts = [state.to(dtype), self.lang_proj(lang.to(dtype))]
        if self.image_encoder is not None:
            if image is None:
                raise ValueError("this policy conditions on images (use_images=True); pass image")
            if image.shape[0] != state.shape[0]:
                raise ValueError(
                    f"got {image.shape[0]} images for a batch of {state.shape[0]} states"
                )
            parts.append(self.image_encoder(image))
        context = self.context_in(torch.cat(parts, dim=-1))
        if self.indicator_embed is None:
            if indicator is not None:
                raise ValueError(
                    "this velocity field takes no indicator (PolicyConfig.indicator is off); "
                    "convert the policy with lwd.policy.flow.with_indicator first"
                )
            return context
        rows = torch.as_tensor(
            UNKNOWN if indicator is None else indicator, dtype=torch.long, device=context.device
        )
        if rows.ndim == 0:
            rows = rows.expand(state.shape[0])
        elif rows.shape != (state.shape[0],):
            raise ValueError(
                f"indicator must have shape ({state.shape[0]},), got {tuple(rows.shape)}"
            )
        return context + self.indicator_embed(rows)

    def velocity(
        self, context: torch.Tensor, x: torch.Tensor, w: torch.Tensor | float
    ) -> torch.Tensor:
        """Velocity from precomputed context features.

        Args:
            context: ``(B, width)`` from :meth:`encode_context`.
            x: ``(B, H*A)`` (or ``(B, H, A)``) noisy action chunk at flow time ``w``.
            w: ``(B,)`` flow times, or one float shared by the whole batch.

        Returns:
            ``(B, H*A)`` velocity ``dx/dw``.
        """
        return self.trunk(self.first_act(self.first_norm(self._first_input(context, x, w))))

    def _first_input(
        self, context: torch.Tensor, x: torch.Tensor, w: torch.Tensor | float
    ) -> torch.Tensor:
        """``context + W_x x + W_t time_features(w)``: the first hidden layer before its norm."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.action_size or x.shape[0] != context.shape[0]:
            raise ValueError(
                f"x must have shape ({context.shape[0]}, {self.action_size}) = (B, H*A), "
                f"got {tuple(x.shape)}"
            )
        # The weights' dtype, not the context's: under autocast the context is bfloat16, too
        # coarse for the time features' phases.
        dtype = self.x_in.weight.dtype
        if not isinstance(w, torch.Tensor) or w.ndim == 0:
            # One time for the whole batch: embed it once and broadcast.
            w = torch.as_tensor(w, dtype=dtype, device=context.device).reshape(1)
        elif w.shape != (x.shape[0],):
            raise ValueError(f"w must have shape ({x.shape[0]},), got {tuple(w.shape)}")
        temb = sinusoidal_time_embedding(w.to(dtype), self.cfg.time_dim)
        return context + self.x_in(x.to(dtype)) + self.time_in(temb)

    def velocity_steps(
        self, context: torch.Tensor, xs: torch.Tensor, times: torch.Tensor
    ) -> torch.Tensor:
        """Velocities at ``K`` points per sample in one batched call (the RL learner's form).

        Args:
            context: ``(B, width)`` from :meth:`encode_context`, shared by all ``K`` steps.
            xs: ``(K, B, H*A)`` noisy action chunks, block ``i`` at flow time ``times[i]``.
            times: ``(K,)`` flow times.

        Returns:
            ``(K, B, H*A)``; block ``i`` equals ``velocity(context, xs[i], times[i])``.
        """
        return self.trunk(self.first_act(self.first_norm(self._steps_input(context, xs, times))))

    def linearize(
        self, context: torch.Tensor, xs: torch.Tensor, times: torch.Tensor
    ) -> tuple[torch.Tensor, Linearization]:
        """:meth:`velocity_steps` without autograd, plus what its VJPs in ``xs`` need.

        The RL learner's lean adjoint needs ``g^T df/dx`` at ``K`` known points, one step at a
        time (the recursion is sequential). One batched forward over all ``K`` steps and a
        hand-written backward per step costs the same matmuls as ``K`` autograd calls but runs
        the forward at ``K`` times the rows, with no graph to build.

        Returns:
            ``(v (K, B, H*A), lin)``; ``lin.vjp(i, g)`` is ``g^T df/dx`` at step ``i``.
        """
        lin = Linearization(self.x_in.weight)
        with torch.no_grad():
            h = self._steps_input(context, xs, times)
            for module in (self.first_norm, self.first_act, *self.trunk.net):
                h = lin.record(module, h)
        return h, lin

    def _steps_input(
        self, context: torch.Tensor, xs: torch.Tensor, times: torch.Tensor
    ) -> torch.Tensor:
        k, b = xs.shape[:2]
        if xs.shape != (k, b, self.action_size) or context.shape[0] != b:
            raise ValueError(
                f"xs must have shape (K, {context.shape[0]}, {self.action_size}), "
                f"got {tuple(xs.shape)}"
            )
        if times.shape != (k,):
            raise ValueError(f"times must have shape ({k},), got {tuple(times.shape)}")
        dtype = self.x_in.weight.dtype  # not the context's (see _first_input)
        temb = sinusoidal_time_embedding(times.to(dtype), self.cfg.time_dim)
        h = self.x_in(xs.to(dtype))  # (K, B, width); adding in place saves two copies
        h += context
        h += self.time_in(temb)[:, None]
        return h

    def forward(
        self,
        state: torch.Tensor,
        lang: torch.Tensor,
        x: torch.Tensor,
        w: torch.Tensor | float,
        image: torch.Tensor | None = None,
        indicator: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Velocity ``f(s, l, x, w)``; same as ``velocity(encode_context(s, l, image), x, w)``.

        Args:
            state: ``(B, D)`` normalised state.
            lang: ``(B, lang_dim)`` instruction embeddings.
            x: ``(B, H*A)`` noisy action chunk.
            w: ``(B,)`` flow times in ``[0, 1]`` (or one float).
            image: ``(B, h, w, 3)`` uint8 frames, or None.
            indicator: ``(B,)`` rows of :data:`INDICATORS` (see :meth:`encode_context`).

        Returns:
            ``(B, H*A)`` velocity.
        """
        return self.velocity(self.encode_context(state, lang, image, indicator), x, w)
