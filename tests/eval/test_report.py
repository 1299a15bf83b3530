import json
import math

import pytest

from lwd.config import EvalConfig
from lwd.eval.evaluator import plan_episodes
from lwd.eval.report import EvalReport
from lwd.types import EvalEpisodeResult


def _result(task, success, progress, t=10.0, seed=0):
    return EvalEpisodeResult(
        task=task,
        seed=seed,
        success=success,
        progress=progress,
        cycle_time_s=t,
        num_steps=int(t / 0.05),
    )


def test_report_known_answers(tmp_path):
    results = [
        _result("open-drawer", True, 1.0, 2.0),
        _result("open-drawer", False, 0.0, 10.0),
        _result("put-in-drawer", False, 0.5, 37.5),
        _result("put-in-drawer", False, 0.75, 37.5),
    ]
    report = EvalReport.from_results("ckpt", EvalConfig(episodes_per_task=2), results)
    drawer, put = report.tasks
    assert drawer.success == 0.5 and drawer.success_se == pytest.approx(0.5)
    assert drawer.cycle_time_s == 6.0 and drawer.cycle_time_success_s == 2.0
    assert put.success == 0.0 and math.isnan(put.cycle_time_success_s)
    assert report.avg_success == 0.25
    # The paper's score: success on short tasks, step-wise score on long ones.
    assert report.avg_score == pytest.approx((0.5 + 0.625) / 2)
    data = json.loads(report.write_json(tmp_path / "r.json").read_text())
    assert data["tasks"][1]["cycle_time_success_s"] is None
    assert report.plot(tmp_path / "r.png").stat().st_size > 1000


def test_protocol_is_fixed_and_validated():
    a = plan_episodes(EvalConfig(episodes_per_task=3))
    assert a == plan_episodes(EvalConfig(episodes_per_task=3))
    assert len(a) == 24 and len({j["seed"] for j in a}) == 24
    assert {j["robot"] for j in a} == {0, 1, 2}
    with pytest.raises(ValueError, match="at least 1"):
        plan_episodes(EvalConfig(episodes_per_task=0))
    with pytest.raises(ValueError, match="num_robots"):
        plan_episodes(EvalConfig(num_robots=0))
