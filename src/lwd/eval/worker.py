"""Evaluation worker process: ``python -m lwd.eval.worker`` (spoken to by lwd.workers)."""

from __future__ import annotations

import dataclasses

import torch

from lwd.eval.evaluator import _ROBOT_SEED_BASE, OPERATOR
from lwd.sim.operator import ScriptedOperator
from lwd.sim.robot import EnvPool, Perturbation, SimRobot
from lwd.sim.rollout import policy_episode, scripted_episode
from lwd.sim.tasks import get_task
from lwd.types import EvalEpisodeResult, Source
from lwd.workers import serve


def setup(init: dict):
    torch.set_num_threads(1)  # one process per core; threads would only fight each other
    runner = None
    if init["policy"] != OPERATOR:
        from lwd.policy.ranker import load_runner

        runner = load_runner(init["policy"], best_of_n=init.get("best_of_n"))
    robots: dict[tuple[int, bool], SimRobot] = {}
    pool = EnvPool()

    def handle(job: dict) -> dict:
        key = (job["robot"], job["perturb"])
        if key not in robots:
            pert = Perturbation.sample(_ROBOT_SEED_BASE + job["robot"]) if job["perturb"] else None
            robots[key] = SimRobot(f"eval-robot-{job['robot']}", pert, pool=pool)
        robot = robots[key]
        task = get_task(job["task"], job["suite"])
        if runner is None:
            op = ScriptedOperator(robot, "demonstrator", seed=job["seed"])
            ep = scripted_episode(robot, op, task, job["seed"], Source.DEMO)
        else:
            runner.reseed(job["seed"])  # sampling noise is part of the protocol
            ep = policy_episode(robot, runner, task, job["seed"])
        result = EvalEpisodeResult(
            task=task.name,
            seed=job["seed"],
            success=ep.success,
            progress=ep.progress,
            cycle_time_s=ep.cycle_time_s,
            num_steps=ep.num_steps,
            extras={"robot": robot.robot_id},
        )
        return dataclasses.asdict(result)

    return handle


if __name__ == "__main__":
    serve(setup)
