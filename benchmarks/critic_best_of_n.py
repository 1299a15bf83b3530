"""Does a trained critic rank its own reference policy's samples? Best-of-N under Q vs one sample.

    python benchmarks/critic_best_of_n.py --checkpoint RUN/checkpoints/step-N [--n 16]

Loads an agent checkpoint (offline or online run), samples ``N`` chunks from its reference flow
at every replanning step, acts with the one the target critic (mean of heads) scores highest,
and compares with acting on one sample, on the same fixed-protocol episodes. QAM can only
tilt the policy towards what the critic prefers, so a critic whose best-of-N does not beat one
sample cannot make QAM improve the policy, whatever lambda is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from result_file import setup_process, write_result  # noqa: E402


def load_agent_checkpoint(ckpt: Path):
    from lwd.agent import Agent
    from lwd.config import OfflineConfig, OnlineConfig, from_dict
    from lwd.learner.offline import load_agent
    from lwd.policy.checkpoint import load_policy

    run = ckpt.parent.parent
    for name, cls in (("offline_config.json", OfflineConfig), ("online_config.json", OnlineConfig)):
        if (run / name).is_file():
            cfg = from_dict(cls, json.loads((run / name).read_text()))
            break
    else:
        raise SystemExit(f"{run} has no offline_config.json or online_config.json: not a run")
    reference = load_policy(ckpt / "reference")
    agent = Agent(cfg.agent, reference, seed=0)
    load_agent(ckpt, agent, training_state=False)
    return agent.eval(), reference


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="RUN/checkpoints/step-N of an agent run")
    p.add_argument("--n", type=int, default=16, help="candidates per replanning step")
    p.add_argument(
        "--tasks", nargs="+", default=["open-drawer", "close-window", "move-cube", "press-center"]
    )
    p.add_argument("--episodes", type=int, default=30, help="per task")
    p.add_argument("--name", default="critic_best_of_n", help="result file name")
    p.add_argument("--quick", action="store_true", help="2 episodes per task, N = 4 (a smoke test)")
    args = p.parse_args()
    if args.quick:
        args.episodes, args.n = 2, 4
    setup_process()
    import torch

    from lwd.config import EvalConfig
    from lwd.eval.evaluator import _ROBOT_SEED_BASE, plan_episodes
    from lwd.policy.flow import FlowPolicyRunner
    from lwd.policy.ranker import BestOfN
    from lwd.sim.robot import EnvPool, Perturbation, SimRobot
    from lwd.sim.rollout import policy_episode
    from lwd.sim.tasks import get_task

    torch.set_num_threads(1)
    agent, reference = load_agent_checkpoint(Path(args.checkpoint))

    jobs = plan_episodes(EvalConfig(tasks=tuple(args.tasks), episodes_per_task=args.episodes))
    robots, pool, metrics = {}, EnvPool(), {}
    for n in (1, args.n):
        ranked = BestOfN(reference, agent.target_critic, n)  # n = 1: the reference alone
        runner, wins, t0 = FlowPolicyRunner(ranked, version=1, seed=0), {}, time.time()
        for job in jobs:
            key = job["robot"]
            if key not in robots:
                pert = Perturbation.sample(_ROBOT_SEED_BASE + key)
                robots[key] = SimRobot(f"eval-robot-{key}", pert, pool=pool)
            runner.reseed(job["seed"])
            task = get_task(job["task"], job["suite"])
            ep = policy_episode(robots[key], runner, task, job["seed"])
            wins.setdefault(task.name, []).append(float(ep.success))
        for task, w in wins.items():
            metrics[f"best_of_{n}_{task}"] = float(np.mean(w))
        metrics[f"best_of_{n}_avg"] = float(np.mean([np.mean(w) for w in wins.values()]))
        print(
            f"best of {n}: avg success {metrics[f'best_of_{n}_avg']:.3f} "
            f"({time.time() - t0:.0f} s)",
            flush=True,
        )
    metrics["gain"] = metrics[f"best_of_{args.n}_avg"] - metrics["best_of_1_avg"]
    write_result(
        f"{args.name}_quick" if args.quick else args.name,
        metrics,
        {
            "checkpoint": args.checkpoint,
            "n": args.n,
            "episodes_per_task": args.episodes,
            "tasks": args.tasks,
            "critic": "target critic, mean of heads",
        },
    )


if __name__ == "__main__":
    main()
