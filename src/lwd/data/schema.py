"""What a well-formed :class:`~lwd.types.Episode` is, and its content hash.

Every episode is checked here before anything stores or trains on it, so a robot's bug surfaces
as one clear error at upload time instead of a NaN in the learner hours later. Checks stop at the
first problem and the message names the episode, the field, what was found and what is expected.

Usage::

    validate_episode(ep, known_tasks=suite.task_names)  # raises EpisodeValidationError
    key = content_hash(ep)  # the store deduplicates on this
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Collection
from numbers import Real

import numpy as np

from lwd.sim.layout import ACTION_DIM, STATE_DIM
from lwd.types import Episode, Source

#: Slack on the ``[-1, 1]`` action bound, for float32 round-off of clipped actions.
ACTION_TOLERANCE = 1e-6

# Episode ids become file names, so they must be safe path components everywhere.
_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_SOURCE_VALUES = np.array([s.value for s in Source], dtype=np.uint8)


class EpisodeValidationError(ValueError):
    """An episode is malformed; the message says what is wrong and what is expected."""


def _fail(ep_id: object, problem: str) -> None:
    raise EpisodeValidationError(f"episode {ep_id} {problem}")


def _check_array(
    ep_id: str, name: str, value: object, shape: tuple[int, ...], dtype: type, hint: str
) -> np.ndarray:
    """Check one array field's type, shape and dtype; ``hint`` explains the expected shape."""
    if not isinstance(value, np.ndarray):
        _fail(ep_id, f"has {name} of type {type(value).__name__}; expected a numpy array")
    if value.shape != shape:
        _fail(ep_id, f"has {name} of shape {value.shape}; expected {shape} ({hint})")
    if value.dtype != np.dtype(dtype):
        _fail(ep_id, f"has {name} of dtype {value.dtype}; expected {np.dtype(dtype)}")
    return value


def _check_finite(ep_id: str, name: str, value: np.ndarray) -> None:
    bad = ~np.isfinite(value)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        _fail(
            ep_id,
            f"has {int(bad.sum())} NaN/inf value(s) in {name} (first at index {first}); "
            "every number must be finite",
        )


def _check_real(ep_id: str, name: str, value: object, low: float, high: float) -> None:
    # bool is an int subclass; True as a progress is a bug, not a number.
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real):
        _fail(ep_id, f"has {name} of type {type(value).__name__}; expected a float")
    if not (math.isfinite(value) and low <= value <= high):
        _fail(ep_id, f"has {name}={value!r}; expected a finite number in [{low}, {high}]")


def _check_text(ep_id: str, name: str, value: object, allow_empty: bool = False) -> None:
    if not isinstance(value, str):
        _fail(ep_id, f"has {name} of type {type(value).__name__}; expected a str")
    if not allow_empty and not value.strip():
        _fail(ep_id, f"has an empty {name}; expected a non-empty string")


