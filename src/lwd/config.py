"""Frozen dataclass configs, composed, with a registry of named presets.

Every field has a one-line docstring (the string under it). The resolved config is saved with
every run and checkpoint as JSON (:func:`to_dict` / :func:`from_dict`).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lwd.sim.layout import ACTION_DIM, STATE_DIM

T = TypeVar("T")


@dataclass(frozen=True)
class PolicyConfig:
    """The flow-matching policy's architecture."""

    state_dim: int = STATE_DIM
    """Width of the packed state vector (see lwd.sim.layout)."""
    action_dim: int = ACTION_DIM
    """Action dimension (5 for the UR5e)."""
    chunk: int = 5
    """H: actions per chunk; all are executed, then the policy replans."""
    flow_steps: int = 10
    """K: Euler steps when sampling a chunk from noise."""
    width: int = 512
    """Hidden width of the velocity-field MLP."""
    depth: int = 4
    """Number of hidden layers of the velocity-field MLP."""
    lang_dim: int = 384
    """Size of the instruction embedding (all-MiniLM-L6-v2: 384)."""
    lang_proj: int = 64
    """The instruction embedding is projected to this many features."""
    time_dim: int = 32
    """Sinusoidal features of the flow time w."""
    use_images: bool = False
    """Condition on a camera image through a small CNN trained from scratch."""
    image_size: int = 64
    """Square camera frames of this many pixels."""
    image_features: int = 64
    """Output features of the image encoder."""
    layer_norm: bool = True
    """LayerNorm after each hidden layer."""


@dataclass(frozen=True)
class SFTConfig:
    """Flow-matching behaviour cloning (the imitation-learned start)."""

    steps: int = 3000
    """Gradient updates."""
    batch_size: int = 256
    """Samples per update."""
    lr: float = 3e-4
    """Adam learning rate (cosine-decayed to 10% over `steps`)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_demos_per_task: int = 0
    """Use at most this many demonstration episodes per task (0 = all)."""
    sources: tuple[str, ...] = ("demo",)
    """Which step sources SFT learns from."""
    seed: int = 0
    """Seed for sampling and initialisation."""
    checkpoint_every: int = 500
    """Write a resumable checkpoint every this many updates."""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """Architecture of the policy being trained."""


@dataclass(frozen=True)
class EvalConfig:
    """A fixed evaluation protocol: same seeds, episodes and perturbations every time."""

    suite: str = "fleet8"
    """Task suite to evaluate on."""
    episodes_per_task: int = 20
    """Evaluation episodes per task."""
    seed: int = 1000
    """Base seed; episode i of task j uses a seed derived from (seed, j, i)."""
    perturb: bool = True
    """Apply per-robot deployment perturbations (noise, delay, shifts)."""
    num_robots: int = 8
    """Episodes are spread over this many simulated robots, each with its own perturbation."""
    workers: int = 2
    """Parallel worker processes."""


_PRESETS: dict[str, Any] = {
    "sft-default": SFTConfig(),
    "sft-quick": SFTConfig(steps=200, batch_size=128, checkpoint_every=100),
    "policy-small": PolicyConfig(width=256, depth=3),
    "eval-default": EvalConfig(),
    "eval-quick": EvalConfig(episodes_per_task=2),
}


def preset(name: str) -> Any:
    """Return the named preset config, suggesting close names on a typo."""
    if name in _PRESETS:
        return _PRESETS[name]
    close = difflib.get_close_matches(name, list(_PRESETS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"no preset named {name!r}{hint} (known: {', '.join(sorted(_PRESETS))})")


def to_dict(cfg: Any) -> dict:
    """Plain JSON-ready dict of a (nested) config dataclass."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config dataclass from :func:`to_dict` output; unknown keys are an error."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} config must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        ftype = fields[name].type
        sub = _NESTED.get((cls.__name__, name))
        if sub is not None:
            value = from_dict(sub, value)
        elif isinstance(value, list) and "tuple" in str(ftype):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_NESTED = {("SFTConfig", "policy"): PolicyConfig}
