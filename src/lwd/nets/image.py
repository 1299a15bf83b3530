"""A small convolutional image encoder trained from scratch.

Camera frames arrive as ``(B, h, w, 3)`` uint8 (channels last, as robots and the episode
store keep them). The encoder converts them to float in ``[-0.5, 0.5]``, channels first,
appends two coordinate channels (so that global pooling still knows *where* things are),
runs a few stride-2 convolutions and average-pools to one feature vector per frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lwd.nets.mlp import make_activation


class ImageEncoder(nn.Module):
    """Stride-2 CNN + global average pooling + linear head.

    Example:
        >>> enc = ImageEncoder(features=64, image_size=64)
        >>> frames = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
        >>> enc(frames).shape
        torch.Size([2, 64])

    Args:
        features: output features per frame.
        image_size: if set, frames must be ``image_size`` x ``image_size`` pixels; otherwise
            any size of at least ``2 ** len(channels)`` pixels is accepted.
        channels: output channels of each stride-2 convolution (each halves the resolution).
        activation: ``"gelu"`` or ``"silu"``.
    """

    def __init__(
        self,
        features: int,
        image_size: int | None = None,
        *,
        channels: Sequence[int] = (32, 64, 128, 128),
        activation: str = "silu",
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("ImageEncoder needs at least one convolution")
        self.features = features
        self.image_size = image_size
        self._min_size = 2 ** len(channels)
        if image_size is not None and image_size < self._min_size:
            raise ValueError(
                f"image_size {image_size} is too small for {len(channels)} stride-2 "
                f"convolutions; use at least {self._min_size} pixels"
            )
        layers: list[nn.Module] = []
        prev = 3 + 2  # RGB + (y, x) coordinates
        for ch in channels:
            layers += [
                nn.Conv2d(prev, ch, kernel_size=3, stride=2, padding=1),
                nn.GroupNorm(min(8, ch), ch),
                make_activation(activation),
            ]
            prev = ch
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(prev, features)

    def _check(self, image: torch.Tensor) -> None:
        if image.dtype != torch.uint8:
            raise TypeError(f"camera frames must be uint8 (B, h, w, 3), got dtype {image.dtype}")
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(
                f"camera frames must have shape (B, h, w, 3), got {tuple(image.shape)}"
            )
        h, w = int(image.shape[1]), int(image.shape[2])
        if self.image_size is not None and (h, w) != (self.image_size, self.image_size):
            raise ValueError(
                f"camera frames are {h}x{w} pixels but the encoder was built for "
                f"{self.image_size}x{self.image_size}; resize the frames or change image_size"
            )
        if min(h, w) < self._min_size:
            raise ValueError(f"camera frames of {h}x{w} pixels are smaller than {self._min_size}")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Encode frames.

        Args:
            image: ``(B, h, w, 3)`` uint8 RGB frames.

        Returns:
            ``(B, features)`` float32 features.
        """
        self._check(image)
        dtype = self.head.weight.dtype
        x = image.permute(0, 3, 1, 2).to(dtype) / 255.0 - 0.5
        b, _, h, w = x.shape
        ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=dtype)
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=0)
        x = torch.cat([x, coords.expand(b, 2, h, w)], dim=1)
        x = self.convs(x)
        return self.head(x.mean(dim=(2, 3)))
