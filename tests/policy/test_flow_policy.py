"""Euler sampler, flow-matching loss and the Policy runner, with hand-made fields."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lwd.algo.flow_bc import flow_matching_loss
from lwd.config import PolicyConfig
from lwd.policy.flow import FlowPolicy, FlowPolicyRunner
from lwd.policy.normalizer import Normalizer
from lwd.types import ActionChunk, Observation

TINY = PolicyConfig(state_dim=4, action_dim=2, chunk=2, flow_steps=4, width=16, depth=2, lang_dim=8)


class ConstantField(nn.Module):
    """Velocity ``c`` everywhere; records what the sampler feeds it."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c
        self.states: list[torch.Tensor] = []
        self.times: list[float] = []

    def encode_context(self, state, lang, image=None):
        self.states.append(state)
        return torch.zeros(state.shape[0], 1)

    def velocity(self, context, x, w):
        self.times.append(float(w))
        return self.c.expand(x.shape[0], -1)


class OracleField(nn.Module):
    """Returns exactly ``x1 - x0``: on the path, ``(x1 - x_w) / (1 - w)``."""

    def __init__(self, x1: torch.Tensor, garbage_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.x1 = x1.reshape(x1.shape[0], -1)
        self.garbage = garbage_mask

    def forward(self, state, lang, x, w, image=None):
        v = (self.x1 - x) / (1.0 - w)[:, None]
        if self.garbage is not None:  # wrong answers where the loss must not look
            v = v + 100.0 * self.garbage.reshape(v.shape).to(v.dtype)
        return v


def test_euler_with_constant_velocity_gives_x0_plus_c_exactly_then_clips():
    c = torch.tensor([0.5, -0.25, 1.0, -1.5])
    x0 = torch.tensor([[0.25, 0.5, -0.5, 0.0], [0.75, -0.875, 0.5, 0.25]])
    field = ConstantField(c)
    policy = FlowPolicy(TINY, field=field)
    out = policy.sample(torch.zeros(2, 4), torch.zeros(2, 8), noise=x0)
    assert out.shape == (2, 2, 2)
    expected = (x0 + c).clamp(-1.0, 1.0).reshape(2, 2, 2)
    assert torch.equal(out, expected)
    assert field.times == [0.0, 0.25, 0.5, 0.75]  # w from 0 (noise) towards 1 (data)
    assert len(field.states) == 1  # context computed once for all K steps


def test_sampler_normalizes_state_and_denormalizes_actions():
    norm = Normalizer(4, 2, normalize_actions=True)
    norm.state_mean[:] = 1.0
    norm.state_std[:] = 2.0
    norm.action_mean[:] = 0.125
    norm.action_std[:] = 0.5
    field = ConstantField(torch.zeros(4))
    policy = FlowPolicy(TINY, norm, field=field)
    out = policy.sample(np.full((1, 4), 3.0, np.float32), np.zeros((1, 8)), noise=torch.ones(1, 4))
    torch.testing.assert_close(field.states[0], torch.ones(1, 4))
    torch.testing.assert_close(out, torch.full((1, 2, 2), 0.625))


def test_real_field_sampling_is_deterministic_bounded_and_restores_mode():
    policy = FlowPolicy(TINY).train()
    state, lang = torch.randn(3, 4), torch.randn(3, 8)
    a = policy.sample(state, lang, generator=torch.Generator().manual_seed(1))
    b = policy.sample(state, lang, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (3, 2, 2) and a.abs().max() <= 1.0
    assert policy.training and not a.requires_grad


def test_flow_matching_loss_is_zero_for_the_exact_velocity():
    g = torch.Generator().manual_seed(0)
    actions = torch.rand(5, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    state, lang = torch.zeros(5, 4), torch.zeros(5, 8)
    loss, metrics = flow_matching_loss(OracleField(actions), state, lang, actions, generator=g)
    assert float(loss) < 1e-10
    assert set(metrics) == {"bc/loss", "bc/pred_norm", "bc/target_norm", "bc/valid_frac"}


def test_flow_matching_loss_excludes_masked_positions():
    g = torch.Generator().manual_seed(1)
    actions = torch.rand(4, 2, 2, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [0, 0]], dtype=torch.bool)
    garbage = (~mask)[:, :, None].expand(4, 2, 2)
    field = OracleField(actions, garbage_mask=garbage)
    loss, metrics = flow_matching_loss(field, None, None, actions, valid_mask=mask, generator=g)
    assert float(loss) < 1e-10
    assert float(metrics["bc/valid_frac"]) == pytest.approx(0.5)


def test_flow_matching_loss_known_value_for_zero_field():
    actions = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    noise = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, False]])

    def zero_field(state, lang, x, w, image=None):
        return torch.zeros_like(x)

    # target x1 - x0 on the valid position is (1, 1): mean square 1.
    loss, _ = flow_matching_loss(zero_field, None, None, actions, valid_mask=mask, noise=noise)
    assert float(loss) == pytest.approx(1.0)
    w = torch.tensor([0.5])
    loss, _ = flow_matching_loss(zero_field, None, None, actions, noise=noise, w=w)
    assert float(loss) == pytest.approx((1 + 1 + 9 + 16) / 4)


