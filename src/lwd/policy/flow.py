"""The flow-matching policy: sample an action chunk from noise with K Euler steps.

The velocity field is integrated from ``w = 0`` (Gaussian noise) to ``w = 1`` (data) along
the rectified path ``x_w = w * x1 + (1 - w) * x0`` (ALGORITHMS.md §3)::

    x = x0 ~ N(0, I)                       # (B, H*A)
    for i in range(K):                     # w_i = i / K
        x = x + (1 / K) * f(s, l, x, w_i)
    actions = clip(denormalize(x), -1, 1)  # (B, H, A)

A policy built with ``PolicyConfig.indicator`` (RECAP) acts with its recorded label
``cfg.act_indicator`` ("good"), with classifier-free guidance when ``cfg.guidance != 1``::

    f = guided_velocity(f(s, l, x, w | good), f(s, l, x, w | unknown), beta)

so a checkpoint acts correctly wherever it is loaded (:func:`with_indicator` converts a plain
policy, e.g. the SFT start, without changing what it does).

:class:`FlowPolicyRunner` wraps a :class:`FlowPolicy` into the fleet's ``Policy`` interface
(``infer(obs) -> ActionChunk`` and ``.version``)::

    runner = FlowPolicyRunner(load_policy(ckpt_dir), InstructionEncoder(), version=3)
    while not robot.done():
        chunk = runner.infer(robot.observe())
        for action in chunk.actions:
            robot.act(action)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from lwd.config import PolicyConfig
from lwd.nets.velocity import INDICATORS, VelocityField
from lwd.policy.instruction import InstructionEncoder
from lwd.policy.normalizer import Normalizer
from lwd.types import ActionChunk, Observation


class TextEncoder(Protocol):
    """Anything that embeds instructions (an :class:`InstructionEncoder`, or a test fake)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``N`` strings -> ``(N, lang_dim)`` float32."""
        ...


def _as_tensor(x: torch.Tensor | np.ndarray, device: torch.device, dtype: torch.dtype | None):
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype) if dtype is not None else x.to(device)
    return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)


class FlowPolicy(nn.Module):
    """A velocity field plus the normalisation statistics it was trained with.

    Args:
        cfg: the architecture.
        normalizer: state/action statistics; identity statistics if omitted.
        field: the velocity field; a fresh :class:`VelocityField` if omitted. Anything with
            ``encode_context(state, lang, image)`` and ``velocity(context, x, w)`` works
            (tests use hand-made fields).
    """

    def __init__(
        self,
        cfg: PolicyConfig,
        normalizer: Normalizer | None = None,
        field: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.normalizer = normalizer or Normalizer(cfg.state_dim, cfg.action_dim)
        if (self.normalizer.state_dim, self.normalizer.action_dim) != (
            cfg.state_dim,
            cfg.action_dim,
        ):
            raise ValueError(
                f"normalizer is for D={self.normalizer.state_dim}, A={self.normalizer.action_dim} "
                f"but the policy config has D={cfg.state_dim}, A={cfg.action_dim}"
            )
        self.field = field if field is not None else VelocityField(cfg)

    @property
    def device(self) -> torch.device:
        """Device of the parameters (CPU for a parameter-free field)."""
        param = next(self.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    @torch.no_grad()
    def sample(
        self,
        state: torch.Tensor | np.ndarray,
        lang: torch.Tensor | np.ndarray,
        image: torch.Tensor | np.ndarray | None = None,
        noise: torch.Tensor | np.ndarray | None = None,
        generator: torch.Generator | None = None,
        *,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Sample action chunks (no gradients, eval mode; the mode is restored afterwards).

        Args:
            state: ``(B, D)`` raw states.
            lang: ``(B, lang_dim)`` instruction embeddings.
            image: ``(B, h, w, 3)`` uint8 frames (policies with ``use_images``), or None.
            noise: ``(B, H, A)`` or ``(B, H*A)`` starting point ``x0``; drawn from
                ``N(0, I)`` with ``generator`` if omitted.
            generator: torch RNG for the noise (on the policy's device).
            steps: Euler steps ``K``; defaults to ``cfg.flow_steps``.

        Returns:
            ``(B, H, A)`` float32 actions clipped to ``[-1, 1]``, on the policy's device.
        """
        cfg, device = self.cfg, self.device
        k = cfg.flow_steps if steps is None else int(steps)
        if k < 1:
            raise ValueError(f"need at least one Euler step, got {k}")
        state_t = _as_tensor(state, device, torch.float32)
        lang_t = _as_tensor(lang, device, torch.float32)
        image_t = None if image is None else _as_tensor(image, device, None)
        b, size = state_t.shape[0], cfg.chunk * cfg.action_dim
        if noise is None:
            x = torch.randn(b, size, generator=generator, device=device)
        else:
            x = _as_tensor(noise, device, torch.float32)
            if x.numel() != b * size:
                raise ValueError(
                    f"noise has shape {tuple(x.shape)}; expected ({b}, {cfg.chunk}, "
                    f"{cfg.action_dim}) or ({b}, {size})"
                )
            x = x.reshape(b, size)
        was_training = self.training
        self.eval()
        try:
            state_n = self.normalizer.normalize_state(state_t)
            uncond = None  # the "unknown"-label context, for classifier-free guidance
            if not cfg.indicator:
                context = self.field.encode_context(state_n, lang_t, image_t)
            else:
                act = INDICATORS.index(cfg.act_indicator)
                context = self.field.encode_context(state_n, lang_t, image_t, act)
                if cfg.guidance != 1.0:
                    uncond = self.field.encode_context(state_n, lang_t, image_t, 0)
            h = 1.0 / k
            for i in range(k):
                v = self.field.velocity(context, x, i * h)
                if uncond is not None:
                    v = guided_velocity(v, self.field.velocity(uncond, x, i * h), cfg.guidance)
                x = x + h * v
        finally:
            self.train(was_training)
        actions = self.normalizer.denormalize_action(x.reshape(b, cfg.chunk, cfg.action_dim))
        return actions.clamp(-1.0, 1.0)


