"""Multi-layer perceptrons and the sinusoidal embedding of the flow time.

Pure torch modules; no losses, no optimizers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

_ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    """Build an activation module by name (``"gelu"`` or ``"silu"``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}"
        ) from None


class MLP(nn.Module):
    """``Linear -> [LayerNorm] -> activation`` per hidden layer, then a final ``Linear``.

    Example:
        >>> net = MLP(10, (64, 64), 3, layer_norm=True)
        >>> net(torch.zeros(8, 10)).shape
        torch.Size([8, 3])

    Args:
        in_dim: input features.
        hidden: width of each hidden layer (may be empty: then a single ``Linear``).
        out_dim: output features.
        layer_norm: add a LayerNorm after every hidden ``Linear``.
        activation: ``"gelu"`` or ``"silu"``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        *,
        layer_norm: bool = False,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden:
            layers.append(nn.Linear(prev, width))
            if layer_norm:
                layers.append(nn.LayerNorm(width))
            layers.append(make_activation(activation))
            prev = width
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., in_dim)`` to ``(..., out_dim)`` (float32 out, also under autocast)."""
        *hidden, last = self.net
        for layer in hidden:
            x = layer(x)
        return full_precision(last, x)


def full_precision(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in float32 even under autocast.

    Output layers are tiny (width -> a few outputs) but what they produce (Q values, value
    logits, velocities) feeds losses and targets whose differences are small; bfloat16 would
    round them to about 3 significant digits.
    """
    if not torch.is_autocast_enabled(x.device.type):
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


class Linearization:
    """The layers of one batched forward pass, kept for input VJPs over blocks of its rows.

    Built by walking the layers in order with :meth:`record` (which also computes each layer's
    output); :meth:`vjp` then runs the backward by hand with the same fused kernels autograd
    uses (``gelu_backward``, ``native_layer_norm_backward``) but builds no graph and computes
    no weight gradients. Supports ``Linear``, ``LayerNorm``, exact ``GELU`` and ``Identity``.

    Args:
        input_weight: ``(width, in)`` weight of the linear map from the differentiated input
            to the first recorded layer's input (``dh/dx``); the VJP ends with it.
    """

    def __init__(self, input_weight: torch.Tensor) -> None:
        self.input_weight = input_weight
        self.layers: list[tuple[nn.Module, tuple[torch.Tensor, ...]]] = []

    def record(self, module: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Apply ``module`` to ``h`` (call under ``no_grad``), keeping what its VJP needs."""
        if isinstance(module, nn.Identity):
            return h
        if isinstance(module, nn.Linear):
            self.layers.append((module, ()))
            return module(h)
        if isinstance(module, nn.LayerNorm):
            out, mean, rstd = torch.ops.aten.native_layer_norm(
                h, list(module.normalized_shape), module.weight, module.bias, module.eps
            )
            self.layers.append((module, (h, mean, rstd)))
            return out
        if isinstance(module, nn.GELU) and module.approximate == "none":
            self.layers.append((module, (h,)))
            return F.gelu(h)
        raise TypeError(f"Linearization cannot differentiate {type(module).__name__} layers")

    @torch.no_grad()
    def vjp(self, index: int | slice, g: torch.Tensor) -> torch.Tensor:
        """``g^T d(output)/d(input)`` at the recorded inputs ``[index]`` (indexing their first
        dimension); ``g`` holds the output gradients of those rows."""
        for module, saved in reversed(self.layers):
            if isinstance(module, nn.Linear):
                g = g @ module.weight
            elif isinstance(module, nn.LayerNorm):
                h, mean, rstd = (t[index] for t in saved)
                g = torch.ops.aten.native_layer_norm_backward(
                    g,
                    h,
                    list(module.normalized_shape),
                    mean,
                    rstd,
                    module.weight,
                    module.bias,
                    [True, False, False],
                )[0]
            else:
                g = torch.ops.aten.gelu_backward(g, saved[0][index])
        return g @ self.input_weight


def sinusoidal_time_embedding(
    w: torch.Tensor, dim: int, *, scale: float = 1000.0, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal features of the flow time ``w`` in ``[0, 1]``.

    Feature ``i < dim / 2`` is ``sin(scale * w * f_i)`` and feature ``dim / 2 + i`` is
    ``cos(scale * w * f_i)``, with frequencies ``f_i = max_period ** (-i / (dim / 2))``
    geometrically spaced from 1 down to ``1 / max_period`` (the transformer / diffusion
    convention, with ``w`` scaled by ``scale`` so that ``[0, 1]`` spans many periods of the
    fastest feature). At ``w = 0`` the first half is all 0 and the second half all 1.

    Args:
        w: ``(B,)`` flow times (any float dtype; a 0-dim tensor is treated as ``(1,)``).
        dim: number of features; must be even and positive.
        scale: multiplier applied to ``w`` before the frequencies.
        max_period: the slowest feature's period, in units of ``scale * w``.

    Returns:
        ``(B, dim)`` features in the dtype of ``w`` (float32 if ``w`` is not floating).
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"time embedding size must be a positive even number, got {dim}")
    w = w.reshape(-1)
    if not torch.is_floating_point(w):
        w = w.float()
    half = dim // 2
    exponent = torch.arange(half, device=w.device, dtype=torch.float32) / half
    freqs = torch.exp(-math.log(max_period) * exponent).to(w.dtype)
    args = (scale * w)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
