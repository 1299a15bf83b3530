"""Policy checkpoints: a directory of safetensors and JSON files, never pickle.

Layout::

    ckpt/
      model.safetensors      policy weights (FlowPolicy.state_dict())
      config.json            {"format": 1, "kind": "flow_policy", "policy": {...}, "extra": {...}}
      normalizer.json        Normalizer.to_dict()
      optimizer.safetensors  (optional) optimizer tensors, keys "<name>/<param>/<field>"
      trainer_state.json     (optional) step, optimizer non-tensor state, RNG states, extra

Usage (exact resume)::

    save_policy(d, policy, extra={"version": 3})
    save_training_state(d, {"policy": opt}, step, generators={"noise": g, "replay": rng})
    ...
    policy = load_policy(d)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-4)
    state = load_training_state(d, {"policy": opt}, generators={"noise": g, "replay": rng})

Every loading failure is a :class:`CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from lwd.config import PolicyConfig, from_dict, to_dict
from lwd.durable import write_atomic
from lwd.policy.flow import FlowPolicy
from lwd.policy.normalizer import Normalizer

FORMAT = 1
"""Checkpoint format version written to config.json and trainer_state.json."""
KIND = "flow_policy"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
NORMALIZER_FILE = "normalizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_FILE = "trainer_state.json"

Generators = Mapping[str, torch.Generator | np.random.Generator]
Optimizers = torch.optim.Optimizer | Mapping[str, torch.optim.Optimizer]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not match the model."""


@dataclass(frozen=True)
class TrainingState:
    """What :func:`load_training_state` returns besides restoring optimizers and RNGs."""

    step: int  #: updates done when the state was saved
    extra: dict = field(default_factory=dict)  #: the ``extra`` passed to the save


# ---------------------------------------------------------------------------- file helpers
def _write_json(path: Path, data: dict) -> None:
    try:
        text = json.dumps(data, indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot write {path.name}: not JSON-serialisable ({exc})") from exc
    write_atomic(path, text.encode())


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing file; the checkpoint is incomplete")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_format(path: Path, data: dict) -> None:
    if data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {data.get('format')!r}; this lwd reads "
            f"format {FORMAT} (was it written by a different lwd version?)"
        )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing file; the checkpoint is incomplete")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:  # any parse failure means a corrupt file
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


# ------------------------------------------------------------------------------- weights
def save_module_weights(path: str | Path, module: nn.Module) -> None:
    """Write ``module.state_dict()`` to a safetensors file (atomically)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    write_atomic(Path(path), safetensors.torch.save(tensors, metadata={"format": str(FORMAT)}))


def load_module_weights(path: str | Path, module: nn.Module) -> None:
    """Load a safetensors file into ``module``, failing loudly on any mismatch.

    Raises:
        CheckpointError: missing file, missing/unexpected keys, shape mismatches (all listed),
            or NaN/inf values.
    """
    path = Path(path)
    tensors = _read_tensors(path)
    expected = module.state_dict()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    shapes = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if shapes:
        problems.append("shape mismatch (config and weights disagree) for " + "; ".join(shapes))
    bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all())
    if bad:
        problems.append(f"NaN or inf values in {bad}")
    if problems:
        raise CheckpointError(f"{path}: " + ". ".join(problems))
    module.load_state_dict(tensors, strict=True)


# -------------------------------------------------------------------------------- policy
def save_policy(directory: str | Path, policy: FlowPolicy, extra: dict | None = None) -> Path:
    """Write a policy checkpoint (weights, normalizer, then config.json last).

    Args:
        directory: created if missing; existing checkpoint files are replaced.
        policy: the policy to save.
        extra: JSON-serialisable metadata stored under ``"extra"`` in config.json.

    Returns:
        The checkpoint directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_module_weights(directory / MODEL_FILE, policy)
    _write_json(directory / NORMALIZER_FILE, policy.normalizer.to_dict())
    config = {"format": FORMAT, "kind": KIND, "policy": to_dict(policy.cfg), "extra": extra or {}}
    _write_json(directory / CONFIG_FILE, config)
    return directory


def read_checkpoint_config(directory: str | Path) -> dict:
    """The validated contents of a checkpoint's config.json (``policy``, ``extra``, ...)."""
    path = Path(directory) / CONFIG_FILE
    data = _read_json(path)
    _check_format(path, data)
    if data.get("kind") != KIND:
        raise CheckpointError(f"{path}: kind is {data.get('kind')!r}, expected {KIND!r}")
    if not isinstance(data.get("policy"), dict):
        raise CheckpointError(f"{path}: no 'policy' config object")
    return data


