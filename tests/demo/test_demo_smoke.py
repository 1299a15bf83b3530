"""The whole loop through `lwd demo`'s runner, tiny: real server, robot and learner processes."""

import dataclasses
import json

import pytest
from rich.console import Console

from lwd.config import DemoConfig
from lwd.data.store import EpisodeStore
from lwd.demo.run import evaluate_policies, run_demo
from lwd.policy.ranker import has_ranker


def test_tiny_demo_runs_the_loop_and_reports(tmp_path, monkeypatch):
    cfg = DemoConfig(
        robots=1,
        minutes=0.6,
        tasks=("press-center",),
        episodes_per_task=2,
        sft_steps=4,
        policy_width=32,
        critic_width=32,
        deploy_episodes=1,
        offline_steps=4,
        best_of_n=2,
        online_n_step=2,
        cut_at_source_change=True,
        eval_episodes=1,
        robot_nice=0,
    )
    report = run_demo(cfg, tmp_path / "demo", workers=1)
    assert report["episodes"] >= 1 and report["robots"] == 1
    assert report["learner"].get("step", 0) > 0
    saved = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    assert saved["per_task"].keys() == {"press-center"}
    online = json.loads((tmp_path / "demo" / "learner" / "online_config.json").read_text())
    assert (online["n_step"], online["cut_at_source_change"]) == (2, True)
    # the fleet started from the offline stage: the SFT acting best-of-2 under its critic
    assert has_ranker(tmp_path / "demo" / "offline" / "policy")
    assert saved["evaluation"]["policies"] == ["sft", "start", "final"]
    deployed = EpisodeStore(tmp_path / "demo" / "data_deployed")
    assert len(deployed) == len(EpisodeStore(tmp_path / "demo" / "data")) + 1
    for png in ("success_vs_robot_hours", "intervention_rate", "data_plane_latency"):
        assert (tmp_path / "demo" / "report" / f"{png}.png").stat().st_size > 1000
    # the cached start is only reused with the settings it was built with
    with pytest.raises(ValueError, match="policy_width: 32 there, 64 asked"):
        run_demo(dataclasses.replace(cfg, policy_width=64), tmp_path / "demo", workers=1)
    # evaluations are cached by policy content and protocol: the SFT's is not run again
    monkeypatch.setattr("lwd.eval.evaluator.evaluate", _must_not_run)
    again = evaluate_policies(
        cfg, {"sft": tmp_path / "demo" / "sft"}, 1, Console(), cache=tmp_path / "demo" / "evals"
    )
    assert again["sft"] == saved["evaluation"]["sft"]


def _must_not_run(*args, **kwargs):
    raise AssertionError("a cached evaluation was run again")
