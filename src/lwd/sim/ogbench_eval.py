"""Evaluate a policy on OGBench's own single-task environments (QAM's benchmark protocol).

The environment is ``gymnasium.make("<env>-singletask-task<k>-v0")`` with OGBench's defaults: the
fixed initial configuration of task ``k`` with small random perturbations, its time limit (scene
750 steps, puzzle-3x3 500), ``success_timing="pre"`` and termination at the goal; an episode's
outcome is the environment's ``info["success"]`` on its last step, as in OGBench's evaluation.

Usage::

    report = evaluate_singletask(policy, "scene", 2, episodes=50, seed=0)
    report["success"]  # mean success over the episodes
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import ogbench.manipspace  # noqa: F401  (registers the OGBench manipulation environments)

from lwd.sim.ogbench_env import seeded_reset
from lwd.sim.ogbench_tasks import OgbenchTask, format_states, ogbench_task
from lwd.sim.skills import SkillRunner, plan
from lwd.sim.tasks import SceneGoal, TaskSpec
from lwd.types import SCRIPTED_VERSION, ActionChunk, Observation


class OraclePolicy:
    """Privileged scripted solver (lwd's planner over OGBench's Markov oracles), for checks.

    It reads the simulator state of ``env``, not the observation; chunks have one action.
    """

    version = SCRIPTED_VERSION

    def __init__(self, task: OgbenchTask, env) -> None:
        self.env = env.unwrapped
        if task.kind == "scene":
            goal = SceneGoal(task.cube_xyz, task.buttons, task.drawer, task.window)
        else:
            goal = task.buttons
        self.spec = TaskSpec(
            name=task.name,
            env_kind=task.kind,
            horizon=0,
            instruction=task.instruction,
            paraphrases=(),
            subtasks=(),
            init=goal,
            goal=goal,
        )
        self._skill: SkillRunner | None = None

    def reset(self) -> None:
        self._skill = None

    def infer(self, obs: Observation) -> ActionChunk:
        if self._skill is None or self._skill.done:
            primitive = plan(self.spec, self.env)
            self._skill = (
                None if primitive is None else SkillRunner(self.env, primitive, self.spec.env_kind)
            )
        if self._skill is None:
            action = np.zeros(5)
        else:
            action = np.clip(self._skill.act(self.env.compute_ob_info()), -1.0, 1.0)
        return ActionChunk(actions=action[None].astype(np.float32), version=self.version)


def _chunk_actions(chunk: ActionChunk) -> np.ndarray:
    actions = np.asarray(chunk.actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] != 5:
        raise ValueError(
            f"policy returned an action chunk of shape {actions.shape}; expected (H, 5) with H >= 1"
        )
    if not np.isfinite(actions).all():
        raise ValueError("policy returned NaN/inf actions")
    return np.clip(actions, -1.0, 1.0)


def evaluate_singletask(
    policy,
    env_name: str,
    task_id: int,
    episodes: int,
    seed: int = 0,
    max_steps: int | None = None,
    state_layout: str = "packed",
) -> dict:
    """Run ``policy`` for ``episodes`` episodes of OGBench's single task ``task_id``.

    The policy acts in chunks: every action of ``policy.infer(obs).actions`` ``(H, 5)`` is
    executed (clipped to [-1, 1]) before it is asked again, unless the episode ends first.

    Args:
        policy: has ``infer(Observation) -> ActionChunk``; ``Observation.state`` is the float32
            state in ``state_layout`` and ``instruction`` the task's instruction. ``"oracle"``
            runs :class:`OraclePolicy` (a privileged scripted solver) instead.
        env_name: ``"scene"`` or ``"puzzle-3x3"`` (or an OGBench id of those).
        task_id: OGBench's task number, 1..5.
        episodes: number of episodes; episode ``i`` is reset with a seed drawn from
            ``(seed, i)``.
        seed: evaluation seed.
        max_steps: optional cap below the environment's own time limit (for quick tests).
        state_layout: ``"packed"`` (78-D, as stored for training) or ``"raw"``.

    Returns:
        ``{"success": mean, "episodes": n, "per_episode": [{"seed", "success", "steps"}],
        "env": gym id, "task": lwd task name, "max_steps": step limit used}``.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    task = ogbench_task(env_name, task_id)
    env = gym.make(task.eval_env_id)
    limit = int(env.spec.max_episode_steps)
    if max_steps is not None:
        limit = min(limit, int(max_steps))
    actor = OraclePolicy(task, env) if isinstance(policy, str) and policy == "oracle" else policy
    if isinstance(actor, str):
        raise ValueError(f"unknown policy {policy!r}; pass a Policy object or 'oracle'")
    per_episode = []
    try:
        for i in range(episodes):
            ep_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
            np.random.seed(ep_seed)  # OGBench's oracles use numpy's global generator
            ob, info = seeded_reset(env, ep_seed)  # OGBench's settle steps included
            if isinstance(actor, OraclePolicy):
                actor.reset()
            steps, done = 0, False
            while not done:
                state = format_states(task.kind, ob[None], state_layout)[0]
                chunk = actor.infer(Observation(state=state, instruction=task.instruction))
                for action in _chunk_actions(chunk):
                    ob, _, terminated, truncated, info = env.step(action)
                    steps += 1
                    done = terminated or truncated or steps >= limit
                    if done:
                        break
            per_episode.append(
                dict(seed=ep_seed, success=bool(info.get("success", False)), steps=steps)
            )
    finally:
        env.close()
    return dict(
        success=float(np.mean([e["success"] for e in per_episode])),
        episodes=episodes,
        per_episode=per_episode,
        env=task.eval_env_id,
        task=task.name,
        max_steps=limit,
    )
