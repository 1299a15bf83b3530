"""The whole loop through `lwd demo`'s runner, tiny: real server, robot and learner processes."""

import json

from lwd.config import DemoConfig
from lwd.demo.run import run_demo


def test_tiny_demo_runs_the_loop_and_reports(tmp_path):
    cfg = DemoConfig(
        robots=1,
        minutes=0.6,
        tasks=("press-center",),
        episodes_per_task=2,
        sft_steps=4,
        policy_width=32,
        critic_width=32,
        actor_warmup=2,
        eval_episodes=1,
        robot_nice=0,
    )
    report = run_demo(cfg, tmp_path / "demo", workers=1)
    assert report["episodes"] >= 1 and report["robots"] == 1
    assert report["learner"].get("step", 0) > 0
    saved = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    assert saved["per_task"].keys() == {"press-center"}
    for png in ("success_vs_robot_hours", "intervention_rate", "data_plane_latency"):
        assert (tmp_path / "demo" / "report" / f"{png}.png").stat().st_size > 1000
