"""OGBench-style "play" datasets for scene and puzzle-3x3, relabelled for one single task.

OGBench's play datasets cannot be downloaded here, so this module re-creates them with OGBench's
own oracles, following its data-collection script (``data_gen_scripts/generate_manipspace.py``
with ``--dataset_type=play``, as listed for ``scene-play-v0`` and ``puzzle-3x3-play-v0`` in
``data_gen_scripts/commands.sh`` of github.com/seohongpark/ogbench):

- the environment in ``mode="data_collection"`` with ``terminate_at_goal=False``: at reset it
  randomises the scene and picks a random subtask, and ``set_new_target`` picks the next one
  each time the oracle finishes (scene: move the cube, press a lock button, slide the drawer or
  the window, with OGBench's own probabilities; puzzle: press a random button);
- OGBench's open-loop plan oracles (``CubePlanOracle``, ``ButtonPlanOracle``,
  ``DrawerPlanOracle``, ``WindowPlanOracle``; puzzle: ``ButtonPlanOracle`` with the gripper
  always closed), with plan noise 0.1 and noise smoothing 0.5 (the script's defaults, which the
  play commands keep) and no random actions; the executed action is clipped to [-1, 1];
- 1000 transitions per episode (OGBench records 1001 steps and drops the last, which has no
  next observation); scene episodes in which the cube leaves the visible area fail OGBench's
  health check and are discarded and re-collected.

Relabelling (ALGORITHMS.md §1-2: sparse {0, 1} reward with termination). The goal test of
:func:`~lwd.sim.ogbench_tasks.goal_reached` is applied to every state. When an action leads into
a goal state, the trajectory is cut there: that segment is a successful, terminated episode with
reward 1 on its last step. The next segment starts at the first later state that is not a goal
state (transitions taken *from* goal states are dropped: OGBench marks them terminal, and an
evaluation episode ends there). The remainder without success is an unsuccessful episode cut by
the time limit (``terminated=False``).

Source: :func:`~lwd.data.schema.validate_episode` rejects successful episodes with play steps,
so every segment (successful or not, for uniformity: the source does not leak the outcome) is
recorded as ``Source.AUTONOMOUS`` with ``SCRIPTED_VERSION``, like the fleet8 generator's scripted
"weak" rollouts. States use lwd's packed 78-D layout by default (the store's width).

Usage::

    for ep in generate_play("scene", 2, num_episodes=4):
        ...
    summary = generate_play_store("puzzle-3x3", 2, 1000, "data/puzzle-play", workers=2)

or ``python -m lwd.sim.ogbench_play --env scene --task 2 --episodes 4 --out DIR --workers 2``.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import ogbench.manipspace  # noqa: F401  (registers the OGBench manipulation environments)
from ogbench.manipspace.oracles.plan.button_plan import ButtonPlanOracle
from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle
from ogbench.manipspace.oracles.plan.drawer_plan import DrawerPlanOracle
from ogbench.manipspace.oracles.plan.window_plan import WindowPlanOracle

from lwd.data.store import EpisodeStore
from lwd.sim.ogbench_eval import evaluate_singletask
from lwd.sim.ogbench_tasks import (
    STATE_LAYOUTS,
    OgbenchTask,
    format_states,
    goal_reached,
    ogbench_task,
)
from lwd.types import SCRIPTED_VERSION, Episode, Source
from lwd.workers import run_jobs

__all__ = [
    "PlayCollector",
    "PlayRollout",
    "evaluate_singletask",
    "generate_play",
    "generate_play_store",
    "split_at_successes",
]

PLAY_NOISE = 0.1
"""OGBench's plan-oracle noise for play data (times the action scale, before smoothing)."""
PLAY_NOISE_SMOOTHING = 0.5
"""Std (in control steps) of the Gaussian filter that smooths the plan noise over time."""
EPISODE_LENGTH = 1000
"""Transitions per play episode in OGBench's datasets."""
MAX_ATTEMPTS = 50
"""Re-collections allowed for one episode that keeps failing the scene health check."""
ROBOT_ID = "ogbench-play"
SOURCE = Source.AUTONOMOUS


