"""Per-dimension normalisation statistics that travel with the policy.

States are standardised, ``(s - mean) / std``, with ``std`` floored at ``min_std`` (1e-2) so
that constant slots (the zero padding of the shared layout, the environment flag within one
environment) map to exactly 0 instead of exploding. Actions are already in ``[-1, 1]`` and are
left untouched unless ``normalize_actions=True``, in which case the same machinery applies.

Usage::

    norm = Normalizer(state_dim, action_dim).fit(states, actions)   # (N, D), (N, A)
    s_n = norm.normalize_state(s)          # numpy in, numpy out; torch in, torch out
    (path / "normalizer.json").write_text(json.dumps(norm.to_dict()))
    norm = Normalizer.from_dict(json.loads(text))
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

FORMAT = 1
"""Version of the :meth:`Normalizer.to_dict` layout."""

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _check_finite(name: str, arr: np.ndarray) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        where = np.argwhere(bad)[:5].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at indices {where}); clean the data")


class Normalizer:
    """State (and optionally action) mean/std normalisation, for numpy and torch.

    Args:
        state_dim: ``D``, width of the state vector.
        action_dim: ``A``, action dimension.
        normalize_actions: also standardise actions (default: actions pass through).
        min_std: floor applied to every standard deviation by :meth:`fit`.

    Until :meth:`fit` is called the statistics are the identity (mean 0, std 1).
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        *,
        normalize_actions: bool = False,
        min_std: float = 1e-2,
    ) -> None:
        if state_dim <= 0 or action_dim <= 0:
            raise ValueError(f"dimensions must be positive, got D={state_dim}, A={action_dim}")
        if not min_std > 0:
            raise ValueError(f"min_std must be positive, got {min_std}")
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.normalize_actions = bool(normalize_actions)
        self.min_std = float(min_std)
        self.state_mean = np.zeros(state_dim, np.float32)
        self.state_std = np.ones(state_dim, np.float32)
        self.action_mean = np.zeros(action_dim, np.float32)
        self.action_std = np.ones(action_dim, np.float32)
        self._torch_cache: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    # ----------------------------------------------------------------------------- fitting
    def fit(self, states: np.ndarray, actions: np.ndarray) -> Normalizer:
        """Compute statistics from data; returns ``self``.

        Args:
            states: ``(N, D)`` raw states.
            actions: ``(M, A)`` actions in ``[-1, 1]`` (``M`` may differ from ``N``).
        """
        states = np.asarray(states, dtype=np.float64)
        actions = np.asarray(actions, dtype=np.float64)
        self._check_width("states", states, self.state_dim)
        self._check_width("actions", actions, self.action_dim)
        if states.ndim != 2 or len(states) == 0 or actions.ndim != 2 or len(actions) == 0:
            raise ValueError(
                f"fit needs non-empty (N, D) states and (M, A) actions, got shapes "
                f"{states.shape} and {actions.shape}"
            )
        _check_finite("states", states)
        _check_finite("actions", actions)
        self.state_mean = states.mean(0).astype(np.float32)
        self.state_std = np.maximum(states.std(0), self.min_std).astype(np.float32)
        self.action_mean = actions.mean(0).astype(np.float32)
        self.action_std = np.maximum(actions.std(0), self.min_std).astype(np.float32)
        self._torch_cache.clear()
        return self

    # ------------------------------------------------------------------------ transforms
    def normalize_state(self, state: ArrayT) -> ArrayT:
        """``(..., D)`` raw state -> normalised state (same type; numpy gives float32)."""
        self._check_width("state", state, self.state_dim)
        return self._apply(state, "state_mean", "state_std", inverse=False)

    def denormalize_state(self, state: ArrayT) -> ArrayT:
        """``(..., D)`` normalised state -> raw state."""
        self._check_width("state", state, self.state_dim)
        return self._apply(state, "state_mean", "state_std", inverse=True)

    def normalize_action(self, action: ArrayT) -> ArrayT:
        """``(..., A)`` action -> the policy's action space (identity by default)."""
        self._check_width("action", action, self.action_dim)
        if not self.normalize_actions:
            return action
        return self._apply(action, "action_mean", "action_std", inverse=False)

    def denormalize_action(self, action: ArrayT) -> ArrayT:
        """``(..., A)`` action in the policy's space -> action (identity by default)."""
        self._check_width("action", action, self.action_dim)
        if not self.normalize_actions:
            return action
        return self._apply(action, "action_mean", "action_std", inverse=True)

    def _apply(self, x: ArrayT, mean_name: str, std_name: str, *, inverse: bool) -> ArrayT:
        if isinstance(x, torch.Tensor):
            mean, std = self._tensor(mean_name, x), self._tensor(std_name, x)
        else:
            x = np.asarray(x, dtype=np.float32)
            mean, std = getattr(self, mean_name), getattr(self, std_name)
        return x * std + mean if inverse else (x - mean) / std

    def _tensor(self, name: str, like: torch.Tensor) -> torch.Tensor:
        dtype = like.dtype if torch.is_floating_point(like) else torch.float32
        key = (name, like.device, dtype)
        t = self._torch_cache.get(key)
        if t is None:
            t = torch.as_tensor(getattr(self, name), dtype=dtype, device=like.device)
            self._torch_cache[key] = t
        return t

    @staticmethod
    def _check_width(name: str, x: Any, width: int) -> None:
        shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
        if len(shape) == 0 or shape[-1] != width:
            raise ValueError(
                f"{name} has shape {shape} but the normalizer expects {width} features in the "
                f"last dimension; was it fit on a different layout?"
            )

    # --------------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (floats as lists)."""
        return {
            "format": FORMAT,
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
            "normalize_actions": self.normalize_actions,
            "min_std": self.min_std,
            "state_mean": self.state_mean.tolist(),
            "state_std": self.state_std.tolist(),
            "action_mean": self.action_mean.tolist(),
            "action_std": self.action_std.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        """Rebuild from :meth:`to_dict` output, validating every field loudly."""
        if not isinstance(data, dict):
            raise ValueError(f"normalizer data must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ValueError(
                f"normalizer format {data.get('format')!r} is not supported (expected {FORMAT})"
            )
        required = ("state_dim", "action_dim", "normalize_actions", "min_std")
        required += ("state_mean", "state_std", "action_mean", "action_std")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"normalizer data is missing fields {missing}")
        norm = cls(
            int(data["state_dim"]),
            int(data["action_dim"]),
            normalize_actions=bool(data["normalize_actions"]),
            min_std=float(data["min_std"]),
        )
        for name, width in (("state", norm.state_dim), ("action", norm.action_dim)):
            for stat in ("mean", "std"):
                key = f"{name}_{stat}"
                arr = np.asarray(data[key], dtype=np.float32)
                if arr.shape != (width,):
                    raise ValueError(
                        f"normalizer {key} has shape {arr.shape}, expected ({width},) "
                        f"from {name}_dim"
                    )
                _check_finite(f"normalizer {key}", arr)
                if stat == "std" and (arr <= 0).any():
                    raise ValueError(f"normalizer {key} has non-positive entries")
                setattr(norm, key, arr)
        return norm

    def __repr__(self) -> str:
        return (
            f"Normalizer(state_dim={self.state_dim}, action_dim={self.action_dim}, "
            f"normalize_actions={self.normalize_actions})"
        )
