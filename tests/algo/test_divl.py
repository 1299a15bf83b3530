"""Known answers for the DIVL pieces on tiny shapes."""

import math

import pytest
import torch

from lwd.algo.divl import (
    adaptive_tau,
    c51_project,
    categorical_value_loss,
    critic_loss,
    expectile_loss,
    normalized_entropy,
    quantile_readout,
    td_target,
    value_support,
)
from lwd.nets.critic import combine_heads


def test_support_default_is_201_atoms_on_the_paper_range():
    s = value_support(201, -0.1, 1.1)
    assert s.shape == (201,)
    assert s[0].item() == pytest.approx(-0.1) and s[-1].item() == pytest.approx(1.1)
    assert (s[1] - s[0]).item() == pytest.approx(0.006, abs=1e-6)


def test_c51_projection_splits_between_neighbours():
    support = torch.tensor([0.0, 1.0, 2.0])
    m = c51_project(torch.tensor([0.5, 1.0, 1.75, 2.0]), support)
    expected = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.25, 0.75], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(m, expected)


def test_c51_projection_clips_out_of_range_labels_and_keeps_the_mean():
    support = value_support(201, -0.1, 1.1)
    y = torch.tensor([-5.0, 3.0, 0.4321, 0.0])
    m = c51_project(y, support)
    torch.testing.assert_close(m.sum(-1), torch.ones(4))
    torch.testing.assert_close(m @ support, torch.tensor([-0.1, 1.1, 0.4321, 0.0]))
    assert m[0, 0] == 1 and m[1, -1] == 1


def test_categorical_loss_is_cross_entropy():
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    target = torch.tensor([[1.0, 0.0]])
    assert categorical_value_loss(logits, target).item() == pytest.approx(math.log(4))


def test_normalized_entropy_bounds():
    uniform = torch.full((1, 201), 1 / 201)
    one_hot = torch.zeros(1, 201)
    one_hot[0, 7] = 1
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert normalized_entropy(uniform).item() == pytest.approx(1.0)
    assert normalized_entropy(one_hot).item() == 0.0
    assert normalized_entropy(half).item() == pytest.approx(math.log(2) / math.log(4))


def test_adaptive_tau_formula_and_clip():
    h = torch.tensor([0.0, 0.5, 1.0])
    tau = adaptive_tau(h, base=0.6, alpha=0.3, tau_min=0.3, tau_max=0.95)
    torch.testing.assert_close(tau, torch.tensor([0.6, 0.45, 0.3]))
    # online base 0.9 with a confident value is clipped at tau_max only above it
    assert adaptive_tau(torch.tensor([0.0]), 1.2, 0.3, 0.3, 0.95).item() == pytest.approx(0.95)
    assert adaptive_tau(torch.tensor([1.0]), 0.4, 0.3, 0.3, 0.95).item() == pytest.approx(0.3)
    h.requires_grad_(True)
    assert not adaptive_tau(h, 0.6, 0.3, 0.3, 0.95).requires_grad


def test_quantile_of_one_hot_is_its_atom_and_cdf_threshold():
    support = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    one_hot = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    for tau in (0.01, 0.5, 0.99):
        assert quantile_readout(one_hot, support, torch.tensor([tau])).item() == 0.5
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0]] * 4)
    taus = torch.tensor([0.05, 0.3, 0.31, 1.0])  # CDF 0.1, 0.3, 0.6, 1.0
    torch.testing.assert_close(
        quantile_readout(p, support, taus), torch.tensor([0.0, 0.25, 0.5, 0.75])
    )


def test_td_target_truncates_at_episode_end():
    r = torch.tensor([0.0, 1.0, 0.0])
    disc = torch.tensor([0.9**10, 0.0, 0.0])
    boot = torch.tensor([0.8, 0.7, 0.6])
    torch.testing.assert_close(td_target(r, disc, boot), torch.tensor([0.9**10 * 0.8, 1.0, 0.0]))


def test_critic_loss_averages_heads_and_stops_target_gradient():
    q = torch.tensor([[1.0, 2.0], [3.0, 0.0]], requires_grad=True)
    y = torch.tensor([1.0, 1.0], requires_grad=True)
    loss = critic_loss(q, y)
    assert loss.item() == pytest.approx((0 + 1 + 4 + 1) / 4)
    loss.backward()
    assert y.grad is None


def test_expectile_loss_weights():
    v = torch.tensor([0.0, 0.0])
    y = torch.tensor([1.0, -1.0])
    # positive error weighted 0.7, negative 0.3
    assert expectile_loss(v, y, 0.7).item() == pytest.approx((0.7 + 0.3) / 2)


def test_combine_heads_known_answers():
    q = torch.tensor([[1.0, 2.0, 5.0], [3.0, 6.0, 5.0]])  # (E=2, B=3)
    torch.testing.assert_close(combine_heads(q, "mean"), torch.tensor([2.0, 4.0, 5.0]))
    torch.testing.assert_close(combine_heads(q, "min"), torch.tensor([1.0, 2.0, 5.0]))
    # population std over 2 heads is |q1 - q2| / 2: [1, 2, 0]
    torch.testing.assert_close(combine_heads(q, "pessimistic"), torch.tensor([1.5, 3.0, 5.0]))
    torch.testing.assert_close(combine_heads(q, "pessimistic", 1.0), combine_heads(q, "min"))
    ten = torch.arange(10.0)[:, None].expand(10, 2)  # heads 0..9: mean 4.5, std sqrt(8.25)
    expected = torch.full((2,), 4.5 - 0.5 * math.sqrt(8.25))
    torch.testing.assert_close(combine_heads(ten, "pessimistic"), expected)
    with pytest.raises(ValueError, match="expected one of"):
        combine_heads(q, "max")