@dataclass(frozen=True)
class PlayRollout:
    """One raw play episode before relabelling.

    Attributes:
        raw_states: ``(T+1, D_raw)`` float32, the environment's own observations.
        actions: ``(T, 5)`` float32 executed actions in [-1, 1].
        reached: ``(T+1,)`` bool, the single-task goal holds at each state.
        healthy: passes OGBench's scene health check (always True for puzzle).
        seed: the seed of the environment and the oracles.
    """

    raw_states: np.ndarray
    actions: np.ndarray
    reached: np.ndarray
    healthy: bool
    seed: int


def episode_seed(seed: int, index: int, attempt: int = 0) -> int:
    """The seed of attempt ``attempt`` of episode ``index``; independent of worker splits."""
    return int(np.random.SeedSequence([seed, index, attempt]).generate_state(1)[0])


def split_at_successes(reached: np.ndarray) -> list[tuple[int, int, bool]]:
    """Cut a trajectory at every entry into the goal.

    Args:
        reached: ``(T+1,)`` bool, goal test at each state ``s_0 .. s_T``.

    Returns:
        ``(start, end, success)`` per segment: it holds states ``start .. end`` and actions
        ``start .. end-1``; successful segments end at the first goal state after ``start``.
        Segments never start at a goal state; the last one may be unsuccessful (time limit).
    """
    reached = np.asarray(reached, dtype=bool)
    last = len(reached) - 1
    segments: list[tuple[int, int, bool]] = []
    start = 0
    while True:
        while start < last and reached[start]:
            start += 1
        if start >= last:
            return segments
        hits = np.flatnonzero(reached[start + 1 :])
        if hits.size == 0:
            segments.append((start, last, False))
            return segments
        end = start + 1 + int(hits[0])
        segments.append((start, end, True))
        start = end


def _scene_healthy(cube_xyz: np.ndarray) -> bool:
    """OGBench's scene health check: the cube stays visible unless it is inside the drawer."""
    y, z = cube_xyz[:, 1], cube_xyz[:, 2]
    too_far_right = (y >= 0.29).any()
    left_outside_drawer = ((y <= -0.3) & ((z < 0.06) | (z > 0.08))).any()
    return not (too_far_right or left_outside_drawer)


