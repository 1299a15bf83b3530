"""Known answers for the RECAP pieces: MC returns, value labels, indicators, CFG."""

import math

import numpy as np
import pytest
import torch

from lwd.algo.divl import c51_project, value_support
from lwd.algo.recap import (
    drop_indicators,
    expected_value,
    indicator_flow_loss,
    label_indicators,
    mc_value_loss,
    monte_carlo_advantage,
    monte_carlo_returns,
    n_step_advantage,
    task_thresholds,
)
from lwd.nets.velocity import BAD, GOOD, UNKNOWN
from lwd.policy.flow import guided_velocity


def test_mc_returns_discount_to_the_success_and_stop_at_episode_ends():
    # Episodes of 3, 2 and 2 steps: success, failure, success.
    rewards = np.array([0, 0, 1, 0, 0, 0, 1], np.float32)
    g = monte_carlo_returns(rewards, np.array([3, 2, 2]), gamma=0.5)
    np.testing.assert_allclose(g, [0.25, 0.5, 1.0, 0.0, 0.0, 0.5, 1.0])
    # gamma = 1: every step of a success returns 1, nothing leaks into the next episode.
    g1 = monte_carlo_returns(rewards, np.array([3, 2, 2]), gamma=1.0)
    np.testing.assert_allclose(g1, [1, 1, 1, 0, 0, 1, 1])


def test_mc_returns_sum_every_reward_of_the_episode():
    g = monte_carlo_returns(np.array([1, 0, 1], np.float32), np.array([3]), gamma=0.5)
    np.testing.assert_allclose(g, [1.25, 0.5, 1.0])
    assert monte_carlo_returns(np.zeros(0), np.zeros(0, np.int64), 0.9).shape == (0,)
    with pytest.raises(ValueError, match="lengths sum to 2"):
        monte_carlo_returns(np.zeros(3), np.array([2]), 0.9)


def test_c51_label_of_an_mc_return():
    support = value_support(201, -0.1, 1.1)  # atoms 0.006 apart
    g = torch.from_numpy(monte_carlo_returns(np.array([0, 0, 1], np.float32), np.array([3]), 0.9))
    assert g[0].item() == pytest.approx(0.81)
    m = c51_project(g, support)
    # 0.81 lies 2/3 of the way from atom 151 (0.806) to atom 152 (0.812).
    assert m[0, 151].item() == pytest.approx(1 / 3, abs=1e-4)
    assert m[0, 152].item() == pytest.approx(2 / 3, abs=1e-4)
    # A return of 1 (the success step) sits between atoms 183 (0.998) and 184 (1.004).
    assert m[2, 183].item() == pytest.approx(2 / 3, abs=1e-4)
    assert m[2, 184].item() == pytest.approx(1 / 3, abs=1e-4)
    # The loss is the cross-entropy to that label: minimal (its entropy) at the label itself.
    logits = torch.log(m.clamp_min(1e-12))
    loss, info = mc_value_loss(logits, g, support)
    entropy = -(m * m.clamp_min(1e-12).log()).sum(-1).mean()
    assert loss.item() == pytest.approx(entropy.item(), abs=1e-4)
    assert info["value/mean"].item() == pytest.approx(g.mean().item(), abs=1e-4)
    assert set(info) == {"value/loss", "value/mean", "value/return_mean"}


def test_expected_value_of_a_one_hot_is_its_atom():
    support = torch.tensor([0.0, 0.5, 1.0])
    logits = torch.tensor([[-1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(expected_value(logits, support), torch.tensor([0.5, 0.5]))


def test_advantages():
    np.testing.assert_allclose(monte_carlo_advantage([1.0, 0.0], [0.25, 0.5]), [0.75, -0.5])
    adv = n_step_advantage(
        reward=[0.0, 0.9, 0.0], discount=[0.5, 0.0, 0.5], next_value=[0.8, 0.7, 0.2],
        value=[0.3, 0.6, 0.3],
    )  # fmt: skip
    np.testing.assert_allclose(adv, [0.1, 0.3, -0.2], atol=1e-6)


def test_percentile_threshold_labels_the_top_share_of_each_task():
    adv = np.concatenate([np.arange(10.0), np.arange(10.0) * 0.1])  # two tasks, scales differ
    task = np.repeat([0, 1], 10)
    forced = np.zeros(20, bool)
    eps = task_thresholds(adv, task, forced, good_fraction=0.3)
    np.testing.assert_allclose(eps, [6.3, 0.63], rtol=1e-6)  # 0.7 quantile, linear interpolation
    labels = label_indicators(adv, task, eps, forced)
    assert labels.tolist() == [BAD] * 7 + [GOOD] * 3 + [BAD] * 7 + [GOOD] * 3


def test_interventions_are_forced_good_and_left_out_of_the_percentile():
    adv = np.array([-5.0, 0.0, 1.0, 2.0, 3.0, -9.0, -9.0])
    task = np.array([0, 0, 0, 0, 0, 1, 1])
    forced = np.array([True, False, False, False, False, True, True])
    eps = task_thresholds(adv, task, forced, good_fraction=0.5)
    assert eps[0] == pytest.approx(1.5)  # median of [0, 1, 2, 3]; the forced -5 is left out
    assert eps[1] == np.inf  # only forced steps
    labels = label_indicators(adv, task, eps, forced)
    assert labels.tolist() == [GOOD, BAD, BAD, GOOD, GOOD, GOOD, GOOD]


def test_cfg_dropout_rate_and_kept_labels():
    labels = torch.full((100_000,), GOOD)
    labels[::2] = BAD
    gen = torch.Generator().manual_seed(0)
    dropped = drop_indicators(labels, 0.3, gen)
    unknown = dropped == UNKNOWN
    assert unknown.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert torch.equal(dropped[~unknown], labels[~unknown])
    assert torch.equal(drop_indicators(labels, 0.0, gen), labels)
    assert (drop_indicators(labels, 1.0, gen) == UNKNOWN).all()
    with pytest.raises(ValueError):
        drop_indicators(labels, 1.5, gen)


def test_cfg_combination_formula():
    cond, uncond = torch.tensor([[1.0, 3.0]]), torch.tensor([[0.5, -1.0]])
    torch.testing.assert_close(guided_velocity(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guided_velocity(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(guided_velocity(cond, uncond, 2.0), torch.tensor([[1.5, 7.0]]))


def test_indicator_flow_loss_passes_the_dropped_labels_to_the_field():
    seen = {}

    def field(state, lang, x, w, image, indicator):
        seen["indicator"] = indicator
        return torch.zeros_like(x)

    b, h, a = 4, 2, 1
    labels = torch.tensor([GOOD, BAD, GOOD, BAD])
    actions = torch.ones(b, h, a)
    gen = torch.Generator().manual_seed(0)
    loss, info = indicator_flow_loss(
        field, torch.zeros(b, 3), torch.zeros(b, 2), actions, labels, drop_prob=0.0, generator=gen
    )
    assert torch.equal(seen["indicator"], labels)
    assert info["recap/good_frac"].item() == 0.5 and info["recap/dropped_frac"].item() == 0.0
    assert math.isfinite(loss.item()) and "bc/loss" in info
    indicator_flow_loss(
        field, torch.zeros(b, 3), torch.zeros(b, 2), actions, labels, drop_prob=1.0, generator=gen
    )
    assert (seen["indicator"] == UNKNOWN).all()
