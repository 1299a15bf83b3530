"""The fleet server's HTTP API, through FastAPI's TestClient (no sockets)."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from lwd.fleet.registry import build_archive, extract_archive
from lwd.fleet.server import create_app
from lwd.fleet.wire import decode_episode, encode_episode
from lwd.policy.checkpoint import load_policy
from lwd.types import Episode

from .test_fleet_registry import make_checkpoint

TASKS = ["open-drawer", "close-window"]
MSGPACK = {"content-type": "application/msgpack"}
TAR = {"content-type": "application/x-tar"}


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "fleet"


@pytest.fixture
def client(root):
    with TestClient(create_app(root, known_tasks=TASKS)) as c:
        yield c


def store_of(client: TestClient):
    return client.app.state.fleet.store


def upload(client: TestClient, ep: Episode | bytes):
    body = ep if isinstance(ep, bytes) else encode_episode(ep)
    return client.post("/v1/episodes", content=body, headers=MSGPACK)


def test_upload_stores_the_episode(client, make_episode):
    ep = make_episode(6, images=(4, 5))
    r = upload(client, ep)
    assert r.status_code == 201, r.text
    assert r.json() == {"episode_id": ep.episode_id, "stored": True}
    stored = store_of(client).get(ep.episode_id)
    assert np.array_equal(stored.images, ep.images) and np.array_equal(stored.actions, ep.actions)


def test_retried_upload_is_stored_once(client, make_episode):
    ep = make_episode(5)
    first, second = upload(client, ep), upload(client, ep)
    assert first.status_code == second.status_code == 201
    assert first.json()["stored"] is True
    assert second.json() == {"episode_id": ep.episode_id, "stored": False}
    # Same recording re-sent under a fresh id (e.g. a robot lost its ack): still one copy.
    third = upload(client, dataclasses.replace(ep, episode_id="f" * 32, created_at=5.0))
    assert third.json() == {"episode_id": ep.episode_id, "stored": False}
    assert len(store_of(client)) == 1
    assert client.get("/v1/metrics").json()["uploads"] == {"stored": 1, "duplicate": 2}


def test_truncated_payload_is_400_and_the_server_keeps_serving(client, make_episode):
    payload = encode_episode(make_episode(5))
    r = upload(client, payload[: len(payload) // 2])
    assert r.status_code == 400
    assert "not valid msgpack" in r.json()["error"]
    assert upload(client, payload).status_code == 201
    assert client.get("/healthz").json()["ok"] is True


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda ep: {"actions": np.where(np.arange(5)[:, None] == 2, np.nan, ep.actions)}, "NaN"),
        (lambda ep: {"states": ep.states[:-2]}, "5 actions but 4 states"),
        (lambda ep: {"task": "open-drawers"}, "did you mean 'open-drawer'"),
        (lambda ep: {"progress": 1.5}, "progress=1.5"),
    ],
)
def test_schema_violations_are_422_and_nothing_is_stored(client, make_episode, change, match):
    ep = make_episode(5)
    fields = change(ep)
    fields = {
        k: v.astype(np.float32) if isinstance(v, np.ndarray) else v for k, v in fields.items()
    }
    r = upload(client, dataclasses.replace(ep, **fields))
    assert r.status_code == 422
    assert re.search(match, r.json()["error"]) and ep.episode_id in r.json()["error"]
    assert len(store_of(client)) == 0
    assert client.get("/v1/metrics").json()["rejected"]["invalid"] == 1


def test_id_reused_with_different_content_is_409(client, make_episode):
    a = make_episode(5, seed=1)
    b = make_episode(5, seed=2, episode_id=a.episode_id)
    assert upload(client, a).status_code == 201
    r = upload(client, b)
    assert r.status_code == 409 and "already stored with different content" in r.json()["error"]
    assert len(store_of(client)) == 1


def test_size_limit_and_content_type(root, make_episode):
    payload = encode_episode(make_episode(5))
    with TestClient(create_app(root, max_episode_bytes=len(payload) - 1)) as c:
        r = upload(c, payload)
        assert r.status_code == 413 and "exceeds the server's limit" in r.json()["error"]
        chunks = (payload[i : i + 1000] for i in range(0, len(payload), 1000))  # no length
        r = c.post("/v1/episodes", content=chunks, headers=MSGPACK)
        assert r.status_code == 413
        r = c.post("/v1/episodes", content=payload, headers={"content-type": "application/json"})
        assert r.status_code == 415
        rejected = c.get("/v1/metrics").json()["rejected"]
        assert rejected["too_large"] == 2 and rejected["unsupported_media_type"] == 1
        assert len(c.app.state.fleet.store) == 0


def test_snapshots_are_monotonic(client, make_episode):
    assert client.get("/v1/snapshots/latest").json() == {
        "version": None,
        "episodes": 0,
        "episodes_stored": 0,
    }
    upload(client, make_episode(3, seed=1))
    assert client.post("/v1/snapshots").json() == {"version": 1, "episodes": 1}
    upload(client, make_episode(3, seed=2))
    upload(client, make_episode(3, seed=3))
    r = client.post("/v1/snapshots")
    assert r.status_code == 201 and r.json() == {"version": 2, "episodes": 3}
    upload(client, make_episode(3, seed=4))
    latest = client.get("/v1/snapshots/latest").json()
    assert latest == {"version": 2, "episodes": 3, "episodes_stored": 4}


def test_snapshot_episode_listing(client, make_episode):
    r = client.get("/v1/snapshots/1/episodes")
    assert r.status_code == 404 and r.json()["code"] == "snapshot_not_found"
    assert "none was committed yet" in r.json()["error"]
    first = [make_episode(3, seed=s) for s in (1, 2)]
    for ep in first:
        upload(client, ep)
    assert client.post("/v1/snapshots").json()["version"] == 1
    second = [make_episode(3, seed=s) for s in (3, 4, 5)]
    for ep in second:
        upload(client, ep)
    upload(client, first[0])  # a duplicate adds nothing
    assert client.post("/v1/snapshots").json()["version"] == 2
    upload(client, make_episode(3, seed=6))  # after the cut: in no snapshot

    ids = [ep.episode_id for ep in first + second]
    assert client.get("/v1/snapshots/2/episodes").json() == {
        "version": 2,
        "after": None,
        "episode_ids": ids,  # commit order
    }
    r = client.get("/v1/snapshots/2/episodes", params={"after": 1})
    assert r.json() == {"version": 2, "after": 1, "episode_ids": ids[2:]}
    assert client.get("/v1/snapshots/2/episodes?after=0").json()["episode_ids"] == ids
    assert client.get("/v1/snapshots/2/episodes?after=2").json()["episode_ids"] == []
    assert client.get("/v1/snapshots/1/episodes").json()["episode_ids"] == ids[:2]

    r = client.get("/v1/snapshots/1/episodes?after=2")
    assert r.status_code == 400 and "newer than snapshot version 1" in r.json()["error"]
    r = client.get("/v1/snapshots/9/episodes")
    assert r.status_code == 404 and "no snapshot version 9; versions 1..2 exist" in r.text
    assert r.json()["code"] == "snapshot_not_found"
    assert client.get("/v1/snapshots/9/episodes?after=2").status_code == 404
    assert client.get("/v1/snapshots/2/episodes?after=-1").status_code == 422
    assert client.get("/v1/snapshots/x/episodes").status_code == 422


def test_episode_download_round_trips(client, make_episode):
    ep = make_episode(6, images=(4, 5))
    upload(client, ep)
    r = client.get(f"/v1/episodes/{ep.episode_id}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/msgpack"
    got = decode_episode(r.content)
    for field in dataclasses.fields(Episode):
        a, b = getattr(got, field.name), getattr(ep, field.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), field.name
        else:
            assert a == b, field.name
    r = client.get("/v1/episodes/" + "0" * 32)
    assert r.status_code == 404 and r.json()["code"] == "episode_not_found"
    assert "0" * 32 in r.json()["error"]


def test_policy_publish_latest_and_download(client, tmp_path):
    r = client.get("/v1/policies/latest")
    assert r.status_code == 404 and r.json()["code"] == "no_policy"
    assert "no policy has been published" in r.json()["error"]
    archive = build_archive(make_checkpoint(tmp_path / "ckpt"))
    before = time.time()
    r = client.post("/v1/policies", content=archive, headers=TAR)
    assert r.status_code == 201, r.text
    sha = hashlib.sha256(archive).hexdigest()
    created_at = r.json()["created_at"]
    assert before <= created_at <= time.time()
    assert r.json() == {"version": 1, "sha256": sha, "created_at": created_at}
    latest = client.get("/v1/policies/latest").json()
    assert latest == {"version": 1, "sha256": sha, "created_at": created_at}

    r = client.get("/v1/policies/1")
    assert r.status_code == 200 and r.content == archive
    assert r.headers["etag"] == f'"{sha}"' and r.headers["x-checksum-sha256"] == sha
    assert float(r.headers["x-policy-created-at"]) == created_at
    assert r.headers["content-type"] == "application/x-tar"
    extract_archive(r.content, tmp_path / "robot")
    load_policy(tmp_path / "robot")

    r = client.get("/v1/policies/1", headers={"if-none-match": f'"{sha}"'})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == f'"{sha}"'
    r = client.get("/v1/policies/1", headers={"if-none-match": '"stale"'})
    assert r.status_code == 200 and r.content == archive

    r = client.get("/v1/policies/7")
    assert r.status_code == 404 and "no policy version 7" in r.json()["error"]
    assert r.json()["code"] == "policy_not_found"
    assert client.get("/v1/policies/abc").status_code == 422


def test_bad_policy_uploads(client, tmp_path):
    r = client.post("/v1/policies", content=b"garbage" * 100, headers=TAR)
    assert r.status_code == 400 and "not an uncompressed tar" in r.json()["error"]
    ckpt = make_checkpoint(tmp_path / "ckpt")
    (ckpt / "model.safetensors").write_bytes(b"junk")
    r = client.post("/v1/policies", content=build_archive(ckpt), headers=TAR)
    assert r.status_code == 422 and "does not load as a policy" in r.json()["error"]
    r = client.post("/v1/policies", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415
    assert client.get("/v1/policies/latest").status_code == 404


def test_heartbeat_and_registration(client, tmp_path):
    r = client.post("/v1/robots/robot-1/register")
    assert r.json() == {"robot_id": "robot-1", "latest_policy": None}
    beat = {"policy_version": 0, "episodes_done": 3, "status": "running"}
    r = client.post("/v1/robots/robot-2/heartbeat", json=beat)  # implicit registration
    assert r.status_code == 200 and r.json() == {"latest_policy": None}
    client.post("/v1/policies", content=build_archive(make_checkpoint(tmp_path / "c")), headers=TAR)
    assert client.post("/v1/robots/robot-2/heartbeat", json=beat).json() == {"latest_policy": 1}
    robots = client.get("/v1/robots").json()
    assert set(robots) == {"robot-1", "robot-2"}
    assert robots["robot-2"]["episodes_done"] == 3 and robots["robot-2"]["heartbeats"] == 2
    assert robots["robot-2"]["last_seen_age_s"] >= 0

    r = client.post("/v1/robots/robot-2/heartbeat", json={**beat, "episodes_done": -1})
    assert r.status_code == 422 and "episodes_done" in r.json()["error"]
    r = client.post("/v1/robots/robot-2/heartbeat", json={**beat, "battery": 3})
    assert r.status_code == 422 and "battery" in r.json()["error"]
    assert client.post("/v1/robots/bad id!/heartbeat", json=beat).status_code == 400


def test_healthz_metrics_and_prometheus(client, make_episode):
    upload(client, make_episode(3))
    upload(client, b"\x81")
    client.post("/v1/robots/r1/heartbeat", json={"status": "idle"})
    health = client.get("/healthz").json()
    assert health["ok"] is True and health["latest_policy"] is None
    m = client.get("/v1/metrics").json()
    assert m["episodes_stored"] == 1 and m["rejected"]["undecodable"] == 1
    assert m["upload_latency_s"]["count"] == 1 and m["upload_latency_s"]["p99"] > 0
    assert m["robots"]["r1"]["status"] == "idle"

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) lwd_\w+ .+", line), line
            continue
        name, value = line.rsplit(" ", 1)
        assert re.fullmatch(r'lwd_\w+(\{\w+="[^"]*"(,\w+="[^"]*")*\})?', name), line
        samples[name] = float(value)  # "NaN" parses too
    assert samples["lwd_episodes_stored"] == 1
    assert samples['lwd_uploads_total{result="stored"}'] == 1
    assert samples['lwd_uploads_rejected_total{reason="undecodable"}'] == 1
    assert samples["lwd_upload_handler_seconds_count"] == 1
    assert math.isnan(samples["lwd_latest_policy"])
    assert samples["lwd_robots"] == 1 and 'lwd_robot_last_seen_age_seconds{robot="r1"}' in samples


def test_unknown_routes_answer_json_errors(client):
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


def test_restart_over_the_same_root_keeps_everything(root, tmp_path, make_episode):
    ep = make_episode(4)
    archive = build_archive(make_checkpoint(tmp_path / "ckpt"))
    with TestClient(create_app(root, known_tasks=TASKS)) as c:
        upload(c, ep)
        c.post("/v1/snapshots")
        c.post("/v1/policies", content=archive, headers=TAR)
    with TestClient(create_app(root, known_tasks=TASKS)) as c:
        assert c.get("/v1/snapshots/latest").json()["version"] == 1
        assert upload(c, ep).json()["stored"] is False  # the retry after a restart
        assert len(c.app.state.fleet.store) == 1
        assert c.get("/v1/policies/1").content == archive
        assert c.post("/v1/snapshots").json() == {"version": 2, "episodes": 1}
        r = c.post(
            "/v1/policies", content=build_archive(make_checkpoint(tmp_path / "b", 1)), headers=TAR
        )
        assert r.json()["version"] == 2


def test_unexpected_failures_answer_json_500(root, make_episode, monkeypatch):
    app = create_app(root)

    def broken_put(ep):
        raise OSError("disk full")

    monkeypatch.setattr(app.state.fleet.store, "put", broken_put)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = upload(c, make_episode(3))
        assert r.status_code == 500 and "disk full" in r.json()["error"]
        assert c.get("/healthz").status_code == 200