class PlayCollector:
    """Collects OGBench play episodes for one environment and relabels them for one task.

    Args:
        task: the single task to relabel for (see :func:`~lwd.sim.ogbench_tasks.ogbench_task`).
        episode_length: transitions per episode.
        noise: plan-oracle noise (OGBench play: 0.1).
        noise_smoothing: plan-noise smoothing (OGBench play: 0.5).
        health_check: re-collect scene episodes that fail OGBench's health check.
        state_layout: ``"packed"`` (78-D, storable) or ``"raw"`` (the env's own vector).
    """

    def __init__(
        self,
        task: OgbenchTask,
        episode_length: int = EPISODE_LENGTH,
        noise: float = PLAY_NOISE,
        noise_smoothing: float = PLAY_NOISE_SMOOTHING,
        health_check: bool = True,
        state_layout: str = "packed",
    ) -> None:
        if episode_length < 1:
            raise ValueError(f"episode_length must be at least 1, got {episode_length}")
        if state_layout not in STATE_LAYOUTS:
            raise ValueError(
                f"unknown state layout {state_layout!r}; expected one of {STATE_LAYOUTS}"
            )
        self.task = task
        self.episode_length = episode_length
        self.health_check = health_check
        self.state_layout = state_layout
        self.env = gym.make(
            f"{task.kind}-v0",
            terminate_at_goal=False,
            mode="data_collection",
            max_episode_steps=episode_length + 1,
        )
        kw = dict(env=self.env, noise=noise, noise_smoothing=noise_smoothing)
        if task.kind == "scene":
            self.oracles = {
                "cube": CubePlanOracle(**kw),
                "button": ButtonPlanOracle(**kw),
                "drawer": DrawerPlanOracle(**kw),
                "window": WindowPlanOracle(**kw),
            }
        else:
            self.oracles = {"button": ButtonPlanOracle(**kw, gripper_always_closed=True)}

    def close(self) -> None:
        self.env.close()

    def rollout(self, seed: int) -> PlayRollout:
        """One play episode; deterministic in ``seed``."""
        env = self.env.unwrapped
        # OGBench's plan oracles draw their noise and timings from numpy's global generator.
        np.random.seed(seed)
        ob, info = self.env.reset(seed=seed)
        oracle = self.oracles[info["privileged/target_task"]]
        oracle.reset(ob, info)
        obs, actions = [ob], []
        reached = [goal_reached(self.task, env)]
        cubes = (
            [env._data.joint("object_joint_0").qpos[:3].copy()] if self.task.kind == "scene" else []
        )
        for _ in range(self.episode_length):
            action = np.clip(np.asarray(oracle.select_action(ob, info), dtype=np.float64), -1, 1)
            ob, _, _, _, info = self.env.step(action)
            if oracle.done:
                new_ob, new_info = env.set_new_target()
                oracle = self.oracles[new_info["privileged/target_task"]]
                oracle.reset(new_ob, new_info)
            obs.append(ob)
            actions.append(action)
            reached.append(goal_reached(self.task, env))
            if cubes:
                cubes.append(env._data.joint("object_joint_0").qpos[:3].copy())
        healthy = _scene_healthy(np.asarray(cubes)) if cubes else True
        return PlayRollout(
            raw_states=np.asarray(obs, dtype=np.float32),
            actions=np.asarray(actions, dtype=np.float32),
            reached=np.asarray(reached, dtype=bool),
            healthy=healthy,
            seed=seed,
        )

    def to_episodes(self, rollout: PlayRollout) -> list[Episode]:
        """Relabel one rollout into lwd episodes (see the module docstring)."""
        task, now = self.task, time.time()
        states = format_states(task.kind, rollout.raw_states, self.state_layout)
        episodes = []
        for start, end, success in split_at_successes(rollout.reached):
            t = end - start
            actions = rollout.actions[start:end].copy()
            rewards = np.zeros(t, dtype=np.float32)
            rewards[-1] = 1.0 if success else 0.0
            episodes.append(
                Episode(
                    episode_id=uuid.uuid4().hex,
                    robot_id=ROBOT_ID,
                    task=task.name,
                    instruction=task.instruction,
                    states=states[start : end + 1].copy(),
                    actions=actions,
                    proposals=actions.copy(),
                    rewards=rewards,
                    sources=np.full(t, SOURCE, dtype=np.uint8),
                    policy_versions=np.full(t, SCRIPTED_VERSION, dtype=np.int32),
                    success=success,
                    terminated=success,
                    progress=1.0 if success else 0.0,
                    cycle_time_s=t * task.control_dt,
                    created_at=now,
                )
            )
        return episodes

    def episode(self, seed: int, index: int) -> tuple[list[Episode], int]:
        """Episode ``index`` of a dataset seeded ``seed``, relabelled; also how many tries it took."""
        for attempt in range(MAX_ATTEMPTS):
            rollout = self.rollout(episode_seed(seed, index, attempt))
            if rollout.healthy or not self.health_check:
                return self.to_episodes(rollout), attempt + 1
        raise RuntimeError(
            f"episode {index} of {self.task.kind} (seed {seed}) failed OGBench's health check "
            f"{MAX_ATTEMPTS} times; pass health_check=False to keep unhealthy episodes"
        )


def generate_play(
    env_name: str,
    task_id: int,
    num_episodes: int,
    episode_length: int = EPISODE_LENGTH,
    seed: int = 0,
    noise: float = PLAY_NOISE,
    noise_smoothing: float = PLAY_NOISE_SMOOTHING,
    health_check: bool = True,
    state_layout: str = "packed",
    first_episode: int = 0,
) -> Iterator[Episode]:
    """Yield the relabelled segments of play episodes ``first_episode ..`` (+ ``num_episodes``).

    Args:
        env_name: ``"scene"``, ``"puzzle-3x3"`` or an OGBench id of those environments.
        task_id: OGBench's single task (1..5) to relabel rewards for.
        num_episodes: play episodes to collect (each yields one or more segments).
        episode_length: transitions per play episode.
        seed: dataset seed; episode ``i`` is the same whatever process collects it.
        noise / noise_smoothing: plan-oracle noise (OGBench play: 0.1 / 0.5).
        health_check: re-collect scene episodes failing OGBench's health check.
        state_layout: ``"packed"`` (78-D) or ``"raw"``.
        first_episode: index of the first episode (to split a dataset into parts).
    """
    collector = PlayCollector(
        ogbench_task(env_name, task_id),
        episode_length,
        noise,
        noise_smoothing,
        health_check,
        state_layout,
    )
    try:
        for index in range(first_episode, first_episode + num_episodes):
            yield from collector.episode(seed, index)[0]
    finally:
        collector.close()


