"""EpisodeStore and the Parquet codec: exact round trips, idempotence, snapshots, filters."""

from __future__ import annotations

import dataclasses
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import assert_same_episode

from lwd.data import (
    EpisodeConflictError,
    EpisodeFileError,
    EpisodeNotFoundError,
    EpisodeStore,
    EpisodeValidationError,
    SnapshotNotFoundError,
    read_episode,
    write_episode,
)
from lwd.types import Source

TASKS = ("open-drawer", "close-window")


@pytest.fixture
def store(tmp_path):
    return EpisodeStore(tmp_path / "store", known_tasks=TASKS)


def _files(store: EpisodeStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((store.root / "episodes").iterdir())}


def test_codec_round_trip_is_exact(tmp_path, make_episode):
    ep = make_episode(9, images=(6, 7), success=True, source=Source.DEMO)
    path = write_episode(ep, tmp_path / "ep.parquet")
    assert_same_episode(read_episode(path), ep)
    assert [p.name for p in tmp_path.iterdir()] == ["ep.parquet"]  # no temp file left
    table = pq.read_table(path)
    assert table.num_rows == 10
    assert table.column("action")[9].is_valid is False
    assert table.column("reward")[9].is_valid is False
    assert table.column("state")[9].is_valid


def test_store_round_trip_is_exact(store, make_episode):
    eps = [make_episode(5, seed=1), make_episode(1, seed=2, images=(4, 4), task="close-window")]
    for ep in eps:
        assert store.put(ep) == ep.episode_id
    assert len(store) == 2
    for ep, back in zip(eps, store.read(), strict=True):
        assert_same_episode(back, ep)
    assert_same_episode(store.get(eps[1].episode_id), eps[1])
    reopened = EpisodeStore(store.root)
    assert reopened.episode_ids() == [e.episode_id for e in eps]
    with sqlite3.connect(store.root / "index.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_put_is_idempotent_on_content(store, make_episode):
    ep = make_episode(4, seed=5)
    assert store.put(ep) == ep.episode_id
    before = _files(store)
    # A retried upload, even under a new id and time, stores nothing new.
    assert store.put(ep) == ep.episode_id
    assert store.put(dataclasses.replace(ep, episode_id="retry", created_at=9.0)) == ep.episode_id
    assert len(store) == 1
    assert _files(store) == before


def test_same_id_different_content_conflicts(store, make_episode):
    ep = make_episode(4, seed=5)
    store.put(ep)
    with pytest.raises(EpisodeConflictError, match=ep.episode_id):
        store.put(dataclasses.replace(ep, success=False, progress=0.5))
    assert len(store) == 1


def test_rejected_episode_changes_nothing(store, make_episode):
    good = make_episode(4, seed=1)
    store.put(good)
    before = _files(store)
    bad_actions = good.actions.copy()
    bad_actions[0, 0] = np.nan
    for bad in (
        make_episode(4, seed=2, task="unknown-task"),
        dataclasses.replace(make_episode(4, seed=3), actions=bad_actions),
    ):
        with pytest.raises(EpisodeValidationError):
            store.put(bad)
    assert len(store) == 1
    assert _files(store) == before
    assert_same_episode(store.get(good.episode_id), good)


def test_snapshots_freeze_what_was_stored(store, make_episode):
    with pytest.raises(SnapshotNotFoundError, match="no snapshot exists yet"):
        store.read(1)
    assert store.latest_snapshot() is None
    a, b, c = (make_episode(3, seed=s) for s in range(3))
    store.put(a)
    v1 = store.snapshot()
    store.put(b)
    store.put(c)
    v2 = store.snapshot()
    v3 = store.snapshot()  # nothing new: still a new version
    assert v1 < v2 < v3
    assert store.latest_snapshot() == v3
    assert store.episode_ids(v1) == [a.episode_id]
    assert [e.episode_id for e in store.read(v2)] == [a.episode_id, b.episode_id, c.episode_id]
    store.put(make_episode(3, seed=9))
    assert len(store.read(v3)) == 3 and len(store.read()) == 4
    with pytest.raises(SnapshotNotFoundError, match=f"versions 1..{v3} exist"):
        store.read(v3 + 1)
    assert EpisodeStore(store.root).snapshot() > v3  # survives reopening


def test_filters(store, make_episode):
    eps = {
        "demo": make_episode(3, seed=1, source=Source.DEMO, success=True),
        "auto": make_episode(3, seed=2, robot_id="robot-1", task="close-window"),
        "play": make_episode(3, seed=3, source=Source.PLAY, robot_id="robot-1"),
        "mixed": make_episode(3, seed=4, success=True),
    }
    mixed_sources = eps["mixed"].sources.copy()
    mixed_sources[1] = Source.INTERVENTION
    eps["mixed"] = dataclasses.replace(eps["mixed"], sources=mixed_sources)
    for ep in eps.values():
        store.put(ep)
    ids = {name: ep.episode_id for name, ep in eps.items()}

    def names(**filters):
        found = store.episode_ids(**filters)
        assert [e.episode_id for e in store.read(**filters)] == found
        return [n for n in ids if ids[n] in found]

    assert names(tasks="close-window") == ["auto"]
    assert names(tasks=["open-drawer"]) == ["demo", "play", "mixed"]
    assert names(tasks=[]) == []
    assert names(sources=[Source.INTERVENTION]) == ["mixed"]
    assert names(sources=["autonomous"]) == ["auto", "mixed"]
    assert names(sources=[0, "play"]) == ["demo", "play"]
    assert names(success=True) == ["demo", "mixed"]
    assert names(success=False) == ["auto", "play"]
    assert names(robots=["robot-1"]) == ["auto", "play"]
    assert names(robots="robot-1", success=False, tasks=TASKS, limit=1) == ["auto"]
    assert names(limit=0) == []


def test_summary(store, make_episode):
    store.put(make_episode(3, seed=1, success=True))
    store.put(make_episode(4, seed=2))
    store.put(make_episode(5, seed=3, task="close-window", source=Source.DEMO))
    s = store.summary()
    assert (s["episodes"], s["steps"], s["latest_snapshot"]) == (3, 12, None)
    assert s["tasks"]["open-drawer"] == {
        "episodes": 2,
        "steps": 7,
        "successes": 1,
        "success_rate": 0.5,
    }
    assert s["sources"]["autonomous"] == {"episodes": 2, "steps": 7}
    assert s["sources"]["demo"] == {"episodes": 1, "steps": 5}
    assert s["sources"]["play"] == {"episodes": 0, "steps": 0}


def test_missing_episode_and_file(store, make_episode):
    with pytest.raises(EpisodeNotFoundError, match="no episode 'nope'"):
        store.get("nope")
    ep = make_episode(3)
    store.put(ep)
    path = store.root / "episodes" / f"{ep.episode_id}.parquet"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"episode {ep.episode_id} is in the index"):
        store.get(ep.episode_id)
    with pytest.raises(FileNotFoundError, match="missing"):
        store.read()


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_corrupt_file_names_path(store, make_episode, damage):
    ep = make_episode(20, seed=4)
    store.put(ep)
    path = store.root / "episodes" / f"{ep.episode_id}.parquet"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 4] ^= 0xFF  # inside a data page: caught by the page checksum
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"not parquet at all" * 10)
    path.write_bytes(bytes(data))
    with pytest.raises(EpisodeFileError, match="truncated, corrupt") as info:
        store.get(ep.episode_id)
    assert str(path) in str(info.value)


def test_concurrent_puts_store_each_content_once(store, make_episode):
    eps = [make_episode(3, seed=s) for s in range(6)]
    # Every episode is uploaded by two threads at once, as retries after a timeout would be.
    with ThreadPoolExecutor(max_workers=6) as pool:
        ids = list(pool.map(store.put, eps + eps))
    assert ids == [e.episode_id for e in eps + eps]
    assert sorted(store.episode_ids()) == sorted(e.episode_id for e in eps)
    assert len(_files(store)) == 6