def validate_episode(
    ep: Episode,
    known_tasks: Collection[str] | None = None,
    state_dim: int = STATE_DIM,
    action_dim: int = ACTION_DIM,
) -> None:
    """Check that an episode is well formed; raise at the first problem found.

    Args:
        ep: the episode; ``T = ep.actions.shape[0]`` steps.
        known_tasks: task names the suite knows; ``None`` accepts any non-empty task name.
        state_dim: ``D``, the width of a state row.
        action_dim: ``A``, the width of an action row.

    Raises:
        EpisodeValidationError: naming the episode id, the field, what it holds and what is
            expected. Checked: field types; ``T >= 1``; states ``(T+1, D)`` float32; actions and
            proposals ``(T, A)`` float32; rewards ``(T,)`` float32 in ``{0, 1}``; sources
            ``(T,)`` uint8 values of :class:`Source`; policy_versions ``(T,)`` int32 ``>= 0``;
            no NaN/inf in float arrays; actions in ``[-1, 1]`` (up to 1e-6); a known task;
            non-empty robot_id and instruction; no success if any step is play; images, if
            present, ``(T+1, h, w, 3)`` uint8; progress in ``[0, 1]``; cycle_time_s and
            created_at finite and ``>= 0``.
    """
    if not isinstance(ep, Episode):
        raise EpisodeValidationError(f"expected an Episode, got {type(ep).__name__}")
    ep_id = ep.episode_id
    if not isinstance(ep_id, str) or not _ID_PATTERN.fullmatch(ep_id):
        _fail(
            repr(ep_id),
            "has an invalid episode_id; expected 1-128 letters, digits, '-' or '_' "
            "(e.g. uuid.uuid4().hex), since it names the episode's file",
        )
    _check_text(ep_id, "robot_id", ep.robot_id)
    _check_text(ep_id, "task", ep.task)
    _check_text(ep_id, "instruction", ep.instruction)

    # Actions fix T; every other per-step array is checked against them.
    actions = ep.actions
    if not isinstance(actions, np.ndarray):
        _fail(ep_id, f"has actions of type {type(actions).__name__}; expected a numpy array")
    if actions.ndim != 2 or actions.shape[1] != action_dim:
        _fail(ep_id, f"has actions of shape {actions.shape}; expected (T, {action_dim})")
    t = actions.shape[0]
    if t < 1:
        _fail(ep_id, "has 0 steps; an episode needs at least one action")
    _check_array(ep_id, "actions", actions, (t, action_dim), np.float32, "T steps")
    states = ep.states
    if isinstance(states, np.ndarray) and states.ndim >= 1 and states.shape[0] != t + 1:
        _fail(
            ep_id,
            f"has {t} actions but {states.shape[0]} states; states need one row more than "
            f"actions (the final observation), i.e. {t + 1}",
        )
    _check_array(ep_id, "states", states, (t + 1, state_dim), np.float32, "T+1 observations")
    proposals = _check_array(
        ep_id, "proposals", ep.proposals, (t, action_dim), np.float32, "one per action"
    )
    rewards = _check_array(ep_id, "rewards", ep.rewards, (t,), np.float32, "one per action")
    sources = _check_array(ep_id, "sources", ep.sources, (t,), np.uint8, "one per action")
    versions = _check_array(
        ep_id, "policy_versions", ep.policy_versions, (t,), np.int32, "one per action"
    )

    for name, arr in (("states", states), ("actions", actions), ("proposals", proposals)):
        _check_finite(ep_id, name, arr)
    _check_finite(ep_id, "rewards", rewards)
    bound = 1.0 + ACTION_TOLERANCE
    outside = np.abs(actions) > bound
    if outside.any():
        step = int(np.argwhere(outside)[0][0])
        _fail(
            ep_id,
            f"has {int(outside.any(axis=1).sum())} action(s) outside [-1, 1] (first at step "
            f"{step}: {actions[step].tolist()}); clip actions before recording them",
        )
    bad_rewards = (rewards != 0.0) & (rewards != 1.0)
    if bad_rewards.any():
        step = int(np.argmax(bad_rewards))
        _fail(
            ep_id,
            f"has reward {float(rewards[step])!r} at step {step}; rewards are sparse, each 0 or 1",
        )
    bad_sources = ~np.isin(sources, _SOURCE_VALUES)
    if bad_sources.any():
        step = int(np.argmax(bad_sources))
        known = ", ".join(f"{s.value}={s.name.lower()}" for s in Source)
        _fail(ep_id, f"has source {int(sources[step])} at step {step}; expected one of {known}")
    if (versions < 0).any():
        step = int(np.argmax(versions < 0))
        _fail(
            ep_id,
            f"has policy version {int(versions[step])} at step {step}; versions are >= 0 "
            "(0 for scripted actors)",
        )

    for name in ("success", "terminated"):
        value = getattr(ep, name)
        if not isinstance(value, bool | np.bool_):
            _fail(ep_id, f"has {name} of type {type(value).__name__}; expected a bool")
    _check_real(ep_id, "progress", ep.progress, 0.0, 1.0)
    _check_real(ep_id, "cycle_time_s", ep.cycle_time_s, 0.0, math.inf)
    _check_real(ep_id, "created_at", ep.created_at, 0.0, math.inf)
    if ep.success and (sources == Source.PLAY).any():
        _fail(
            ep_id,
            "is marked successful but has play steps; play episodes always count as "
            "unsuccessful (set success=False)",
        )

    if ep.images is not None:
        images = ep.images
        if not isinstance(images, np.ndarray):
            _fail(ep_id, f"has images of type {type(images).__name__}; expected a numpy array")
        if images.ndim != 4 or images.shape[0] != t + 1 or images.shape[3] != 3:
            _fail(
                ep_id,
                f"has images of shape {images.shape}; expected (T+1, h, w, 3) = "
                f"({t + 1}, h, w, 3), one RGB frame per state",
            )
        if images.shape[1] < 1 or images.shape[2] < 1:
            _fail(ep_id, f"has empty images of shape {images.shape}; expected h, w >= 1")
        if images.dtype != np.uint8:
            _fail(ep_id, f"has images of dtype {images.dtype}; expected uint8")

    if known_tasks is not None and ep.task not in known_tasks:
        names = sorted(known_tasks)
        close = difflib.get_close_matches(ep.task, names, n=3)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        _fail(ep_id, f"has unknown task {ep.task!r}{hint}; known tasks: {', '.join(names)}")


def _array_bytes(name: str, arr: np.ndarray | None) -> bytes:
    if arr is None:
        return f"{name}:none;".encode()
    # dtype.str includes byte order, so equal numbers in different layouts hash differently.
    header = f"{name}:{arr.dtype.str}:{arr.shape};".encode()
    return header + np.ascontiguousarray(arr).tobytes()


def content_hash(ep: Episode) -> str:
    """Hash what an episode recorded, ignoring when and under which id it was uploaded.

    Covers every array (bytes, dtype and shape) and every metadata field except
    ``episode_id`` and ``created_at``, so a retried upload of the same recording hashes the
    same. Floats are hashed exactly (``float.hex``).

    Args:
        ep: the episode (should be valid; see :func:`validate_episode`).

    Returns:
        64-character sha256 hex digest.
    """
    h = hashlib.sha256(b"lwd.episode.v1;")
    for name in ("robot_id", "task", "instruction"):
        text = str(getattr(ep, name)).encode()
        h.update(f"{name}:{len(text)}:".encode() + text + b";")
    h.update(f"success:{bool(ep.success)};terminated:{bool(ep.terminated)};".encode())
    h.update(f"progress:{float(ep.progress).hex()};".encode())
    h.update(f"cycle_time_s:{float(ep.cycle_time_s).hex()};".encode())
    for name in ("states", "actions", "proposals", "rewards", "sources", "policy_versions"):
        h.update(_array_bytes(name, getattr(ep, name)))
    h.update(_array_bytes("images", ep.images))
    return h.hexdigest()
