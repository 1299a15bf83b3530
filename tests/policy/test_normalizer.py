"""Known-answer tests for the state/action normalizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lwd.policy.normalizer import Normalizer

# Column 0 varies (mean 2, population std 1); columns 1 and 2 are constant (padding, a flag).
STATES = np.array([[1.0, 0.0, 5.0], [3.0, 0.0, 5.0]], dtype=np.float32)
ACTIONS = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)


def test_fit_known_mean_and_floored_std():
    norm = Normalizer(3, 2).fit(STATES, ACTIONS)
    np.testing.assert_array_equal(norm.state_mean, [2.0, 0.0, 5.0])
    np.testing.assert_array_equal(norm.state_std, np.array([1.0, 0.01, 0.01], np.float32))
    np.testing.assert_array_equal(norm.action_mean, [0.5, 0.0])
    np.testing.assert_array_equal(norm.action_std, np.array([0.5, 0.01], np.float32))


def test_normalize_state_numpy_and_constant_dims_map_to_zero():
    norm = Normalizer(3, 2).fit(STATES, ACTIONS)
    out = norm.normalize_state(STATES)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(norm.denormalize_state(out), STATES)


def test_normalize_state_torch_matches_numpy_and_keeps_type():
    norm = Normalizer(3, 2).fit(STATES, ACTIONS)
    x = torch.tensor([[2.5, 0.02, 4.0]], dtype=torch.float64)
    out = norm.normalize_state(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), [[0.5, 2.0, -100.0]], rtol=1e-6)
    np.testing.assert_allclose(out.numpy(), norm.normalize_state(x.numpy()), rtol=1e-6)


def test_actions_pass_through_by_default_and_normalize_with_flag():
    a = np.array([[0.75, -0.5]], np.float32)
    plain = Normalizer(3, 2).fit(STATES, ACTIONS)
    assert plain.normalize_action(a) is a
    assert plain.denormalize_action(a) is a
    flagged = Normalizer(3, 2, normalize_actions=True).fit(STATES, ACTIONS)
    np.testing.assert_allclose(flagged.normalize_action(a), [[0.5, -50.0]])
    np.testing.assert_allclose(flagged.denormalize_action(flagged.normalize_action(a)), a)


def test_unfitted_is_identity():
    norm = Normalizer(3, 2)
    np.testing.assert_array_equal(norm.normalize_state(STATES), STATES)


def test_dict_round_trip_through_json():
    norm = Normalizer(3, 2, normalize_actions=True).fit(STATES, ACTIONS)
    back = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    for name in ("state_mean", "state_std", "action_mean", "action_std"):
        np.testing.assert_array_equal(getattr(back, name), getattr(norm, name))
    assert back.normalize_actions and back.min_std == norm.min_std


def test_shape_mismatch_is_loud():
    norm = Normalizer(3, 2).fit(STATES, ACTIONS)
    with pytest.raises(ValueError, match="expects 3 features"):
        norm.normalize_state(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="expects 2 features"):
        Normalizer(3, 2).fit(STATES, np.zeros((2, 3)))


def test_nan_data_and_nan_stats_are_loud():
    bad = STATES.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Normalizer(3, 2).fit(bad, ACTIONS)
    data = Normalizer(3, 2).fit(STATES, ACTIONS).to_dict()
    data["state_std"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Normalizer.from_dict(data)
    data = Normalizer(3, 2).to_dict()
    data["action_mean"] = [0.0]
    with pytest.raises(ValueError, match="action_mean has shape"):
        Normalizer.from_dict(data)
