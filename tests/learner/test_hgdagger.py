"""HG-DAgger: which windows are aggregated (known answers), and one start/observe/improve round."""

import numpy as np
import pytest
import torch

from lwd.learner.hgdagger import HGDaggerMethod, aggregation_windows
from lwd.policy.checkpoint import load_policy
from lwd.types import Source
from tests.conftest import make_episode
from tests.learner.conftest import FakeEncoder

A, H, P = Source.AUTONOMOUS, Source.INTERVENTION, Source.PLAY  # H: the human's steps


def episode(sources, success=False, seed=0):
    sources = np.array(sources, dtype=np.uint8)
    return make_episode(len(sources), seed=seed, success=success, sources=sources)


def test_intervention_segments_are_kept_and_stop_at_the_hand_back():
    steps, valid = aggregation_windows(episode([A, A, H, H, A, H]), horizon=3)
    assert steps.tolist() == [2, 3, 5]
    assert valid.tolist() == [[True, True, False], [True, False, False], [True, False, False]]


def test_a_rescued_success_keeps_only_the_operators_steps():
    steps, _ = aggregation_windows(episode([A, H, H, A, A], success=True), horizon=2)
    assert steps.tolist() == [1, 2]


def test_a_clean_autonomous_success_is_kept_whole():
    steps, valid = aggregation_windows(episode([A, A, A, A], success=True), horizon=3)
    assert steps.tolist() == [0, 1, 2, 3]
    assert valid.tolist() == [[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]]


@pytest.mark.parametrize("sources", [[A, A, A, A], [P, P, P, P]])
def test_failed_autonomous_steps_and_play_are_not_kept(sources):
    steps, valid = aggregation_windows(episode(sources), horizon=2)
    assert steps.size == 0 and valid.shape == (0, 2)


def test_start_observe_improve(setup, tmp_path):
    method = HGDaggerMethod(
        setup / "sft", setup / "data", tmp_path, FakeEncoder(), updates_per_round=3, batch_size=8
    )
    assert method.demo_samples == 30  # the fixture's 2 demos of 15 steps
    first = method.start()
    before = [p.clone() for p in load_policy(first).parameters()]
    method.observe(
        [
            episode([A, A, H, H, A, A], seed=1),  # 2 windows
            episode([A, A, A], success=True, seed=2),  # 3 windows
            episode([A, A, A, A], seed=3),  # none
        ]
    )
    assert method.num_samples == 30 + 5
    second = method.improve()
    assert second != first and method.updates == 3
    after = list(load_policy(second).parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
