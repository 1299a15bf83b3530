"""OGBench's single-task goals (scene, puzzle-3x3) as lwd tasks: name, instruction, goal test.

OGBench's single-task environments (``scene-singletask-task2-v0`` ...) define five fixed goals per
environment in ``SceneEnv.set_tasks`` / ``PuzzleEnv.set_tasks``; the offline datasets are relabelled
for one of them by ``ogbench.relabel_utils.relabel_dataset``. :func:`ogbench_task` reads the goal
from OGBench's own task table, and :func:`goal_reached` applies the same test as OGBench (all of
the goal's parts hold at once):

- scene: cube within 0.04 m (3-D distance) of the goal position, both lock buttons in the goal
  state, drawer and window slides within 0.04 of their goal positions;
- puzzle: every button in its goal state.

Usage::

    task = ogbench_task("scene", 2)  # task.name == "scene-task2"
    env = gymnasium.make(task.eval_env_id)  # OGBench's single-task env for evaluation
    ok = goal_reached(task, env.unwrapped)  # works in "task" and "data_collection" mode
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from ogbench.manipspace.envs.puzzle_env import PuzzleEnv
from ogbench.manipspace.envs.scene_env import SceneEnv

from lwd.sim.layout import pack_state
from lwd.sim.tasks import CONTROL_DT

GOAL_TOLERANCE = 0.04
"""OGBench's success tolerance for the cube (metres, 3-D) and the drawer/window slides."""

ENV_KINDS = ("scene", "puzzle-3x3")
STATE_LAYOUTS = ("packed", "raw")
"""``packed``: lwd's shared 78-D layout (:mod:`lwd.sim.layout`, what the EpisodeStore accepts);
``raw``: the environment's own vector (scene 40-D, puzzle-3x3 55-D)."""

RAW_STATE_DIMS = {"scene": 40, "puzzle-3x3": 55}


@dataclass(frozen=True)
class OgbenchTask:
    """One of OGBench's fixed single-task goals.

    Attributes:
        kind: ``"scene"`` or ``"puzzle-3x3"``.
        task_id: OGBench's task number, 1..5.
        name: lwd task name, e.g. ``"scene-task2"``.
        ogbench_name: OGBench's own name, e.g. ``"task2_unlock_and_lock"``.
        instruction: an English description of the goal configuration.
        buttons: goal state of every button (scene: the drawer and window locks, 0 = locked;
            puzzle: the 9 lights in row-major order, 0 = red, 1 = blue).
        cube_xyz: scene only: goal cube position in metres (world frame).
        drawer: scene only: goal drawer slide (0 closed, -0.16 open).
        window: scene only: goal window slide (0 closed, 0.2 open).
    """

    kind: str
    task_id: int
    name: str
    ogbench_name: str
    instruction: str
    buttons: tuple[int, ...]
    cube_xyz: tuple[float, float, float] | None = None
    drawer: float | None = None
    window: float | None = None

    @property
    def eval_env_id(self) -> str:
        """Gymnasium id of OGBench's single-task environment for this goal."""
        return f"{self.kind}-singletask-task{self.task_id}-v0"

    @property
    def control_dt(self) -> float:
        """Seconds per control step."""
        return CONTROL_DT


def env_kind(env_name: str) -> str:
    """``"scene"`` or ``"puzzle-3x3"`` from a short name or any OGBench id of that environment.

    Accepts e.g. ``scene``, ``scene-v0``, ``scene-play-v0``, ``scene-play-singletask-task2-v0``.
    """
    for kind in ENV_KINDS:
        if env_name == kind or env_name.startswith(kind + "-"):
            return kind
    raise ValueError(
        f"unsupported environment {env_name!r}; expected a scene or puzzle-3x3 name such as "
        f"{', '.join(repr(k) for k in ENV_KINDS)} or 'scene-play-singletask-task2-v0'"
    )


def _task_table(kind: str) -> list[dict]:
    # OGBench builds its task table in set_tasks, which reads only these attributes; calling it
    # on a stand-in avoids building a whole MuJoCo environment just to read five goals.
    if kind == "scene":
        stub = SimpleNamespace(_reward_task_id=None)
        SceneEnv.set_tasks(stub)
    else:
        stub = SimpleNamespace(_reward_task_id=None, _num_rows=3, _num_cols=3)
        PuzzleEnv.set_tasks(stub)
    return stub.task_infos


