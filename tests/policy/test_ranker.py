"""Best-of-N acting: the known answer of the selection, and the ranker's trip through files."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from lwd.agent import Agent
from lwd.config import AgentConfig, EvalConfig
from lwd.eval.evaluator import evaluate
from lwd.fleet.registry import PolicyRegistry, build_archive, extract_archive
from lwd.policy.checkpoint import CheckpointError, save_policy
from lwd.policy.flow import FlowPolicy, FlowPolicyRunner
from lwd.policy.ranker import RANKER_CONFIG, BestOfN, load_acting_policy, load_runner
from lwd.types import Observation
from tests.conftest import make_tiny_policy


class FirstActionCritic(nn.Module):
    """Q(s, a) = -a[0, 0] on two identical heads: the best chunk has the lowest first action."""

    def forward(self, state, lang, actions, image=None):
        q = -actions.reshape(actions.shape[0], -1)[:, 0]
        return torch.stack([q, q])


def test_best_of_n_acts_with_the_sample_its_critic_ranks_first():
    policy, n = make_tiny_policy(), 8
    state, lang = torch.randn(3, 4), torch.randn(3, 8)
    noise = torch.randn(3, n, 2, 2)
    chosen = BestOfN(policy, FirstActionCritic(), n).sample(state, lang, noise=noise)
    # every candidate, drawn by hand from the same noise: row b, candidate j
    cands = policy.sample(
        state.repeat_interleave(n, 0), lang.repeat_interleave(n, 0), noise=noise.reshape(3 * n, 4)
    ).view(3, n, 2, 2)
    expected = cands[torch.arange(3), cands[:, :, 0, 0].argmin(dim=1)]
    assert torch.equal(chosen, expected)
    assert not torch.equal(chosen, cands[:, 0])  # the selection did something here
    one = BestOfN(policy, FirstActionCritic(), 1).sample(state, lang, noise=noise[:, :1])
    assert torch.equal(one, cands[:, 0])  # n = 1 is the flow alone


class DisagreeingCritic(nn.Module):
    """Two heads on the first action x that disagree: -x^2 (best at 0) and x (best large)."""

    def forward(self, state, lang, actions, image=None):
        x = actions.reshape(actions.shape[0], -1)[:, 0]
        return torch.stack([-x.square(), x])


@pytest.mark.parametrize(
    "reduce, pessimism, score",
    [
        ("mean", 0.5, lambda x: (x - x**2) / 2),
        ("min", 0.5, lambda x: torch.minimum(x, -(x**2))),
        # two heads: population std = |h1 - h2| / 2
        ("pessimistic", 0.5, lambda x: (x - x**2) / 2 - 0.5 * (x + x**2).abs() / 2),
        ("pessimistic", 1.0, lambda x: torch.minimum(x, -(x**2))),  # = min with two heads
    ],
)
def test_best_of_n_ranks_by_its_heads_rule(reduce, pessimism, score):
    policy, n = make_tiny_policy(), 16
    state, lang = torch.randn(4, 4), torch.randn(4, 8)
    noise = torch.randn(4, n, 2, 2)
    bon = BestOfN(policy, DisagreeingCritic(), n, reduce=reduce, pessimism=pessimism)
    chosen = bon.sample(state, lang, noise=noise)
    cands = policy.sample(
        state.repeat_interleave(n, 0), lang.repeat_interleave(n, 0), noise=noise.reshape(4 * n, 4)
    ).view(4, n, 2, 2)
    expected = cands[torch.arange(4), score(cands[:, :, 0, 0]).argmax(dim=1)]
    assert torch.equal(chosen, expected)
    by_mean = BestOfN(policy, DisagreeingCritic(), n).sample(state, lang, noise=noise)
    assert (reduce == "mean") == torch.equal(chosen, by_mean)  # the rules differ here


def test_a_runner_around_best_of_n_uses_the_fleets_interface():
    bon = BestOfN(make_tiny_policy(), FirstActionCritic(), 4)
    runner = FlowPolicyRunner(bon, encoder=_Encoder(), version=2, seed=0)
    chunk = runner.infer(Observation(state=np.zeros(4, np.float32), instruction="go"))
    assert chunk.actions.shape == (2, 2) and chunk.version == 2


class _Encoder:
    def encode(self, texts):
        return np.ones((len(texts), 8), np.float32)


def _agent(best_of_n: int) -> Agent:
    cfg = AgentConfig(critic_width=16, critic_depth=2, num_atoms=11, best_of_n=best_of_n)
    return Agent(cfg, make_tiny_policy(), seed=0)


def test_the_target_critic_travels_with_the_policy_and_acts_the_same_after_loading(tmp_path):
    agent = _agent(best_of_n=4)
    path = agent.save_acting_policy(tmp_path / "p", extra={"version": 5})
    loaded = load_acting_policy(path)
    assert isinstance(loaded, BestOfN) and loaded.n == 4
    saved, live = loaded.critic.state_dict(), agent.target_critic.state_dict()
    for a, b in zip(saved.values(), live.values(), strict=True):
        assert torch.equal(a, b)
    state, lang, noise = torch.randn(2, 4), torch.randn(2, 8), torch.randn(2, 4, 4)
    in_memory = BestOfN(agent.policy, agent.target_critic, 4)
    assert torch.equal(
        loaded.sample(state, lang, noise=noise), in_memory.sample(state, lang, noise=noise)
    )
    assert isinstance(load_acting_policy(path, best_of_n=1), FlowPolicy)
    assert load_acting_policy(path, best_of_n=8).n == 8
    assert load_runner(path).version == 5


def test_the_ranking_rule_travels_with_the_policy(tmp_path):
    cfg = AgentConfig(
        critic_width=16, critic_depth=2, num_atoms=11, best_of_n=4, rank_heads="min", pessimism=0.7
    )
    path = Agent(cfg, make_tiny_policy(), seed=0).save_acting_policy(tmp_path / "p")
    loaded = load_acting_policy(path)
    assert (loaded.reduce, loaded.pessimism) == ("min", 0.7)
    data = json.loads((path / RANKER_CONFIG).read_text())
    del data["reduce"], data["pessimism"]  # a ranker written before the rule was recorded
    (path / RANKER_CONFIG).write_text(json.dumps(data))
    assert load_acting_policy(path).reduce == "mean"
    (path / RANKER_CONFIG).write_text(json.dumps({**data, "reduce": "median"}))
    with pytest.raises(CheckpointError, match="ranker.json: reduce must be one of"):
        load_acting_policy(path)
    with pytest.raises(ValueError, match="AgentConfig.rank_heads must be one of"):
        Agent(dataclasses.replace(cfg, rank_heads="max"), make_tiny_policy(), seed=0)


def test_a_policy_saved_without_best_of_n_drops_a_stale_ranker(tmp_path):
    path = _agent(best_of_n=4).save_acting_policy(tmp_path / "p")
    _agent(best_of_n=1).save_acting_policy(path)
    assert isinstance(load_acting_policy(path), FlowPolicy)


def test_ranker_errors_name_the_file_and_the_fix(tmp_path):
    plain = save_policy(tmp_path / "plain", make_tiny_policy())
    with pytest.raises(CheckpointError, match="needs a critic.*--best-of-n"):
        load_acting_policy(plain, best_of_n=4)
    with pytest.raises(ValueError, match="needs a critic"):  # before any worker starts
        evaluate(plain, EvalConfig(best_of_n=4, workers=1))
    path = _agent(best_of_n=4).save_acting_policy(tmp_path / "p")
    (path / "ranker.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ranker.safetensors: missing file"):
        load_acting_policy(path)
    cfg = json.loads((path / RANKER_CONFIG).read_text())
    (path / RANKER_CONFIG).write_text(json.dumps({**cfg, "kind": "something"}))
    with pytest.raises(CheckpointError, match="ranker.json: expected format 1 and kind"):
        load_acting_policy(path)


def test_a_published_best_of_n_policy_reaches_a_robot_with_its_critic(tmp_path):
    src = _agent(best_of_n=4).save_acting_policy(tmp_path / "p")
    registry = PolicyRegistry(tmp_path / "registry")
    version = registry.publish(src)
    robot_dir = tmp_path / "robot"
    assert "ranker.safetensors" in extract_archive(registry.archive(version), robot_dir)
    assert isinstance(load_acting_policy(robot_dir), BestOfN)
    assert registry.publish_archive(build_archive(src)) == version  # same content, same version
    plain = save_policy(tmp_path / "plain", make_tiny_policy())
    assert registry.publish(plain) == version + 1
    assert isinstance(load_acting_policy(registry.get(version + 1)), FlowPolicy)
