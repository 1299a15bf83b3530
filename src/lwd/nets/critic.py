"""Value and critic networks of the RL learner: pure torch modules, no losses.

Both read the same observation features as the policy (normalised state, projected instruction
embedding, optionally a CNN image feature), through their own encoder::

    feats = ObservationEncoder(...)(state_n, lang, image)           # (B, F)
    logits = ValueNet(...)(state_n, lang, image)                      # (B, out) out = 201 atoms
    q = Critic(...)(state_n, lang, actions_flat, image)               # (E, B) one row per head

The critic's heads are an *ensemble* evaluated with batched matmuls (one ``baddbmm`` per
layer for all heads) instead of a Python loop over separate MLPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lwd.config import PolicyConfig
from lwd.nets.image import ImageEncoder
from lwd.nets.mlp import full_precision

HEAD_RULES = ("mean", "min", "pessimistic")


def combine_heads(q: torch.Tensor, rule: str, pessimism: float = 0.5) -> torch.Tensor:
    """One value per sample from critic heads ``q`` ``(E, B)``: ``(B,)``.

    ``"min"``: clipped double-Q (LWD's targets); ``"mean"``; ``"pessimistic"``: ``mean -
    pessimism * std`` over heads (population std), QAM's rule for its 10-head ensemble. With
    two heads ``min = mean - std``, so pessimism 1 reproduces ``"min"``.
    """
    if rule == "mean":
        return q.mean(0)
    if rule == "min":
        return q.min(0).values
    if rule == "pessimistic":
        return q.mean(0) - pessimism * q.std(0, correction=0)
    raise ValueError(f"unknown critic head rule {rule!r}; expected one of {HEAD_RULES}")


class ObservationEncoder(nn.Module):
    """``[state_n, LayerNorm(W lang), image features]`` concatenated: ``(B, out_dim)``."""

    def __init__(
        self,
        state_dim: int,
        lang_dim: int,
        lang_proj: int,
        image_features: int = 0,
        image_size: int = 64,
    ) -> None:
        super().__init__()
        self.state_dim = state_dim
        self.lang = nn.Sequential(nn.Linear(lang_dim, lang_proj), nn.LayerNorm(lang_proj))
        self.image = ImageEncoder(image_features, image_size) if image_features else None
        self.out_dim = state_dim + lang_proj + image_features

    def forward(
        self, state: torch.Tensor, lang: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(
                f"state must have shape (B, {self.state_dim}), got {tuple(state.shape)}"
            )
        parts = [state, self.lang(lang)]
        if self.image is not None:
            if image is None:
                raise ValueError("this network conditions on images; pass image (B, h, w, 3)")
            parts.append(self.image(image))
        return torch.cat(parts, dim=-1)


class EnsembleLinear(nn.Module):
    """``E`` independent linear layers applied with one batched matmul: ``(E, B, i) -> (E, B, o)``."""

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default initialisation, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 2:  # the same input for every member
            x = x.unsqueeze(0).expand(self.weight.shape[0], -1, -1)
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """``E`` MLPs (``Linear -> LayerNorm -> GELU`` per hidden layer) evaluated together.

    Args:
        members: ``E``.
        in_dim: input features (the input may be ``(B, in)``, shared, or ``(E, B, in)``).
        width: hidden width.
        depth: hidden layers.
        out_dim: outputs per member.
    """

    def __init__(self, members: int, in_dim: int, width: int, depth: int, out_dim: int) -> None:
        super().__init__()
        dims = [in_dim] + [width] * depth
        self.hidden = nn.ModuleList(
            EnsembleLinear(members, a, b) for a, b in zip(dims, dims[1:], strict=False)
        )
        self.norm_weight = nn.Parameter(torch.ones(depth, members, 1, width))
        self.norm_bias = nn.Parameter(torch.zeros(depth, members, 1, width))
        self.out = EnsembleLinear(members, dims[-1], out_dim)
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in)`` or ``(E, B, in)`` -> ``(E, B, out)``."""
        for i, layer in enumerate(self.hidden):
            x = F.layer_norm(layer(x), (self.width,))
            x = F.gelu(x * self.norm_weight[i] + self.norm_bias[i])
        return full_precision(self.out, x)


class ValueNet(nn.Module):
    """``V(s)``: ``out_dim`` logits over value atoms (DIVL) or one scalar (expectile).

    Args:
        encoder: observation features for this net (not shared with the critic or policy).
        width, depth: MLP size.
        out_dim: 201 atoms for DIVL, 1 for the expectile ablation.
    """

    def __init__(self, encoder: ObservationEncoder, width: int, depth: int, out_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.mlp = EnsembleMLP(1, encoder.out_dim, width, depth, out_dim)

    def forward(
        self, state: torch.Tensor, lang: torch.Tensor, image: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, D)``, ``(B, L)`` -> ``(B, out_dim)``."""
        return self.mlp(self.encoder(state, lang, image))[0]


class Critic(nn.Module):
    """``Q(s, a)`` with ``E`` heads on the whole flattened action chunk.

    Args:
        encoder: observation features for this net.
        action_size: ``H * A``.
        width, depth: MLP size of each head.
        heads: ``E`` (2: clipped double-Q).
    """

    def __init__(
        self, encoder: ObservationEncoder, action_size: int, width: int, depth: int, heads: int
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.action_size = action_size
        self.heads = EnsembleMLP(heads, encoder.out_dim + action_size, width, depth, 1)

    def forward(
        self,
        state: torch.Tensor,
        lang: torch.Tensor,
        actions: torch.Tensor,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, D)``, ``(B, L)``, ``(B, H*A)`` or ``(B, H, A)`` -> ``(E, B)`` Q values."""
        actions = actions.reshape(actions.shape[0], -1)
        if actions.shape[1] != self.action_size:
            raise ValueError(
                f"actions must flatten to (B, {self.action_size}), got {tuple(actions.shape)}"
            )
        feats = self.encoder(state, lang, image)
        return self.heads(torch.cat([feats, actions], dim=-1))[..., 0]


def observation_encoder(pc: PolicyConfig) -> ObservationEncoder:
    """The critic's and value's observation features for a policy of architecture ``pc``."""
    feats = pc.image_features if pc.use_images else 0
    return ObservationEncoder(pc.state_dim, pc.lang_dim, pc.lang_proj, feats, pc.image_size)


def build_critic(pc: PolicyConfig, width: int, depth: int, heads: int) -> Critic:
    """A critic on the flattened ``(H * A)`` chunks of a policy of architecture ``pc``."""
    return Critic(observation_encoder(pc), pc.chunk * pc.action_dim, width, depth, heads)
