"""Episode validation: every malformed case names the problem; content hashes are exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lwd.data.schema import EpisodeValidationError, content_hash, validate_episode
from lwd.types import Source

T = 6
TASKS = ("open-drawer", "close-window", "stack-cubes")


def _set(ep, name, fn):
    """A copy of ``ep`` whose array ``name`` is ``fn(copy of the array)``."""
    arr = getattr(ep, name).copy()
    out = fn(arr)
    return dataclasses.replace(ep, **{name: arr if out is None else out})


def _poke(index, value):
    def fn(arr):
        arr[index] = value

    return fn


# (case id, how to break a valid T=6 episode, substrings the message must contain)
MALFORMED = [
    ("episode_id type", lambda e: dataclasses.replace(e, episode_id=7), ["episode_id"]),
    ("episode_id path", lambda e: dataclasses.replace(e, episode_id="../x"), ["episode_id"]),
    ("robot_id type", lambda e: dataclasses.replace(e, robot_id=3), ["robot_id", "str"]),
    ("robot_id empty", lambda e: dataclasses.replace(e, robot_id=""), ["empty robot_id"]),
    ("instruction empty", lambda e: dataclasses.replace(e, instruction="  "), ["instruction"]),
    ("states list", lambda e: dataclasses.replace(e, states=e.states.tolist()), ["states"]),
    ("zero steps", lambda e: _set(e, "actions", lambda a: a[:0]), ["0 steps"]),
    (
        "states rows",
        lambda e: _set(e, "states", lambda a: a[:-1]),
        [f"{T} actions but {T} states", "one row more", f"{T + 1}"],
    ),
    ("states width", lambda e: _set(e, "states", lambda a: a[:, :-1]), ["states", "(7, 78)"]),
    ("states dtype", lambda e: _set(e, "states", lambda a: a.astype(np.float64)), ["float64"]),
    ("actions width", lambda e: _set(e, "actions", lambda a: a[:, :4]), ["(T, 5)"]),
    ("actions dtype", lambda e: _set(e, "actions", lambda a: a.astype(np.float16)), ["float32"]),
    ("proposals rows", lambda e: _set(e, "proposals", lambda a: a[:-1]), ["proposals", "(6, 5)"]),
    ("rewards shape", lambda e: _set(e, "rewards", lambda a: a[:, None]), ["rewards", "(6,)"]),
    ("rewards dtype", lambda e: _set(e, "rewards", lambda a: a.astype(int)), ["rewards", "int64"]),
    ("sources dtype", lambda e: _set(e, "sources", lambda a: a.astype(np.int64)), ["uint8"]),
    (
        "versions dtype",
        lambda e: _set(e, "policy_versions", lambda a: a.astype(np.int64)),
        ["policy_versions", "int32"],
    ),
    ("nan state", lambda e: _set(e, "states", _poke((2, 3), np.nan)), ["NaN/inf", "states"]),
    ("inf action", lambda e: _set(e, "actions", _poke((1, 0), np.inf)), ["NaN/inf", "actions"]),
    ("nan proposal", lambda e: _set(e, "proposals", _poke((0, 0), np.nan)), ["proposals"]),
    ("nan reward", lambda e: _set(e, "rewards", _poke(0, np.nan)), ["NaN/inf", "rewards"]),
    (
        "action range",
        lambda e: _set(e, "actions", _poke((3, 2), 1.01)),
        ["outside [-1, 1]", "step 3"],
    ),
    ("reward value", lambda e: _set(e, "rewards", _poke(2, 0.5)), ["reward 0.5", "0 or 1"]),
    ("source value", lambda e: _set(e, "sources", _poke(4, 9)), ["source 9 at step 4"]),
    ("version negative", lambda e: _set(e, "policy_versions", _poke(1, -1)), ["-1", ">= 0"]),
    ("success type", lambda e: dataclasses.replace(e, success=1), ["success", "bool"]),
    ("terminated type", lambda e: dataclasses.replace(e, terminated=None), ["terminated"]),
    ("progress range", lambda e: dataclasses.replace(e, progress=1.5), ["progress=1.5", "[0.0"]),
    ("progress nan", lambda e: dataclasses.replace(e, progress=float("nan")), ["progress"]),
    ("progress type", lambda e: dataclasses.replace(e, progress="0.5"), ["progress", "float"]),
    ("cycle negative", lambda e: dataclasses.replace(e, cycle_time_s=-1.0), ["cycle_time_s"]),
    ("cycle inf", lambda e: dataclasses.replace(e, cycle_time_s=float("inf")), ["cycle_time_s"]),
    (
        "play success",
        lambda e: dataclasses.replace(_set(e, "sources", _poke(0, Source.PLAY)), success=True),
        ["successful", "play"],
    ),
    (
        "images shape",
        lambda e: dataclasses.replace(e, images=np.zeros((T, 4, 4, 3), np.uint8)),
        ["images", "(7, h, w, 3)"],
    ),
    (
        "images channels",
        lambda e: dataclasses.replace(e, images=np.zeros((T + 1, 4, 4, 1), np.uint8)),
        ["images"],
    ),
    (
        "images dtype",
        lambda e: dataclasses.replace(e, images=np.zeros((T + 1, 4, 4, 3), np.float32)),
        ["images", "uint8"],
    ),
]


def test_valid_episode_passes(make_episode):
    validate_episode(make_episode(T), known_tasks=TASKS)
    validate_episode(make_episode(1, source=Source.PLAY, images=(4, 5)))
    validate_episode(make_episode(T, source=Source.DEMO, success=True))


@pytest.mark.parametrize(
    "breaker, expected", [(b, e) for _, b, e in MALFORMED], ids=[c for c, _, _ in MALFORMED]
)
def test_malformed_episode_is_named(make_episode, breaker, expected):
    ep = make_episode(T)
    bad = breaker(ep)
    with pytest.raises(EpisodeValidationError) as info:
        validate_episode(bad, known_tasks=TASKS)
    message = str(info.value)
    if isinstance(bad.episode_id, str) and bad.episode_id == ep.episode_id:
        assert ep.episode_id in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_unknown_task_lists_known_and_suggests(make_episode):
    ep = make_episode(T, task="open-drawr")
    with pytest.raises(EpisodeValidationError, match="unknown task 'open-drawr'") as info:
        validate_episode(ep, known_tasks=TASKS)
    assert "did you mean 'open-drawer'" in str(info.value)
    assert "close-window, open-drawer, stack-cubes" in str(info.value)
    validate_episode(ep)  # no known_tasks: any name goes


def test_action_tolerance(make_episode):
    ep = _set(make_episode(T), "actions", _poke((0, 0), np.float32(1.0 + 5e-7)))
    validate_episode(ep)


def test_content_hash_is_stable(make_episode):
    a, b = make_episode(T, seed=3), make_episode(T, seed=3)
    assert content_hash(a) == content_hash(b)
    assert len(content_hash(a)) == 64
    # The upload identity is not content: a retry under a new id or time hashes the same.
    moved = dataclasses.replace(a, episode_id="other", created_at=5.0)
    assert content_hash(moved) == content_hash(a)


ARRAYS = ["states", "actions", "proposals", "rewards", "sources", "policy_versions"]


@pytest.mark.parametrize("name", ARRAYS)
def test_content_hash_sees_every_array(make_episode, name):
    ep = make_episode(T)
    base = content_hash(ep)

    def nudge(arr):
        arr.reshape(-1)[-1] = arr.reshape(-1)[-1] + 1

    assert content_hash(_set(ep, name, nudge)) != base
    # Same numbers, different dtype or shape: different content.
    assert content_hash(_set(ep, name, lambda a: a.astype(np.float64))) != base
    assert content_hash(_set(ep, name, lambda a: a[None])) != base


@pytest.mark.parametrize(
    "change",
    [
        {"robot_id": "robot-9"},
        {"task": "close-window"},
        {"instruction": "something else"},
        {"success": True},
        {"terminated": True},
        {"progress": 0.25},
        {"cycle_time_s": 99.0},
    ],
)
def test_content_hash_sees_metadata(make_episode, change):
    ep = make_episode(T)
    assert content_hash(dataclasses.replace(ep, **change)) != content_hash(ep)


def test_content_hash_sees_images(make_episode):
    ep = make_episode(T, images=(3, 4))
    assert content_hash(dataclasses.replace(ep, images=None)) != content_hash(ep)

    def flip_one_bit(arr):
        arr.reshape(-1)[9] ^= 1

    assert content_hash(_set(ep, "images", flip_one_bit)) != content_hash(ep)


def test_unknown_task_without_close_match(make_episode):
    with pytest.raises(EpisodeValidationError, match="unknown task 'zzz'; known tasks: close"):
        validate_episode(make_episode(T, task="zzz"), known_tasks=TASKS)
