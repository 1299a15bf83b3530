"""RobotAgent end to end: a SimRobot on a short task, a tiny policy, a real fleet server."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch

from lwd.config import PolicyConfig
from lwd.fleet.client import Backoff, FleetClient
from lwd.fleet.robot_agent import NoPolicyError, RobotAgent
from lwd.fleet.spool import Spool
from lwd.policy.checkpoint import save_policy
from lwd.policy.flow import FlowPolicy
from lwd.policy.normalizer import Normalizer
from lwd.sim.layout import ACTION_DIM, STATE_DIM
from lwd.sim.operator import OperatorConfig, ScriptedOperator
from lwd.sim.robot import SimRobot
from lwd.sim.synthetic_robot import SyntheticRobot, synthetic_episode
from lwd.sim.tasks import get_task
from lwd.types import Source

from .live_server import LiveServer

CFG = PolicyConfig(
    state_dim=STATE_DIM, action_dim=ACTION_DIM, chunk=4, flow_steps=2, width=16, depth=1, lang_dim=4
)
TASK = dataclasses.replace(get_task("open-drawer"), horizon=12)
FAST = Backoff(attempts=2, base_s=0.01, max_s=0.02)


class ZeroEncoder:
    def encode(self, texts):
        return np.zeros((len(texts), CFG.lang_dim), dtype=np.float32)


def publish(server: LiveServer, directory, seed: int) -> int:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    norm = Normalizer(STATE_DIM, ACTION_DIM).fit(
        rng.normal(size=(32, STATE_DIM)), rng.uniform(-1, 1, (32, ACTION_DIM))
    )
    return server.registry.publish(save_policy(directory, FlowPolicy(CFG, norm)))


def make_agent(server, tmp_path, robot=None, operator=None) -> RobotAgent:
    client = FleetClient(server.url, timeout_s=2.0, retries=0)
    return RobotAgent(
        robot if robot is not None else SimRobot("sim-7"),
        client,
        Spool(tmp_path / "spool"),
        "robot-7",
        ZeroEncoder(),
        tmp_path / "policies",
        operator=operator,
        seed=3,
        backoff=FAST,
    )


def test_agent_loop_policy_updates_and_outage(tmp_path):
    server = LiveServer(tmp_path / "fleet").start()
    try:
        assert publish(server, tmp_path / "c1", seed=1) == 1
        robot = SimRobot("sim-7")
        operator = ScriptedOperator(robot, cfg=OperatorConfig(patience=4, max_takeover=3))
        agent = make_agent(server, tmp_path, robot, operator)
        assert agent.policy_version is None

        ep1 = agent.run_episode(TASK, seed=0)
        assert ep1.num_steps == TASK.horizon and ep1.robot_id == "robot-7"
        assert set(ep1.policy_versions.tolist()) == {1}
        assert Source.INTERVENTION in ep1.sources and Source.AUTONOMOUS in ep1.sources
        assert server.store.get(ep1.episode_id).num_steps == ep1.num_steps
        assert len(agent.spool) == 0 and agent.last_drain.uploaded == 1

        # A version published during an episode is picked up only at the next boundary.
        publish(server, tmp_path / "c2", seed=2)
        act = robot.act

        def act_and_publish(action):
            if robot.steps == 5:
                publish(server, tmp_path / "c3", seed=3)
            return act(action)

        robot.act = act_and_publish
        ep2 = agent.run_episode(TASK, seed=1)
        robot.act = act
        assert set(ep2.policy_versions.tolist()) == {2}
        ep3 = agent.run_episode(TASK, seed=2)
        assert set(ep3.policy_versions.tolist()) == {3}
        assert sorted(p.name for p in (tmp_path / "policies").iterdir()) == ["1", "2", "3"]

        # Server down: the agent keeps acting with version 3; the episode waits in the spool.
        server.stop()
        ep4 = agent.run_episode(TASK, seed=3)
        assert set(ep4.policy_versions.tolist()) == {3}
        assert len(agent.spool) == 1 and agent.last_drain.error
        # A restarted robot process finds its policy on disk and its episode in the spool.
        again = make_agent(server, tmp_path)
        assert again.policy_version == 3 and len(again.spool) == 1

        server = LiveServer(server.root, port=server.port).start()
        result = again.drain()
        assert (result.uploaded, result.pending, result.error) == (1, 0, None)
        assert server.store.get(ep4.episode_id).num_steps == ep4.num_steps
        assert len(server.store) == 4

        events = agent.spool.events()
        loads = [e for e in events if e["event"] == "policy_loaded" and e["source"] == "server"]
        assert [e["version"] for e in loads] == [1, 2, 3]
        assert all(e["seen_at"] <= e["loaded_at"] for e in loads)
        episodes = {e["episode_id"]: e for e in events if e["event"] == "episode"}
        acked = {e["episode_id"]: e for e in events if e["event"] == "acked"}
        assert set(episodes) == set(acked) == {e.episode_id for e in (ep1, ep2, ep3, ep4)}
        record = episodes[ep4.episode_id]
        assert record["policy_version"] == 3 and record["infer_calls"] >= 1
        assert record["finished_at"] <= record["spooled_at"] <= acked[ep4.episode_id]["t"]
    finally:
        server.stop()


def test_without_any_policy_the_agent_waits(tmp_path):
    server = LiveServer(tmp_path / "fleet").start()
    try:
        agent = make_agent(server, tmp_path, robot=object())  # never touched
        with pytest.raises(NoPolicyError, match="no policy to act with"):
            agent.run_episode(TASK, seed=0)
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        assert agent.run([TASK], num_episodes=1, stop=stop, wait_s=0.05) == 0
        assert server.app.state.fleet.monitor.robots()["robot-7"]["status"] == "idle"
    finally:
        server.stop()


def synthetic_agent(server, tmp_path, sleep=None, prefetch_s=0.05) -> RobotAgent:
    robot = SyntheticRobot("syn", episode_s=1.0, steps=20, sleep=sleep or (lambda s: None))
    return RobotAgent(
        robot,
        FleetClient(server.url, timeout_s=2.0, retries=0),
        Spool(tmp_path / "spool"),
        "robot-9",
        None,
        tmp_path / "policies",
        backoff=FAST,
        prefetch_s=prefetch_s,
        rollout=synthetic_episode,
    )


def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_prefetch_receives_mid_episode_and_loads_only_between_episodes(tmp_path):
    server = LiveServer(tmp_path / "fleet").start()
    try:
        publish(server, tmp_path / "c1", seed=1)
        agent = None

        def mid_episode(seconds):  # the robot's pacing wait: the episode is in progress
            if agent.policy_version == 1 and server.registry.latest() == 1:
                publish(server, tmp_path / "c2", seed=2)
                wait_for(lambda: agent.fetcher.receipt(2) is not None)
                assert agent.policy_version == 1  # received, not loaded

        agent = synthetic_agent(server, tmp_path, sleep=mid_episode)
        agent.start_prefetch()
        ep1 = agent.run_episode(TASK, seed=0)
        assert set(ep1.policy_versions.tolist()) == {1}
        receipt = agent.fetcher.receipt(2)
        assert receipt["via"] == "prefetch" and receipt["received_at"] <= ep1.created_at
        assert receipt["created_at"] == server.registry.info(2).created_at
        ep2 = agent.run_episode(TASK, seed=1)
        assert set(ep2.policy_versions.tolist()) == {2}
        agent.stop_prefetch()

        events = agent.spool.events()
        received = [e for e in events if e["event"] == "policy_received"]
        assert [e["version"] for e in received] == [1, 2]  # once each (v1 by either path)
        assert received[1]["via"] == "prefetch"
        loaded = {e["version"]: e for e in events if e["event"] == "policy_loaded"}
        assert loaded[2]["received_at"] == receipt["received_at"] < loaded[2]["loaded_at"]
        assert received[1]["seen_at"] <= received[1]["received_at"]
    finally:
        server.stop()


def test_prefetch_survives_outages_and_frees_superseded_versions(tmp_path):
    server = LiveServer(tmp_path / "fleet").start()
    try:
        publish(server, tmp_path / "c1", seed=1)
        agent = synthetic_agent(server, tmp_path, prefetch_s=None)
        assert agent.prefetch_policy() is True and agent.policy_version is None
        assert agent.sync_policy() is True and agent.policy_version == 1
        assert agent.prefetch_policy() is False  # nothing newer
        publish(server, tmp_path / "c2", seed=2)
        assert agent.prefetch_policy() is True
        publish(server, tmp_path / "c3", seed=3)
        assert agent.prefetch_policy() is True and agent.policy_version == 1
        assert agent.sync_policy() is True and agent.policy_version == 3
        # v3 came from the prefetch (one download); v2 never acted, so its copy is gone.
        received = [e["version"] for e in agent.spool.events() if e["event"] == "policy_received"]
        assert received == [1, 2, 3]
        assert sorted(p.name for p in (tmp_path / "policies").iterdir()) == ["1", "3"]

        server.stop()
        publish_dir = tmp_path / "c4"
        assert agent.prefetch_policy() is False  # logged, retried at the next poll
        server = LiveServer(server.root, port=server.port).start()
        publish(server, publish_dir, seed=4)
        agent.prefetch_s = 0.05
        agent.start_prefetch()
        wait_for(lambda: agent.fetcher.receipt(4) is not None)
        agent.stop_prefetch()
        assert agent.policy_version == 3
    finally:
        server.stop()
