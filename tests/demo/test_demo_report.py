"""Known answers for the demo's live view and closing report, from a hand-made fleet record."""

import dataclasses
import json

import pytest
from rich.console import Console

from lwd.data.store import EpisodeStore
from lwd.demo.report import (
    first_vs_last,
    fleet_report,
    latency_table,
    report_table,
    write_report,
)
from lwd.demo.view import render
from lwd.demo.watch import FleetWatch
from lwd.types import Source


@pytest.fixture
def fleet(tmp_path, make_episode):
    """v1: 4 episodes of open-drawer (1 autonomous success, 1 helped success, 2 failures);
    v3: 4 episodes (3 autonomous successes, 1 failure); snapshots after each half."""
    root = tmp_path / "server"
    store = EpisodeStore(root / "store")
    t0 = 1_800_000_000.0
    outcomes = [(1, True, False), (1, True, True), (1, False, False), (1, False, True)]
    outcomes += [(3, True, False), (3, True, False), (3, True, False), (3, False, False)]
    for k, (version, success, helped) in enumerate(outcomes):
        ep = make_episode(10, seed=k, success=success, policy_version=version)
        sources = ep.sources.copy()
        if helped:
            sources[5:] = Source.INTERVENTION
        ep = dataclasses.replace(ep, sources=sources, created_at=t0 + 10 * k)
        store.put(ep)
        if k in (3, 7):
            store.snapshot()
    from lwd.fleet.registry import PolicyRegistry

    PolicyRegistry(root / "policies")  # empty registry: versions come from the episodes
    robots = tmp_path / "robots" / "robot-0" / "spool"
    robots.mkdir(parents=True)
    events = [
        {"event": "policy_loaded", "version": 2, "loaded_at": t0 + 3.0},
        {"event": "policy_loaded", "version": 3, "loaded_at": t0 + 7.0},
    ]
    (robots / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n{cut")
    watch = FleetWatch(root, tmp_path / "robots")
    watch.refresh()
    watch.versions = {1: t0, 2: t0 + 1.0, 3: t0 + 2.0}  # as if published then
    return watch


def test_success_counts_only_unhelped_episodes(fleet):
    buckets = fleet.version_buckets()
    assert buckets[0] == (1, 1) and buckets[-1][1] == 3
    table = fleet.success_table([(1, 1), (2, 3)])
    assert table == {"open-drawer": [(1, 4), (3, 4)]}
    assert fleet.intervention_rate() == pytest.approx(2 / 8)
    assert fleet.intervention_rate(last=4) == 0.0
    assert fleet.robot_hours == pytest.approx(8 * 10 * 0.05 / 3600)


def test_first_and_last_thirds_are_by_start_time_per_task():
    def row(task, t, success, helped=False):
        return dict(task=task, created_at=t, success=success, n_intervention=int(helped))

    # created out of order on purpose; 7 drawer episodes -> thirds of 2, the middle 3 unused
    rows = [row("drawer", t, ok) for t, ok in [(5, True), (0, False), (6, True), (1, True)]]
    rows += [row("drawer", 2, True, helped=True), row("drawer", 3, True), row("drawer", 4, False)]
    rows += [row("window", 0, True)]  # fewer than 3 episodes: empty thirds
    out = first_vs_last(rows)
    assert (out["drawer"]["early_success"], out["drawer"]["early_episodes"]) == (0.5, 2)
    assert (out["drawer"]["late_success"], out["drawer"]["late_episodes"]) == (1.0, 2)
    assert out["window"]["early_episodes"] == out["window"]["late_episodes"] == 0


def test_report_known_answers(fleet, tmp_path):
    report = fleet_report(fleet)
    task = report["per_task"]["open-drawer"]
    # thirds of the 8 episodes by start time: the first 2 (a success, then a helped success,
    # which is no autonomous success) and the last 2 (a success, then a failure)
    assert (task["early_success"], task["early_episodes"]) == (0.5, 2)
    assert (task["late_success"], task["late_episodes"]) == (0.5, 2)
    lat = report["latency"]
    assert lat["policy_to_robot"]["n"] == 2  # v1 is the start: not a delivery
    # published at +1 and +2, loaded at +3 and +7: 2 s and 5 s
    assert lat["policy_to_robot"]["p50_s"] == pytest.approx(3.5)  # linear interpolation
    assert lat["policy_to_robot"]["max_s"] == pytest.approx(5.0)
    assert lat["episode_to_learner"]["n"] == 8
    curve = report["success_curves"]["open-drawer"]
    assert curve["success"][0] == 1.0 and curve["success"][-1] == pytest.approx(4 / 8)
    paths = write_report(report, tmp_path / "report")
    assert all(p.stat().st_size > 0 for p in paths) and len(paths) == 4
    console = Console(width=120, record=True)
    console.print(report_table(report), latency_table(report), render(fleet, 60, 900))
    text = console.export_text()
    assert "open-drawer" in text and "25% (4)" in text and "policy published" in text


def test_the_report_shows_every_evaluated_policy_in_order(fleet):
    evaluation = {"episodes_per_task": 10, "policies": ["sft", "start", "final"]}
    for name, rate in (("sft", 0.2), ("start", 0.4), ("final", 0.6)):
        evaluation |= {name: {"open-drawer": rate}, f"{name}_avg": rate}
    console = Console(width=160, record=True)
    console.print(report_table(fleet_report(fleet, evaluation)))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "eval sft" in line)
    assert header.index("eval sft") < header.index("eval start") < header.index("eval final")
    average = next(line for line in lines if line.lstrip("│ ").startswith("average"))
    assert average.index("20%") < average.index("40%") < average.index("60%")


def test_evaluations_give_standard_errors_and_paired_differences(fleet, tmp_path, monkeypatch):
    from lwd.config import DemoConfig
    from lwd.demo import run
    from lwd.demo.report import improvement_lines

    # 4 episodes (seeds 0..3); sft succeeds on seeds 0, 1; final on 0, 1, 2
    wins = {"sft": {0, 1}, "final": {0, 1, 2}}

    def evaluated(policy, protocol, cache, console, what):
        outcomes = {f"open-drawer/{i}": float(i in wins[policy.name]) for i in range(4)}
        return {"success": {"open-drawer": sum(outcomes.values()) / 4}, "outcomes": outcomes}

    monkeypatch.setattr(run, "_evaluate_cached", evaluated)
    cfg = DemoConfig(tasks=("open-drawer",), eval_episodes=4)
    policies = {"sft": tmp_path / "sft", "final": tmp_path / "final"}
    ev = run.evaluate_policies(cfg, policies, 1, Console())
    assert ev["sft_avg"] == 0.5 and ev["final_avg"] == 0.75
    assert ev["sft_se"] == pytest.approx((1 / 3 / 4) ** 0.5)  # var of 1,1,0,0 (ddof 1): 1/3
    # differences 0, 0, 1, 0: mean 1/4, var (3 * 1/16 + 9/16) / 3 = 1/4, se sqrt(1/16)
    assert (ev["final_minus_sft"], ev["final_minus_sft_n"]) == (0.25, 4)
    assert ev["final_minus_sft_se"] == pytest.approx(0.25)
    report = fleet_report(fleet, ev)
    assert improvement_lines(report) == [
        "final − sft: +25 points ± 25 (s.e., paired over 4 episodes)"
    ]
    paths = write_report(report, tmp_path / "report")
    assert paths[-1].name == "evaluation.png" and paths[-1].stat().st_size > 1000


def test_a_fleet_too_big_for_the_memory_is_refused_before_it_starts():
    from lwd.config import DemoConfig, preset
    from lwd.demo.run import ACTIVE_ROBOT_MB, IDLE_ROBOT_MB, check_memory, fleet_memory_mb

    light = preset("demo-light")  # 2 processes of 32 robots, 12 of each in an episode at once
    assert fleet_memory_mb(light) == 24 * ACTIVE_ROBOT_MB + 40 * IDLE_ROBOT_MB
    uncapped = DemoConfig(robots=64, robots_per_process=32)
    assert fleet_memory_mb(uncapped) == 64 * ACTIVE_ROBOT_MB
    with pytest.raises(ValueError, match=r"64 simulated robots need .* run at most 48 robots"):
        check_memory(uncapped, available=16_000.0)
    check_memory(light, available=16_000.0)  # the cap makes it fit
    check_memory(uncapped, available=64 * ACTIVE_ROBOT_MB / 0.9 + 1)  # fits: no error
    check_memory(light, available=None)  # unknown (not Linux): no check
