"""Subtask predicates and the step-wise score of long tasks.

A subtask counts as done once its predicate has held at any step of the episode (order-free).
Predicates read OGBench's simulator state directly (the robot's policy never sees them).
"""

from __future__ import annotations

import numpy as np

from lwd.sim import lights_out
from lwd.sim.tasks import TaskSpec

OPEN_DRAWER = -0.12  # drawer slide <= this counts as open (goal -0.16, OGBench tolerance 0.04)
CLOSED_DRAWER = -0.04
OPEN_WINDOW = 0.16
CLOSED_WINDOW = 0.04
CUBE_TOLERANCE = 0.04  # metres, OGBench's cube success radius


def scene_facts(env) -> dict:
    """The scene's symbolic state: cube position, lock states, drawer and window slides."""
    cube = env._data.joint("object_joint_0").qpos[:3].copy()
    return dict(
        cube=cube,
        buttons=tuple(int(b) for b in env._cur_button_states),
        drawer=float(env._data.joint("drawer_slide").qpos[0]),
        window=float(env._data.joint("window_slide").qpos[0]),
        cube_in_drawer=bool(env._is_in_drawer(cube)),
    )


def lights(env) -> np.ndarray:
    return np.asarray(env._cur_button_states, dtype=np.uint8).copy()


def _scene_predicate(name: str, task: TaskSpec, f: dict) -> bool:
    goal = task.goal
    if name == "open drawer":
        return f["drawer"] <= OPEN_DRAWER
    if name == "close drawer":
        return f["drawer"] >= CLOSED_DRAWER and f["cube_in_drawer"]
    if name == "open window":
        return f["window"] >= OPEN_WINDOW
    if name == "close window":
        return f["window"] <= CLOSED_WINDOW
    if name == "unlock drawer":
        return f["buttons"][0] == 1
    if name == "unlock window":
        return f["buttons"][1] == 1
    if name == "place cube":
        return float(np.linalg.norm(f["cube"] - np.asarray(goal.cube_xyz))) <= CUBE_TOLERANCE
    if name == "cube in drawer":
        return f["cube_in_drawer"]
    raise KeyError(f"task {task.name}: no predicate for subtask {name!r}")


class SubtaskTracker:
    """Tracks which subtasks of ``task`` have been achieved in the current episode."""

    def __init__(self, task: TaskSpec, env) -> None:
        self.task = task
        self.env = env
        self.achieved = [False] * len(task.subtasks)
        if task.env_kind == "puzzle-3x3":
            self._initial_presses = lights_out.presses_remaining(lights(env), task.goal, 3, 3)

    def update(self) -> None:
        if self.task.env_kind == "puzzle-3x3":
            remaining = lights_out.presses_remaining(lights(self.env), self.task.goal, 3, 3)
            done = max(0, self._initial_presses - remaining)
            now = [k < done for k in range(len(self.achieved))]
        else:
            facts = scene_facts(self.env)
            now = [_scene_predicate(n, self.task, facts) for n in self.task.subtasks]
        self.achieved = [a or b for a, b in zip(self.achieved, now, strict=True)]

    @property
    def count(self) -> int:
        return sum(self.achieved)

    @property
    def fraction(self) -> float:
        return self.count / len(self.achieved)