@pytest.fixture
def one_thread():
    """Tiny ops gain nothing from threads, and spinning OpenMP threads crawl on busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_flow_matching_loss_trains_a_velocity_field(one_thread):
    torch.manual_seed(0)
    policy = FlowPolicy(TINY)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    state, lang = torch.randn(64, 4), torch.randn(64, 8)
    actions = torch.tanh(state[:, :2]).reshape(64, 1, 2).repeat(1, 2, 1)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(100):
        loss, metrics = flow_matching_loss(policy.field, state, lang, actions, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(metrics["bc/loss"]) if first is None else first
    assert float(metrics["bc/loss"]) < 0.5 * first


class FakeEncoder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return np.stack([np.full(8, len(t) / 100.0, np.float32) for t in texts])


def test_runner_implements_policy_interface():
    encoder = FakeEncoder()
    runner = FlowPolicyRunner(FlowPolicy(TINY), encoder, version=7, seed=0)
    obs = Observation(state=np.zeros(4, np.float32), instruction="open the drawer")
    chunk = runner.infer(obs)
    assert isinstance(chunk, ActionChunk) and chunk.version == 7 == runner.version
    assert chunk.actions.shape == (2, 2) and chunk.actions.dtype == np.float32
    assert np.abs(chunk.actions).max() <= 1.0
    chunks = runner.infer_batch([obs, obs, Observation(np.ones(4, np.float32), "press")])
    assert len(chunks) == 3
    assert encoder.calls == [["open the drawer"], ["press"]]  # one call per new instruction
    again = FlowPolicyRunner(FlowPolicy(TINY), FakeEncoder(), version=7, seed=0)
    again.policy.load_state_dict(runner.policy.state_dict())
    np.testing.assert_array_equal(again.infer(obs).actions, chunk.actions)


def test_runner_rejects_bad_observations():
    runner = FlowPolicyRunner(FlowPolicy(TINY), FakeEncoder(), version=1)
    with pytest.raises(ValueError, match="expected \\(4,\\)"):
        runner.infer(Observation(state=np.zeros(5, np.float32), instruction="x"))
    cfg = PolicyConfig(**{**TINY.__dict__, "use_images": True, "image_size": 16})
    runner = FlowPolicyRunner(FlowPolicy(cfg), FakeEncoder(), version=1)
    with pytest.raises(ValueError, match="needs camera images"):
        runner.infer(Observation(state=np.zeros(4, np.float32), instruction="x"))
    image = np.zeros((16, 16, 3), np.uint8)
    assert runner.infer(Observation(np.zeros(4, np.float32), "x", image)).actions.shape == (2, 2)
