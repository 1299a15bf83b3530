"""RobotAgent end to end: a SimRobot on a short task, a tiny policy, a real fleet server."""

from __future__ import annotations

import dataclasses
import threading

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
