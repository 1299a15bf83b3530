"""Spool: on disk first, removed only on acknowledgement, rejections moved aside."""

from __future__ import annotations

import os
import random
import time

import numpy as np

from lwd.fleet.client import Backoff, RejectedError, TransientError
from lwd.fleet.spool import Spool


class FakeClient:
    """Fails transiently ``fail`` times, then acknowledges (or rejects with ``reject``)."""

    def __init__(self, fail: int = 0, reject: str | None = None):
        self.fail, self.reject = fail, reject
        self.calls, self.stored = 0, []

    def upload_episode(self, ep):
        self.calls += 1
        if self.fail > 0:
            self.fail -= 1
            raise TransientError("connection refused")
        if self.reject:
            raise RejectedError(422, self.reject)
        self.stored.append(ep.episode_id)
        return {"episode_id": ep.episode_id, "stored": True}


class Clock:
    def __init__(self):
        self.t = 1_700_000_000.0

    def __call__(self):
        self.t += 1.0
        return self.t


NO_WAIT = Backoff(attempts=3, base_s=0.0)


def test_spool_survives_a_restart(tmp_path, make_episode):
    ep = make_episode(4)
    Spool(tmp_path / "spool").put(ep)
    torn = tmp_path / "spool" / "pending" / ".x.parquet.abc.tmp"
    torn.write_bytes(b"torn")  # a crash, an hour ago
    os.utime(torn, (time.time() - 3600, time.time() - 3600))
    (tmp_path / "spool" / "pending" / ".y.parquet.abc.tmp").write_bytes(b"")  # a live write
    again = Spool(tmp_path / "spool")
    [path] = again.pending()
    back = again.read(path)
    assert back.episode_id == ep.episode_id and np.array_equal(back.actions, ep.actions)
    assert [p.name for p in (tmp_path / "spool" / "pending").glob(".*")] == [".y.parquet.abc.tmp"]


def test_pending_is_oldest_first_and_drain_keeps_order(tmp_path, make_episode):
    spool = Spool(tmp_path, clock=Clock())
    eps = [make_episode(3, seed=s) for s in (5, 1, 3)]
    for ep in eps:
        spool.put(ep)
    client = FakeClient()
    result = spool.drain(client, max_items=2, backoff=NO_WAIT)
    assert client.stored == [eps[0].episode_id, eps[1].episode_id]
    assert (result.uploaded, result.pending, result.error) == (2, 1, None)
    spool.drain(client, backoff=NO_WAIT)
    assert client.stored == [e.episode_id for e in eps] and len(spool) == 0


def test_transient_failures_are_retried_with_backoff(tmp_path, make_episode):
    spool = Spool(tmp_path)
    spool.put(make_episode(3))
    client, waits = FakeClient(fail=2), []
    backoff = Backoff(attempts=3, base_s=0.1, factor=2.0, jitter=0.5)
    result = spool.drain(client, backoff=backoff, rng=random.Random(0), sleep=waits.append)
    assert (result.uploaded, result.pending, result.rejected, result.error) == (1, 0, 0, None)
    assert client.calls == 3 and len(client.stored) == 1 and spool.pending() == []
    assert len(waits) == 2 and 0.05 <= waits[0] <= 0.1 and 0.1 <= waits[1] <= 0.2
    [acked] = [e for e in spool.events() if e["event"] == "acked"]
    assert acked["attempts"] == 3 and acked["stored"] is True


def test_drain_stops_at_the_first_lasting_transient_failure(tmp_path, make_episode):
    spool = Spool(tmp_path, clock=Clock())
    spool.put(make_episode(3, seed=1))
    spool.put(make_episode(3, seed=2))
    client = FakeClient(fail=100)
    result = spool.drain(client, backoff=NO_WAIT, sleep=lambda s: None)
    assert client.calls == 3  # one episode's attempts, then stop
    assert (result.uploaded, result.pending) == (0, 2) and "connection refused" in result.error


def test_rejected_episodes_are_moved_aside_with_the_message(tmp_path, make_episode):
    spool = Spool(tmp_path, clock=Clock())
    bad, good = make_episode(3, seed=1), make_episode(3, seed=2)
    spool.put(bad)
    spool.put(good)
    client = FakeClient(reject="episode has 3 actions but 2 states")
    result = spool.drain(client, max_items=1, backoff=NO_WAIT)
    assert (result.rejected, result.uploaded, result.pending) == (1, 0, 1)
    assert client.calls == 1  # never retried
    [path] = spool.rejected()
    assert bad.episode_id in path.name
    assert "3 actions but 2 states" in Spool.rejection_reason(path)
    client.reject = None
    assert spool.drain(client, backoff=NO_WAIT).uploaded == 1
    assert client.stored == [good.episode_id] and len(spool.rejected()) == 1


def test_a_corrupt_spool_file_is_moved_aside(tmp_path, make_episode):
    spool = Spool(tmp_path)
    path = spool.put(make_episode(3))
    path.write_bytes(path.read_bytes()[:100])
    result = spool.drain(FakeClient(), backoff=NO_WAIT)
    assert (result.rejected, result.pending) == (1, 0)
    assert "unreadable spool file" in Spool.rejection_reason(spool.rejected()[0])