def guided_velocity(cond: torch.Tensor, uncond: torch.Tensor, beta: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + beta * (cond - uncond)``, ``(B, H*A)`` each.

    ``beta = 1`` is the conditional velocity, ``beta = 0`` the unconditional one, ``beta > 1``
    sharpens towards the condition (RECAP acts with the "good" label).
    """
    return uncond + beta * (cond - uncond)


def with_indicator(
    policy: FlowPolicy, *, act_indicator: str = "good", guidance: float = 1.0
) -> FlowPolicy:
    """A copy of ``policy`` whose velocity field takes a RECAP indicator.

    A plain policy gets a zero-initialised indicator embedding, so the copy's velocity equals
    the original's exactly for every label; a policy that already has one keeps it. The copy
    records ``act_indicator`` and ``guidance`` in its config (and so in its checkpoints).

    Args:
        policy: a :class:`FlowPolicy` with a :class:`VelocityField`.
        act_indicator: the label to act with, one of :data:`~lwd.nets.velocity.INDICATORS`.
        guidance: classifier-free guidance weight ``beta`` when acting.
    """
    cfg = dataclasses.replace(
        policy.cfg, indicator=True, act_indicator=act_indicator, guidance=float(guidance)
    )
    out = FlowPolicy(cfg, Normalizer.from_dict(policy.normalizer.to_dict()))
    missing, unexpected = out.load_state_dict(policy.state_dict(), strict=False)
    allowed = {"field.indicator_embed.weight"}
    if unexpected or set(missing) - allowed:
        raise ValueError(
            f"cannot add an indicator to this policy: missing {sorted(set(missing) - allowed)}, "
            f"unexpected {sorted(unexpected)} (it needs a lwd VelocityField)"
        )
    return out.to(policy.device).train(policy.training)


class FlowPolicyRunner:
    """The fleet's ``Policy`` interface around a :class:`FlowPolicy`.

    Args:
        policy: the policy to act with (its device is used).
        encoder: instruction embedder (default: an :class:`InstructionEncoder` with the shipped
            model, built on first use); embeddings are cached per instruction string.
        version: the policy version stamped on every chunk.
        seed: seed of the sampling noise (None: nondeterministic).
    """

    def __init__(
        self,
        policy: FlowPolicy,
        encoder: TextEncoder | None = None,
        *,
        version: int,
        seed: int | None = 0,
    ) -> None:
        self.policy = policy
        self.encoder = encoder
        self._version = int(version)
        self._generator = torch.Generator(device=policy.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed))
        self._lang: dict[str, np.ndarray] = {}

    @property
    def version(self) -> int:
        """The policy version stamped on produced chunks."""
        return self._version

    def reseed(self, seed: int) -> None:
        """Restart the sampling noise from ``seed`` (evaluation fixes it per episode)."""
        self._generator.manual_seed(int(seed))

    def infer(self, obs: Observation) -> ActionChunk:
        """One observation -> one ``(H, A)`` action chunk."""
        return self.infer_batch([obs])[0]

    def infer_batch(self, observations: Sequence[Observation]) -> list[ActionChunk]:
        """Several observations (e.g. several robots) in one forward pass.

        Args:
            observations: ``B`` observations; ``state`` ``(D,)``, ``image`` ``(h, w, 3)``
                uint8 when the policy uses images.

        Returns:
            ``B`` chunks, each ``(H, A)`` float32 in ``[-1, 1]``.
        """
        if not observations:
            return []
        cfg = self.policy.cfg
        states = np.stack([np.asarray(o.state, dtype=np.float32) for o in observations])
        if states.shape[1:] != (cfg.state_dim,):
            raise ValueError(
                f"observation states have shape {states.shape[1:]}, expected ({cfg.state_dim},)"
            )
        lang = np.stack([self._embed(o.instruction) for o in observations])
        images = None
        if cfg.use_images:
            missing = [i for i, o in enumerate(observations) if o.image is None]
            if missing:
                raise ValueError(
                    f"this policy needs camera images but observations {missing} have none"
                )
            images = np.stack([np.asarray(o.image) for o in observations])
        actions = self.policy.sample(states, lang, images, generator=self._generator)
        out = actions.cpu().numpy().astype(np.float32, copy=False)
        return [ActionChunk(actions=out[i], version=self._version) for i in range(len(out))]

    def _embed(self, instruction: str) -> np.ndarray:
        row = self._lang.get(instruction)
        if row is None:
            if self.encoder is None:
                self.encoder = InstructionEncoder()
            row = np.asarray(self.encoder.encode([instruction])[0], dtype=np.float32)
            if row.shape != (self.policy.cfg.lang_dim,):
                raise ValueError(
                    f"instruction encoder gives {row.shape} embeddings but the policy expects "
                    f"({self.policy.cfg.lang_dim},)"
                )
            self._lang[instruction] = row
        return row
