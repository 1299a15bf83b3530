"""Nothing is lost, across real processes: ``lwd server`` and synthetic ``lwd robot`` children
killed (SIGKILL) at the worst moments, then restarted on the same directories.

What "nothing lost" means here: every episode a robot spooled is in the store exactly once
(episodes are unique by content, so one row each), no robot keeps anything pending or refused,
and the store's files and its SQLite index agree.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from lwd.data.schema import EpisodeValidationError, validate_episode
from lwd.data.store import EpisodeStore
from lwd.fleet.client import FleetClient
from lwd.fleet.spool import Spool
from lwd.fleet.wire import encode_episode
from lwd.sim.tasks import task_names

from .fleet_process import ServerProcess, robot_process
from .slow_proxy import SlowProxy
from .test_fleet_registry import make_checkpoint

MSGPACK = {"content-type": "application/msgpack"}


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path):
    server = ServerProcess(tmp_path / "fleet").start()
    with FleetClient(server.url) as client:
        client.publish_policy(make_checkpoint(tmp_path / "ckpt"))
    yield server
    server.kill()


def pending(workdir: Path, robot_id: str) -> int:
    """Episodes waiting in a robot's spool, counted without opening it (it is live)."""
    return len(list((workdir / robot_id / "spool" / "pending").glob("*.parquet")))


def spool_events(workdir: Path, robot_id: str, event: str) -> list[dict]:
    return [e for e in Spool(workdir / robot_id / "spool").events() if e["event"] == event]


def assert_store_consistent(root: Path) -> list[str]:
    """Index rows and episode files agree one to one, and every file reads back; the ids."""
    store = EpisodeStore(root / "store")
    ids = store.episode_ids()
    assert len(ids) == len(set(ids))
    assert [ep.episode_id for ep in store.read()] == ids  # each indexed file is there, intact
    files = {p.stem for p in (root / "store" / "episodes").glob("*.parquet")}
    assert files == set(ids), "an episode file without an index row, or the reverse"
    with sqlite3.connect(root / "store" / "index.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return ids


def test_robot_killed_mid_upload_and_before_its_ack_loses_nothing(server, tmp_path):
    work = tmp_path / "robots"
    proxy = SlowProxy(server.port).start()
    big = ("--steps", "3000", "--episode-s", "0")  # ~1 MB episodes: ~7 s through the proxy
    try:
        # 1. SIGKILL while the episode's bytes are on their way: the server stores nothing.
        proxy.mode = "slow"
        robot = robot_process(proxy.url, "r", work, *big)
        assert proxy.upload_in_flight.wait(60), robot.output()
        robot.kill()
        assert len(Spool(work / "r" / "spool")) >= 1 and server.stored() == 0

        # 2. SIGKILL after the server stored an upload but before the robot got the ack.
        proxy.mode = "hold"
        robot = robot_process(proxy.url, "r", work, *big)
        assert proxy.answer_held.wait(60), robot.output()
        wait_for(lambda: server.stored() == 1, 10, "the held upload to be stored")
        robot.kill()
        assert len(Spool(work / "r" / "spool")) >= 1  # still waiting for an ack

        # 3. Restarted on the same workdir, the robot drains everything.
        proxy.mode = "pass"
        robot = robot_process(proxy.url, "r", work, *big, "--episodes", "1")
        assert robot.wait(60) == 0, robot.output()
    finally:
        proxy.close()
    spooled = {e["episode_id"] for e in spool_events(work, "r", "episode")}
    acked = [e for e in spool_events(work, "r", "acked")]
    assert len(spooled) >= 3
    assert len(Spool(work / "r" / "spool")) == 0 and not Spool(work / "r" / "spool").rejected()
    assert set(assert_store_consistent(server.root)) == spooled  # each once: unique content
    assert any(not e["stored"] for e in acked)  # the re-sent upload was answered "duplicate"
    metrics = httpx.get(f"{server.url}/v1/metrics").json()
    assert metrics["uploads"]["duplicate"] >= 1 and metrics["episodes_stored"] == len(spooled)


def test_server_killed_and_restarted_mid_run_loses_nothing(server, tmp_path):
    work = tmp_path / "robots"
    light = ("--episode-s", "0.3", "--steps", "200")
    robots = robot_process(server.url, "rack", work, *light, "--count", "3")
    ids = ["rack-0", "rack-1", "rack-2"]
    try:
        wait_for(lambda: server.stored() >= 4, 60, "robots to upload")
        before = server.stored()
        server.kill()  # SIGKILL mid-run: uploads in flight are cut
        wait_for(lambda: sum(pending(work, r) for r in ids) >= 3, 20, "robots to spool")
        server.start()  # same root, same port
        # The >= 3 spooled while it was down, and more produced since.
        wait_for(lambda: server.stored() >= before + 7, 60, "uploads after the restart")
    finally:
        code = robots.terminate()  # each robot finishes, spools and drains its episode
    assert code == 0, robots.output()

    stored = set(assert_store_consistent(server.root))
    spooled, acked = set(), set()
    for rid in ids:
        spooled |= {e["episode_id"] for e in spool_events(work, rid, "episode")}
        acked |= {e["episode_id"] for e in spool_events(work, rid, "acked")}
        assert len(Spool(work / rid / "spool")) == 0 and not Spool(work / rid / "spool").rejected()
    assert acked == spooled == stored


def test_bad_uploads_get_clear_errors_and_the_server_keeps_serving(server, make_episode):
    def upload(body: bytes) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/episodes", content=body, headers=MSGPACK)

    def still_serving(seed: int) -> None:
        assert httpx.get(f"{server.url}/healthz").json()["ok"] is True
        r = upload(encode_episode(make_episode(5, seed=seed)))
        assert r.status_code == 201 and r.json()["stored"] is True

    ep = make_episode(6, seed=1)
    first, again = upload(encode_episode(ep)), upload(encode_episode(ep))
    assert first.status_code == again.status_code == 201
    assert first.json()["stored"] is True
    assert again.json() == {"episode_id": ep.episode_id, "stored": False}  # a duplicate
    still_serving(seed=2)

    payload = encode_episode(make_episode(6, seed=3))
    r = upload(payload[: len(payload) // 2])
    assert r.status_code == 400 and "not valid msgpack" in r.json()["error"]
    still_serving(seed=4)

    bad = make_episode(6, seed=5)
    actions = bad.actions.copy()
    actions[2, 1] = np.nan
    bad = dataclasses.replace(bad, actions=actions)
    with pytest.raises(EpisodeValidationError) as expected:
        validate_episode(bad, known_tasks=task_names())
    r = upload(encode_episode(bad))
    assert r.status_code == 422 and r.json()["error"] == str(expected.value)
    still_serving(seed=6)

    metrics = httpx.get(f"{server.url}/v1/metrics").json()
    assert metrics["uploads"] == {"stored": 4, "duplicate": 1}
    assert metrics["rejected"]["undecodable"] == 1 and metrics["rejected"]["invalid"] == 1
    assert metrics["episodes_stored"] == 4
