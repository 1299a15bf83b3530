"""Offline RL runs: exact resume after a kill, checkpoint layout, clear errors."""

import dataclasses
import json

import pytest

from lwd.config import OfflineConfig
from lwd.learner.offline import latest_checkpoint, train_offline
from lwd.policy.checkpoint import load_policy
from tests.learner.conftest import CFG, PCFG, FakeEncoder


def losses(setup, out, cfg=CFG, **kw):
    traj = []
    summary = train_offline(
        cfg,
        setup / "data",
        setup / "sft",
        out,
        FakeEncoder(),
        on_step=lambda s, n, m: traj.append((s, m["critic/loss"], m["actor/qam_loss"])),
        known_tasks=None,
        **kw,
    )
    return traj, summary


@pytest.mark.parametrize("reference", ["frozen", "bc"])
def test_killed_run_resumes_exactly(setup, tmp_path, reference):
    cfg = dataclasses.replace(CFG, agent=dataclasses.replace(CFG.agent, reference=reference))
    full, _ = losses(setup, tmp_path / "full", cfg)
    first, s1 = losses(setup, tmp_path / "cut", cfg, stop_after=6)  # "killed" after step 6 ...
    assert s1["steps"] == 6
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000006"
    # ... but the last complete checkpoint written before the kill is at step 4: drop step 6
    # to simulate a kill between checkpoints, then resume.
    import shutil

    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step-0000006")
    (tmp_path / "cut" / "LATEST").write_text("step-0000004")
    rest, s2 = losses(setup, tmp_path / "cut", cfg)
    assert s2["resumed_from"] == 4
    resumed = first[:4] + rest
    assert [r[0] for r in resumed] == list(range(1, 13))
    assert resumed == full  # bit-identical loss trajectory


def test_run_layout_and_policy_export(setup, tmp_path):
    _, summary = losses(setup, tmp_path / "run")
    out = tmp_path / "run"
    assert json.loads((out / "offline_config.json").read_text())["agent"]["value"] == "divl"
    assert (out / "tb").is_dir() and any((out / "tb").iterdir())
    policy = load_policy(out / "policy")
    assert policy.cfg == PCFG
    assert len(list((out / "checkpoints").iterdir())) == CFG.keep_checkpoints
    assert summary["replay"]["episodes"] == 6


def test_changed_config_refuses_to_resume(setup, tmp_path):
    losses(setup, tmp_path / "run", stop_after=4)
    other = OfflineConfig(**{**CFG.__dict__, "n_step": 1})
    with pytest.raises(ValueError, match="different config"):
        train_offline(other, setup / "data", setup / "sft", tmp_path / "run", FakeEncoder())


def test_missing_store_is_a_clear_error(setup, tmp_path):
    with pytest.raises(FileNotFoundError, match="not an episode store"):
        train_offline(CFG, tmp_path / "nope", setup / "sft", tmp_path / "o", FakeEncoder())