def load_policy(directory: str | Path, *, device: str | torch.device = "cpu") -> FlowPolicy:
    """Load a checkpoint written by :func:`save_policy` (in eval mode).

    Raises:
        CheckpointError: naming the file and the problem (missing file, unknown format,
            bad config, normalizer/config dimension mismatch, weight mismatches, NaN weights).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist")
    config_path = directory / CONFIG_FILE
    data = read_checkpoint_config(directory)
    try:
        cfg = from_dict(PolicyConfig, data["policy"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: invalid policy config ({exc})") from exc
    norm_path = directory / NORMALIZER_FILE
    try:
        normalizer = Normalizer.from_dict(_read_json(norm_path))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{norm_path}: {exc}") from exc
    if (normalizer.state_dim, normalizer.action_dim) != (cfg.state_dim, cfg.action_dim):
        raise CheckpointError(
            f"{norm_path}: normalizer is for state_dim={normalizer.state_dim}, "
            f"action_dim={normalizer.action_dim} but {CONFIG_FILE} says "
            f"state_dim={cfg.state_dim}, action_dim={cfg.action_dim}"
        )
    policy = FlowPolicy(cfg, normalizer)
    load_module_weights(directory / MODEL_FILE, policy)
    return policy.to(device).eval()


# ---------------------------------------------------------------------------------- RNG
def capture_rng_state(generators: Generators | None = None) -> dict:
    """JSON-friendly RNG states: Python, numpy and torch globals (CUDA if in use) + named."""
    np_legacy = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_json(random.getstate()),
        "numpy": [np_legacy[0], np_legacy[1].tolist(), *map(_to_json, np_legacy[2:])],
        "torch": torch.get_rng_state().tolist(),
        "named": {},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    for name, gen in (generators or {}).items():
        if isinstance(gen, torch.Generator):
            state["named"][name] = {"torch": gen.get_state().tolist()}
        elif isinstance(gen, np.random.Generator):
            state["named"][name] = {"numpy": _to_json(gen.bit_generator.state)}
        else:
            raise TypeError(f"generator {name!r} is a {type(gen).__name__}, not a torch/numpy RNG")
    return state


def restore_rng_state(state: dict, generators: Generators | None = None) -> None:
    """Inverse of :func:`capture_rng_state`; every named generator must be in ``state``."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], np.uint32), *np_state[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    for name, gen in (generators or {}).items():
        saved = state["named"].get(name)
        if saved is None:
            raise KeyError(
                f"no saved RNG state for generator {name!r}; saved: {list(state['named'])}"
            )
        if isinstance(gen, torch.Generator):
            gen.set_state(torch.tensor(saved["torch"], dtype=torch.uint8))
        else:
            gen.bit_generator.state = saved["numpy"]


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        raise TypeError("tensor found where a JSON value was expected")
    return value


# -------------------------------------------------------------------------- training state
def _named(optimizers: Optimizers) -> Mapping[str, torch.optim.Optimizer]:
    if isinstance(optimizers, torch.optim.Optimizer):
        return {"optimizer": optimizers}
    return optimizers


def save_training_state(
    directory: str | Path,
    optimizers: Optimizers,
    step: int,
    *,
    generators: Generators | None = None,
    extra: dict | None = None,
) -> None:
    """Write optimizer states, the step counter and RNG states for exact resume.

    Args:
        directory: the checkpoint directory (created if missing).
        optimizers: named optimizers, e.g. ``{"actor": a, "critic": c}``; a single optimizer
            is saved under the name ``"optimizer"``.
        step: updates done so far.
        generators: named torch/numpy generators to save beside the global RNGs.
        extra: JSON-serialisable metadata (e.g. an LR scheduler's ``state_dict()``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, opt in _named(optimizers).items():
        sd = opt.state_dict()
        non_tensor: dict[str, dict] = {}
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}/{pid}/{key}"] = value.detach().cpu().contiguous()
                else:
                    non_tensor.setdefault(str(pid), {})[key] = _to_json(value)
        meta[name] = {
            "param_groups": _to_json(sd["param_groups"]),
            "state_params": [str(p) for p in sd["state"]],
            "non_tensor_state": non_tensor,
        }
    write_atomic(directory / OPTIMIZER_FILE, safetensors.torch.save(tensors))
    state = {
        "format": FORMAT,
        "step": int(step),
        "optimizers": meta,
        "rng": capture_rng_state(generators),
        "extra": extra or {},
    }
    _write_json(directory / TRAINER_FILE, state)


def load_training_state(
    directory: str | Path,
    optimizers: Optimizers,
    *,
    generators: Generators | None = None,
    restore_rng: bool = True,
) -> TrainingState:
    """Restore optimizers (and RNGs) saved by :func:`save_training_state`.

    The optimizers must be built over the same parameters, in the same order, as when saved.

    Raises:
        CheckpointError: missing/unreadable files, unknown format, an optimizer missing from
            the checkpoint, or an optimizer whose parameter groups do not match.
    """
    directory = Path(directory)
    state_path, tensor_path = directory / TRAINER_FILE, directory / OPTIMIZER_FILE
    data = _read_json(state_path)
    _check_format(state_path, data)
    tensors = _read_tensors(tensor_path)
    saved = data.get("optimizers", {})
    for name, opt in _named(optimizers).items():
        if name not in saved:
            raise CheckpointError(
                f"{state_path}: no optimizer named {name!r}; saved: {sorted(saved)}"
            )
        meta = saved[name]
        groups = meta["param_groups"]
        for group, current in zip(groups, opt.param_groups, strict=False):
            for key, value in current.items():  # JSON turned tuples (Adam betas) into lists
                if isinstance(value, tuple) and isinstance(group.get(key), list):
                    group[key] = tuple(group[key])
        opt_state: dict[int, dict[str, Any]] = {}
        for pid in meta["state_params"]:
            entry = dict(meta["non_tensor_state"].get(pid, {}))
            prefix = f"{name}/{pid}/"
            entry.update({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
            opt_state[int(pid)] = entry
        try:
            opt.load_state_dict({"state": opt_state, "param_groups": groups})
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"{tensor_path}: optimizer {name!r} does not match the saved one ({exc}); build "
                f"it over the same parameters as when saving"
            ) from exc
    if restore_rng:
        try:
            restore_rng_state(data["rng"], generators)
        except KeyError as exc:
            raise CheckpointError(f"{state_path}: RNG state incomplete ({exc})") from exc
    return TrainingState(step=int(data["step"]), extra=data.get("extra", {}))
