"""The synchronous fleet harness and LWD-online as an online method."""

import dataclasses
import json
import shutil

import pytest
import torch

from lwd.config import OfflineConfig, to_dict
from lwd.data.store import EpisodeStore
from lwd.learner.fleet_online import (
    LwdOnlineMethod,
    lwd_online_config,
    plan_round,
    run_fleet_online,
)
from lwd.learner.offline import latest_checkpoint, train_offline
from lwd.policy.checkpoint import load_policy
from lwd.policy.ranker import has_ranker
from lwd.sim.tasks import CONTROL_DT
from lwd.types import Source
from tests.conftest import make_episode
from tests.learner.conftest import CFG, FakeEncoder


class FakeMethod:
    """Copies its starting policy to a new directory every round; records what it saw."""

    name = "fake"

    def __init__(self, sft, out):
        self.sft, self.out, self.seen, self.rounds = sft, out, [], 0

    def start(self):
        return self._copy()

    def observe(self, episodes):
        self.seen.append(list(episodes))

    def improve(self):
        self.rounds += 1
        return self._copy()

    def _copy(self):
        path = self.out / f"v{self.rounds + 1}"
        shutil.copytree(self.sft, path)
        return path


def test_plan_round_splits_the_budget_over_robots():
    by_episodes = plan_round(["a", "b"], robots=2, round_=0, seed=0, episodes=5)
    assert [j["episodes"] for j in by_episodes] == [3, 2]
    by_hours = plan_round(["a"], robots=4, round_=1, seed=0, robot_hours=0.01)
    assert [j["seconds"] for j in by_hours] == pytest.approx([9.0] * 4)
    with pytest.raises(ValueError, match="exactly one budget"):
        plan_round(["a"], robots=1, round_=0, seed=0)


def test_two_rounds_account_robot_hours_from_simulated_time(setup, tmp_path):
    method = FakeMethod(setup / "sft", tmp_path)
    share_s = 4.0  # less than one 200-step episode (10 s): every robot runs exactly one
    history = run_fleet_online(
        method,
        ["press-center"],
        robots=2,
        rounds=2,
        robot_hours_per_round=2 * share_s / 3600,
        store=tmp_path / "fleet",
        workers=0,
        encoder=FakeEncoder(),
    )
    store = EpisodeStore(tmp_path / "fleet")
    assert len(history) == 2 and method.rounds == 2 and len(store) == 4
    for k, (record, seen) in enumerate(zip(history, method.seen, strict=True)):
        assert record.episodes == len(seen) == 2
        assert [ep.robot_id for ep in seen] == ["fleet-robot-0", "fleet-robot-1"]
        assert all((ep.policy_versions == k + 1).all() for ep in seen)
        steps = sum(ep.num_steps for ep in seen)
        assert record.steps == steps
        assert record.robot_hours == pytest.approx(steps * CONTROL_DT / 3600)
        assert record.cycle_time_s == pytest.approx(steps * CONTROL_DT / 2)
        auto = [ep.success and Source.INTERVENTION not in ep.sources for ep in seen]
        assert record.success == sum(auto) / 2
    assert history[1].robot_hours_total == pytest.approx(
        history[0].robot_hours + history[1].robot_hours
    )
    assert history[1].policy == history[0].improved == str(tmp_path / "v2")


def fleet_episodes(n=3):
    src = [Source.AUTONOMOUS, Source.INTERVENTION, Source.AUTONOMOUS]
    return [
        make_episode(12, seed=200 + i, source=src[i % 3], success=i == 0, robot_id=f"r{i}")
        for i in range(n)
    ]


def test_lwd_online_continues_the_offline_run(setup, tmp_path):
    off_cfg = dataclasses.replace(CFG, steps=4, batch_size=16, checkpoint_every=4)
    off_cfg = dataclasses.replace(
        off_cfg, agent=dataclasses.replace(CFG.agent, lam=0.25, best_of_n=2)
    )
    assert isinstance(off_cfg, OfflineConfig)
    train_offline(off_cfg, setup / "data", setup / "sft", tmp_path / "off", FakeEncoder())
    method = LwdOnlineMethod(
        tmp_path / "off",
        setup / "data",
        tmp_path / "on",
        FakeEncoder(),
        updates_per_round=3,
        batch_size=16,
    )
    cfg = method.cfg
    assert (cfg.agent.tau_base, cfg.n_step, cfg.online_fraction) == (0.9, 1, 0.5)
    assert cfg.agent.lam == 0.25 and cfg.agent.critic_width == 32  # from the offline run
    assert cfg.agent.best_of_n == 2  # acts as the offline run did
    first = method.start()
    assert has_ranker(first)  # version 1 is the offline run's acting policy, ranker included
    trained = load_policy(latest_checkpoint(tmp_path / "off") / "policy")
    for a, b in zip(trained.parameters(), load_policy(first).parameters(), strict=True):
        assert torch.equal(a, b)
    method.observe(fleet_episodes())
    second = method.improve()
    assert method.learner.step == 3 and len(method.learner.online) == 36
    assert method.learner.replay.last_online_count == 8  # 1:1 of 16
    third = method.improve()
    assert method.learner.step == 6
    assert len({first, second, third}) == 3


def test_lwd_online_keeps_the_offline_runs_acting_unless_told(tmp_path):
    offline = dataclasses.replace(CFG, agent=dataclasses.replace(CFG.agent, best_of_n=8))
    (tmp_path / "offline_config.json").write_text(json.dumps(to_dict(offline)))
    kept = lwd_online_config(tmp_path, seed=0, batch_size=16, updates_per_round=3)
    told = lwd_online_config(tmp_path, seed=0, batch_size=16, updates_per_round=3, best_of_n=1)
    assert (kept.agent.best_of_n, told.agent.best_of_n) == (8, 1)
    assert kept.agent.critic_width == told.agent.critic_width == CFG.agent.critic_width


@pytest.mark.slow
def test_worker_processes_collect_the_same_way(tmp_path):
    """The subprocess path (JSON lines, the shipped instruction encoder) on one tiny round."""
    from lwd.config import PolicyConfig
    from lwd.policy.checkpoint import save_policy
    from lwd.policy.flow import FlowPolicy

    torch.manual_seed(0)
    save_policy(tmp_path / "sft", FlowPolicy(PolicyConfig(chunk=3, flow_steps=2, width=32)))
    method = FakeMethod(tmp_path / "sft", tmp_path)
    history = run_fleet_online(
        method, ["press-center"], 1, 1, episodes_per_round=1, store=tmp_path / "fleet", workers=1
    )
    assert history[0].episodes == 1 and method.seen[0][0].robot_id == "fleet-robot-0"
    assert history[0].steps == method.seen[0][0].num_steps