def _scene_instruction(cube: np.ndarray, buttons: np.ndarray, drawer: float, window: float) -> str:
    def part(name: str, slide: float, open_at: float, lock: int) -> str:
        state = "open" if abs(slide - open_at) < abs(slide) else "closed"
        return f"the {name} {state} and {'unlocked' if lock else 'locked'}"

    if cube[1] < -0.3:
        where = "inside the drawer"
    else:
        where = f"on the table at x = {cube[0]:.2f} m, y = {cube[1]:.2f} m"
    return (
        f"Leave {part('drawer', drawer, -0.16, buttons[0])}, "
        f"{part('window', window, 0.2, buttons[1])}, and the cube {where}."
    )


def _puzzle_instruction(goal: np.ndarray) -> str:
    rows = [" ".join("blue" if v else "red" for v in goal[r * 3 : r * 3 + 3]) for r in range(3)]
    return "Set the 3x3 buttons to this pattern, row by row: " + "; ".join(rows) + "."


def ogbench_task(env_name: str, task_id: int) -> OgbenchTask:
    """OGBench's single-task goal ``task_id`` (1..5) of ``env_name`` (see :func:`env_kind`).

    Raises:
        ValueError: unknown environment, task id out of range, or a task number in
            ``env_name`` that disagrees with ``task_id``.
    """
    kind = env_kind(env_name)
    named = re.search(r"-task(\d+)-", env_name)
    if named and int(named.group(1)) != task_id:
        raise ValueError(f"{env_name!r} names task {named.group(1)} but task_id is {task_id}")
    table = _task_table(kind)
    if not 1 <= task_id <= len(table):
        raise ValueError(f"{kind} has tasks 1..{len(table)}; got task_id={task_id}")
    info = table[task_id - 1]
    if kind == "scene":
        goal = info["goal"]
        cube = np.asarray(goal["block_xyzs"][0], dtype=np.float64)
        buttons = np.asarray(goal["button_states"])
        drawer, window = float(goal["drawer_pos"]), float(goal["window_pos"])
        return OgbenchTask(
            kind=kind,
            task_id=task_id,
            name=f"scene-task{task_id}",
            ogbench_name=info["task_name"],
            instruction=_scene_instruction(cube, buttons, drawer, window),
            buttons=tuple(int(b) for b in buttons),
            cube_xyz=(float(cube[0]), float(cube[1]), float(cube[2])),
            drawer=drawer,
            window=window,
        )
    goal = np.asarray(info["goal_button_states"]).reshape(-1)
    return OgbenchTask(
        kind=kind,
        task_id=task_id,
        name=f"puzzle-3x3-task{task_id}",
        ogbench_name=info["task_name"],
        instruction=_puzzle_instruction(goal),
        buttons=tuple(int(b) for b in goal),
    )


def goal_reached(task: OgbenchTask, env) -> bool:
    """Whether the simulator state of ``env`` (unwrapped OGBench env) satisfies the task's goal."""
    if not np.array_equal(np.asarray(env._cur_button_states), task.buttons):
        return False
    if task.kind == "puzzle-3x3":
        return True
    cube = env._data.joint("object_joint_0").qpos[:3]
    drawer = env._data.joint("drawer_slide").qpos[0]
    window = env._data.joint("window_slide").qpos[0]
    return bool(
        np.linalg.norm(cube - np.asarray(task.cube_xyz)) <= GOAL_TOLERANCE
        and abs(drawer - task.drawer) <= GOAL_TOLERANCE
        and abs(window - task.window) <= GOAL_TOLERANCE
    )


def format_states(kind: str, raw: np.ndarray, layout: str = "packed") -> np.ndarray:
    """Observations ``(N, D_raw)`` of ``kind`` as float32 ``(N, 78)`` (packed) or ``(N, D_raw)``."""
    if layout not in STATE_LAYOUTS:
        raise ValueError(f"unknown state layout {layout!r}; expected one of {STATE_LAYOUTS}")
    raw = np.asarray(raw, dtype=np.float32)
    if layout == "raw":
        return raw
    return np.stack([pack_state(kind, row) for row in raw])
