"""FleetClient against a real fleet server over sockets, and against broken servers."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import time

import httpx
import numpy as np
import pytest

from lwd.fleet.client import (
    Backoff,
    FleetClient,
    IntegrityError,
    PolicyRef,
    RejectedError,
    TransientError,
)
from lwd.fleet.registry import build_archive
from lwd.policy.checkpoint import load_policy

from .live_server import LiveServer, free_port
from .test_fleet_registry import TINY, make_checkpoint

FAST = Backoff(base_s=0.01, max_s=0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = LiveServer(tmp_path_factory.mktemp("fleet"), known_tasks=["open-drawer"]).start()
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with FleetClient(server.url, timeout_s=5.0, retries=1, backoff=FAST) as c:
        yield c


def test_upload_and_retried_upload_are_stored_once(server, client, make_episode):
    ep = make_episode(5, seed=11)
    assert client.upload_episode(ep) == {"episode_id": ep.episode_id, "stored": True}
    assert client.upload_episode(ep) == {"episode_id": ep.episode_id, "stored": False}
    assert server.store.get(ep.episode_id).num_steps == 5
    assert client.healthz()["ok"] is True


def test_invalid_episode_is_rejected_with_the_servers_message(client, make_episode):
    with pytest.raises(RejectedError, match="did you mean 'open-drawer'") as info:
        client.upload_episode(make_episode(3, seed=12, task="open-drawers"))
    assert info.value.status == 422 and "open-drawers" in info.value.message


def test_latest_and_download_policy_with_checksums(server, client, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    if client.latest_policy() is None:
        ref = client.publish_policy(ckpt)
    else:  # another test of this module published first
        ref = client.latest_policy()
    assert client.latest_policy() == ref
    assert ref[:2] == (ref.version, hashlib.sha256(build_archive(ckpt)).hexdigest())
    info = server.registry.info(ref.version)
    assert ref == PolicyRef(ref.version, info.sha256, info.created_at)
    assert isinstance(ref.created_at, float) and ref.created_at <= time.time()
    dest = client.download_policy(ref.version, tmp_path / "robot" / str(ref.version))
    assert load_policy(dest).cfg == TINY
    assert build_archive(dest) == build_archive(ckpt)
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]
    # Already there: answered 304, files untouched.
    mtime = (dest / "model.safetensors").stat().st_mtime_ns
    assert client.download_policy(ref.version, dest, sha256=ref.sha256) == dest
    assert (dest / "model.safetensors").stat().st_mtime_ns == mtime
    # Damaged local copy: fetched again.
    (dest / "config.json").write_text("{}")
    client.download_policy(ref.version, dest)
    assert build_archive(dest) == build_archive(ckpt)
    with pytest.raises(RejectedError, match="no policy version 99") as info:
        client.download_policy(99, tmp_path / "robot" / "99")
    assert info.value.status == 404 and not (tmp_path / "robot" / "99").exists()


def test_snapshot_listing_and_episode_download(server, client, make_episode):
    client.upload_episode(make_episode(3, seed=31))
    v1 = client.commit_snapshot()
    assert client.latest_snapshot() == v1 == server.store.latest_snapshot()
    new = [make_episode(4, seed=s, images=(3, 4)) for s in (32, 33)]
    for ep in new:
        client.upload_episode(ep)
    v2 = client.commit_snapshot()
    assert v2 == v1 + 1 == client.latest_snapshot()
    ids = [ep.episode_id for ep in new]
    assert client.snapshot_episode_ids(v2, after=v1) == ids
    assert client.snapshot_episode_ids(v2) == server.store.episode_ids(v2)
    assert client.snapshot_episode_ids(v2)[-2:] == ids
    assert client.snapshot_episode_ids(v2, after=v2) == []

    got = client.get_episode(ids[0])
    for field in dataclasses.fields(got):
        a, b = getattr(got, field.name), getattr(new[0], field.name)
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), field.name
        else:
            assert a == b, field.name

    with pytest.raises(RejectedError, match=f"no snapshot version {v2 + 5}") as info:
        client.snapshot_episode_ids(v2 + 5)
    assert info.value.status == 404 and info.value.code == "snapshot_not_found"
    with pytest.raises(RejectedError) as info:
        client.snapshot_episode_ids(v1, after=v2)
    assert info.value.status == 400 and info.value.code is None
    with pytest.raises(RejectedError) as info:
        client.get_episode("0" * 32)
    assert info.value.status == 404 and info.value.code == "episode_not_found"
    with pytest.raises(TypeError):
        client.snapshot_episode_ids("1")


def test_no_snapshot_yet_is_none(tmp_path):
    s = LiveServer(tmp_path / "empty").start()
    try:
        with FleetClient(s.url, timeout_s=5.0) as c:
            assert c.latest_snapshot() is None
            with pytest.raises(RejectedError, match="none was committed yet"):
                c.snapshot_episode_ids(1)
    finally:
        s.stop()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": "no policy has been published yet", "code": "no_policy"}, None),
        ({"error": "worded differently", "code": "no_policy"}, None),
        ({"error": "no policy has been published yet (POST /v1/policies)"}, None),  # old server
        ({"error": "Not Found"}, RejectedError),  # wrong base_url
        ({"error": "no policy has been published yet", "code": "other"}, RejectedError),
    ],
)
def test_latest_policy_404_is_told_apart_by_code(body, expected):
    transport = httpx.MockTransport(lambda request: httpx.Response(404, json=body))
    with FleetClient("http://fleet", transport=transport) as c:
        if expected is None:
            assert c.latest_policy() is None
        else:
            with pytest.raises(expected) as info:
                c.latest_policy()
            assert info.value.code == body.get("code")


def test_old_server_without_created_at_and_unreadable_answers():
    answers = {
        "/v1/policies/latest": httpx.Response(200, json={"version": 3, "sha256": "ab"}),
        "/v1/snapshots/1/episodes": httpx.Response(200, json={"episode_ids": "nope"}),
        "/v1/episodes/e1": httpx.Response(200, content=b"\xc1garbage"),
    }
    transport = httpx.MockTransport(lambda request: answers[request.url.path])
    with FleetClient("http://fleet", transport=transport, retries=0) as c:
        assert c.latest_policy() == PolicyRef(3, "ab") and c.latest_policy().created_at is None
        with pytest.raises(TransientError, match="unreadable answer"):
            c.snapshot_episode_ids(1)
        with pytest.raises(TransientError, match="unreadable answer"):
            c.get_episode("e1")


def test_heartbeat_and_register(server, client):
    latest = client.register("robot-7")
    assert latest == server.registry.latest()
    assert client.heartbeat("robot-7", None, 3, "running") == latest
    assert server.app.state.fleet.monitor.robots()["robot-7"]["episodes_done"] == 3
    with pytest.raises(RejectedError) as info:
        client.heartbeat("bad id!", None, 0)
    assert info.value.status == 400


def test_no_policy_yet_is_none(tmp_path):
    s = LiveServer(tmp_path / "empty").start()
    try:
        with FleetClient(s.url, timeout_s=5.0) as c:
            assert c.latest_policy() is None
    finally:
        s.stop()


def test_dead_port_fails_fast_as_transient():
    with FleetClient(
        f"http://127.0.0.1:{free_port()}", timeout_s=1.0, retries=2, backoff=FAST
    ) as c:
        start = time.monotonic()
        with pytest.raises(TransientError, match="cannot reach the fleet server"):
            c.latest_policy()
        assert time.monotonic() - start < 1.0


def test_a_silent_server_hits_the_deadline():
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with FleetClient(url, timeout_s=0.3, retries=5, backoff=FAST) as c:
            start = time.monotonic()
            with pytest.raises(TransientError, match="did not answer within 0.3 s"):
                c.heartbeat("robot-1", None, 0)
            assert time.monotonic() - start < 1.0  # one deadline for all the retries


def _mock_client(handler) -> FleetClient:
    return FleetClient(
        "http://fleet",
        timeout_s=2.0,
        retries=2,
        backoff=FAST,
        transport=httpx.MockTransport(handler),
    )


def test_5xx_is_retried_then_transient_and_4xx_is_not_retried():
    calls = []

    def handler(request):
        calls.append(request.url.path)
        if request.url.path == "/healthz":
            return httpx.Response(503, json={"error": "overloaded"})
        return httpx.Response(413, json={"error": "episode payload too large"})

    with _mock_client(handler) as c:
        with pytest.raises(TransientError, match="503: overloaded"):
            c.healthz()
        assert len(calls) == 3
        with pytest.raises(RejectedError, match="too large"):
            c.heartbeat("r", None, 0)
        assert len(calls) == 4


def test_a_corrupted_download_is_refused_and_leaves_nothing(tmp_path):
    archive = build_archive(make_checkpoint(tmp_path / "ckpt"))
    sha = hashlib.sha256(archive).hexdigest()

    def handler(request):
        body = archive[:-1] + b"x"
        return httpx.Response(
            200, content=body, headers={"x-checksum-sha256": sha, "etag": f'"{sha}"'}
        )

    with _mock_client(handler) as c:
        with pytest.raises(IntegrityError, match="corrupted in transit"):
            c.download_policy(1, tmp_path / "robot" / "1")
    assert not (tmp_path / "robot").exists() or not list((tmp_path / "robot").iterdir())
