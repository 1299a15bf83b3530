"""The scripted demonstrator's success on fleet8 under the evaluation protocol (perturbed robots).

python benchmarks/operator_fleet8.py [--episodes 20] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import RESULTS, setup_process, write_result  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--episodes", type=int, default=20, help="episodes per task")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3 episodes per task")
    args = p.parse_args()
    setup_process()
    from rich.console import Console

    from lwd.config import EvalConfig
    from lwd.eval.evaluator import OPERATOR, evaluate

    n = 3 if args.quick else args.episodes
    cfg = EvalConfig(episodes_per_task=n, workers=args.workers)
    report = evaluate(OPERATOR, cfg, on_episode=lambda d, t, r: print(f"\r{d}/{t}", end=""))
    print()
    Console().print(report.table(title="scripted demonstrator on fleet8 (perturbed robots)"))
    metrics = {"min_task_success": report.min_success, "avg_success": report.avg_success}
    metrics |= {f"{t.task}_success": t.success for t in report.tasks}
    report.plot(RESULTS / "operator_fleet8.png")
    write_result("operator_fleet8", metrics, report.to_dict())


if __name__ == "__main__":
    main()
