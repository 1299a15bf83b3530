"""RobotHost: many robots as threads of one process, sharing weights and policy polls."""

from __future__ import annotations

import threading
import time

import pytest

from lwd.fleet.client import PolicyRef, TransientError
from lwd.fleet.robot_host import HostConfig, LatestPolicyCache, RobotHost
from lwd.fleet.spool import Spool
from lwd.sim.tasks import get_suite

from .live_server import LiveServer
from .test_fleet_robot_agent import ZeroEncoder, publish

LIGHT = HostConfig(synthetic=True, episode_s=0.05, steps=30, prefetch_s=0.05, stagger_s=0.0)
TASKS = get_suite("fleet8")[:2]


def test_host_runs_independent_robots_that_share_weights(tmp_path):
    server = LiveServer(tmp_path / "fleet").start()
    try:
        publish(server, tmp_path / "c1", seed=1)
        with RobotHost(server.url, "rack", count=3, workdir=tmp_path / "robots", cfg=LIGHT) as host:
            assert host.run(TASKS, num_episodes=2) == {"rack-0": 2, "rack-1": 2, "rack-2": 2}
            modules = {id(agent.policy.policy) for agent in host.agents}
            assert len(modules) == 1  # version 1 loaded once for the host
        assert len(server.store) == 6
        ids = {server.store.get(i).robot_id for i in server.store.episode_ids()}
        assert ids == {"rack-0", "rack-1", "rack-2"}
        for rid in ids:
            assert (tmp_path / "robots" / rid / "policies" / "1").is_dir()
            assert len(Spool(tmp_path / "robots" / rid / "spool")) == 0
        robots = server.app.state.fleet.monitor.robots()
        assert {r["status"] for r in robots.values()} == {"idle"}
    finally:
        server.stop()


def test_stop_finishes_and_drains_the_episodes_in_progress(tmp_path):
    server = LiveServer(tmp_path / "fleet").start()
    try:
        publish(server, tmp_path / "c1", seed=1)
        cfg = HostConfig(synthetic=True, episode_s=5.0, steps=30, prefetch_s=0.05)
        host = RobotHost(server.url, "rack", count=4, workdir=tmp_path / "robots", cfg=cfg)
        result = {}
        runner = threading.Thread(target=lambda: result.update(host.run(TASKS)))
        runner.start()
        time.sleep(1.5)  # staggered over 5 s: some robots are mid-episode, some not started
        host.stop()
        runner.join(10)
        assert not runner.is_alive()
        host.close()
        assert sum(result.values()) == len(server.store) >= 1
        for agent in host.agents:
            events = agent.spool.events()
            spooled = {e["episode_id"] for e in events if e["event"] == "episode"}
            acked = {e["episode_id"] for e in events if e["event"] == "acked"}
            assert spooled == acked and len(agent.spool) == 0
    finally:
        server.stop()


def test_simulated_robots_get_their_own_seed_perturbation_and_operator(tmp_path):
    # Built only: running MuJoCo robots is test_fleet_robot_agent's job (and slow).
    cfg = HostConfig(seed=10)
    encoder = ZeroEncoder()
    with RobotHost("http://127.0.0.1:9", "sim", 2, tmp_path / "robots", cfg, encoder) as host:
        a, b = host.agents
        assert (a.robot_id, b.robot_id, a.seed, b.seed) == ("sim-0", "sim-1", 10, 11)
        assert a.robot is not b.robot and a.robot.perturbation != b.robot.perturbation
        assert a.operator is not None and a.operator is not b.operator
        assert a.encoder is b.encoder is encoder
        assert a.policy_dir != b.policy_dir and a.spool.dir != b.spool.dir


class CountingClient:
    def __init__(self):
        self.calls, self.fail = 0, False

    def latest_policy(self):
        self.calls += 1
        if self.fail:
            raise TransientError("down")
        return PolicyRef(self.calls, "sha")


def test_latest_policy_cache_asks_once_per_period_and_remembers_failures():
    now = [0.0]
    client = CountingClient()
    cache = LatestPolicyCache(client, max_age_s=0.5, clock=lambda: now[0])
    assert [cache().version for _ in range(5)] == [1] * 5 and client.calls == 1
    now[0] = 0.6
    assert cache().version == 2
    client.fail, now[0] = True, 1.2
    for _ in range(3):
        with pytest.raises(TransientError, match="down"):
            cache()
    assert client.calls == 3  # one failed query for all callers of the period
    client.fail, now[0] = False, 1.8
    assert cache().version == 4