def generate_play_store(
    env_name: str,
    task_id: int,
    num_episodes: int,
    out_dir: str | Path,
    workers: int = 2,
    progress: Callable[[int, int, dict], None] | None = None,
    episode_length: int = EPISODE_LENGTH,
    seed: int = 0,
    noise: float = PLAY_NOISE,
    noise_smoothing: float = PLAY_NOISE_SMOOTHING,
    health_check: bool = True,
) -> dict:
    """Collect ``num_episodes`` play episodes in worker processes into the store at ``out_dir``.

    ``progress(done, total, result)`` is called after each play episode; ``result`` holds its
    ``index``, ``segments``, ``successes``, ``steps``, ``attempts`` and ``seconds``. Ends with a
    store snapshot.

    Returns:
        ``{"task", "episodes", "segments", "successes", "transitions", "seconds", "snapshot",
        "store"}`` where ``seconds`` is wall time and ``store`` the store's summary.
    """
    task = ogbench_task(env_name, task_id)
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be at least 1, got {num_episodes}")
    out = Path(out_dir).resolve()
    store = EpisodeStore(out, known_tasks=[task.name])
    jobs = [
        dict(
            env=task.kind,
            task_id=task_id,
            index=i,
            seed=seed,
            length=episode_length,
            noise=noise,
            smoothing=noise_smoothing,
            health=health_check,
        )
        for i in range(num_episodes)
    ]
    start = time.perf_counter()
    totals = dict(segments=0, successes=0, transitions=0)
    results = run_jobs("lwd.sim.ogbench_play_worker", jobs, workers, {"store": str(out)})
    for done, result in enumerate(results, 1):
        totals["segments"] += result["segments"]
        totals["successes"] += result["successes"]
        totals["transitions"] += result["steps"]
        if progress is not None:
            progress(done, len(jobs), result)
    version = store.snapshot()
    return dict(
        task=task.name,
        episodes=num_episodes,
        **totals,
        seconds=time.perf_counter() - start,
        snapshot=version,
        store=store.summary(version),
    )


def main(argv: list[str] | None = None) -> dict:
    """Generate a relabelled play store and print a summary; returns the summary."""
    p = argparse.ArgumentParser(
        prog="python -m lwd.sim.ogbench_play", description=__doc__.splitlines()[0]
    )
    p.add_argument("--env", default="scene", help="scene or puzzle-3x3 (or an OGBench id)")
    p.add_argument("--task", type=int, default=2, help="OGBench single-task id, 1..5")
    p.add_argument("--episodes", type=int, default=4, help="play episodes to collect")
    p.add_argument("--length", type=int, default=EPISODE_LENGTH, help="transitions per episode")
    p.add_argument("--out", required=True, help="EpisodeStore directory")
    p.add_argument("--workers", type=int, default=2, help="worker processes")
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--noise", type=float, default=PLAY_NOISE, help="plan-oracle noise")
    args = p.parse_args(argv)

    def report(done: int, total: int, r: dict) -> None:
        print(
            f"[{done}/{total}] episode {r['index']}: {r['segments']} segments, "
            f"{r['successes']} successes, {r['steps']} steps, {r['attempts']} attempt(s), "
            f"{r['seconds']:.1f} s",
            flush=True,
        )

    summary = generate_play_store(
        args.env,
        args.task,
        args.episodes,
        args.out,
        workers=args.workers,
        progress=report,
        episode_length=args.length,
        seed=args.seed,
        noise=args.noise,
    )
    short = {k: v for k, v in summary.items() if k != "store"}
    short["success_fraction"] = summary["successes"] / max(summary["segments"], 1)
    print(json.dumps(short), flush=True)
    return summary


if __name__ == "__main__":
    main()
