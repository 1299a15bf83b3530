"""Checkpoint round trips, exact resume, and every loud failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

from lwd.algo.flow_bc import flow_matching_loss
from lwd.policy.checkpoint import (
    CheckpointError,
    load_policy,
    load_training_state,
    read_checkpoint_config,
    save_policy,
    save_training_state,
)
from lwd.policy.normalizer import Normalizer
from tests.conftest import TINY_POLICY, make_tiny_policy


@pytest.fixture
def ckpt(tmp_path):
    policy = make_tiny_policy()
    save_policy(tmp_path / "ckpt", policy, extra={"version": 3})
    return tmp_path / "ckpt", policy


def test_round_trip_gives_identical_outputs(ckpt):
    path, policy = ckpt
    loaded = load_policy(path)
    assert loaded.cfg == TINY_POLICY and not loaded.training
    state, lang = torch.randn(5, 4) * 3, torch.randn(5, 8)
    noise = torch.randn(5, 2, 2)
    assert torch.equal(
        policy.sample(state, lang, noise=noise), loaded.sample(state, lang, noise=noise)
    )
    np.testing.assert_array_equal(loaded.normalizer.state_std, policy.normalizer.state_std)
    meta = read_checkpoint_config(path)
    assert meta["extra"] == {"version": 3} and meta["kind"] == "flow_policy"
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json", "model.safetensors", "normalizer.json",
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "normalizer.json"])
def test_missing_file_is_named(ckpt, name):
    path, _ = ckpt
    (path / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name}: missing file"):
        load_policy(path)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nope")


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    for key, value in changes.items():
        data[key] = value
    path.write_text(json.dumps(data))
    return data


def test_unknown_format_version(ckpt):
    path, _ = ckpt
    _edit_json(path / "config.json", format=99)
    with pytest.raises(CheckpointError, match="config.json: unknown checkpoint format 99"):
        load_policy(path)


def test_config_weights_shape_mismatch_lists_keys(ckpt):
    path, _ = ckpt
    data = json.loads((path / "config.json").read_text())
    _edit_json(path / "config.json", policy={**data["policy"], "width": 8})
    with pytest.raises(CheckpointError, match="shape mismatch") as err:
        load_policy(path)
    assert "field.context_in.weight: file (16, 68) vs model (8, 68)" in str(err.value)
    assert "model.safetensors" in str(err.value)


def test_bad_config_field(ckpt):
    path, _ = ckpt
    data = json.loads((path / "config.json").read_text())
    _edit_json(path / "config.json", policy={**data["policy"], "widht": 8})
    with pytest.raises(CheckpointError, match="config.json: invalid policy config.*widht"):
        load_policy(path)


def test_missing_and_unexpected_keys(ckpt):
    path, _ = ckpt
    tensors = safetensors.torch.load_file(str(path / "model.safetensors"))
    tensors["field.extra.weight"] = tensors.pop("field.x_in.weight")
    safetensors.torch.save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_policy(path)
    msg = str(err.value)
    assert "missing keys ['field.x_in.weight']" in msg
    assert "unexpected keys ['field.extra.weight']" in msg


def test_nan_weights(tmp_path):
    policy = make_tiny_policy()
    with torch.no_grad():
        policy.field.time_in.weight[0, 0] = float("nan")
    save_policy(tmp_path, policy)
    with pytest.raises(CheckpointError, match=r"NaN or inf values in \['field.time_in.weight'\]"):
        load_policy(tmp_path)


def test_normalizer_dims_differ_from_config(ckpt):
    path, _ = ckpt
    wrong = Normalizer(5, 2).to_dict()
    (path / "normalizer.json").write_text(json.dumps(wrong))
    with pytest.raises(CheckpointError, match="normalizer.json: normalizer is for state_dim=5"):
        load_policy(path)


def test_corrupt_normalizer_and_weights(ckpt):
    path, _ = ckpt
    (path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="model.safetensors: not a readable"):
        load_policy(path)
    (path / "normalizer.json").write_text("{")
    with pytest.raises(CheckpointError, match="normalizer.json: unreadable JSON"):
        load_policy(path)


def _train(policy, opt, steps, g, data_rng):
    for _ in range(steps):
        idx = torch.as_tensor(data_rng.integers(0, 32, size=8))
        state = torch.arange(32.0)[idx, None].repeat(1, 4) / 32
        actions = torch.tanh(state[:, :2]).reshape(8, 1, 2).repeat(1, 2, 1)
        loss, _ = flow_matching_loss(policy.field, state, torch.zeros(8, 8), actions, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_exact_resume(tmp_path):
    policy = make_tiny_policy()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2, betas=(0.8, 0.95))
    g, data_rng = torch.Generator().manual_seed(5), np.random.default_rng(5)
    _train(policy, opt, 3, g, data_rng)
    save_policy(tmp_path, policy)
    save_training_state(tmp_path, {"policy": opt}, 3, generators={"g": g, "data": data_rng})
    _train(policy, opt, 3, g, data_rng)
    reference = {k: v.clone() for k, v in policy.state_dict().items()}

    resumed = load_policy(tmp_path).train()
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-2, betas=(0.8, 0.95))
    g2, data_rng2 = torch.Generator().manual_seed(0), np.random.default_rng(0)
    state = load_training_state(tmp_path, {"policy": opt2}, generators={"g": g2, "data": data_rng2})
    assert state.step == 3
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95)
    _train(resumed, opt2, 3, g2, data_rng2)
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_training_state_mismatches_are_loud(tmp_path):
    policy = make_tiny_policy()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    _train(policy, opt, 1, torch.Generator().manual_seed(0), np.random.default_rng(0))
    save_training_state(tmp_path, opt, 1)
    with pytest.raises(CheckpointError, match="no optimizer named 'critic'"):
        load_training_state(tmp_path, {"critic": opt})
    other = torch.optim.Adam(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    with pytest.raises(CheckpointError, match="optimizer 'optimizer' does not match"):
        load_training_state(tmp_path, other)
    with pytest.raises(CheckpointError, match="no saved RNG state"):
        load_training_state(tmp_path, opt, generators={"g": torch.Generator()})
    _edit_json(tmp_path / "trainer_state.json", format=2)
    with pytest.raises(CheckpointError, match="trainer_state.json: unknown checkpoint format 2"):
        load_training_state(tmp_path, opt)
    save_training_state(tmp_path, opt, 1)
    (tmp_path / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="optimizer.safetensors: missing file"):
        load_training_state(tmp_path, opt)
