"""The fleet8 task suite on OGBench manipulation (UR5e arm, 5-D relative end-effector actions).

Eight tasks, four short (one subtask) and four long-horizon (three or more subtasks), each with an
instruction and paraphrases. Tasks are OGBench "task mode" scenes given as explicit initial and
goal configurations, so success is OGBench's own goal test; the sparse reward is 1 on the step the
goal is reached. Long tasks also report a step-wise score: the fraction of their subtasks that
were achieved at some point of the episode (order-free, so a policy is not punished for a
different but valid order).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import numpy as np

from lwd.sim import lights_out

CONTROL_DT = 0.05
"""Seconds per control step in OGBench manipulation (20 Hz)."""


@dataclass(frozen=True)
class SceneGoal:
    """A full configuration of OGBench's scene: cube, two lock buttons, drawer, window."""

    cube_xyz: tuple[float, float, float]
    buttons: tuple[int, int]  #: 0 = locked (red), 1 = unlocked (white); button 0 locks the drawer
    drawer: float  #: drawer slide position: 0 closed, -0.16 open
    window: float  #: window slide position: 0 closed, 0.2 open

    def as_ogbench(self) -> dict:
        return dict(
            block_xyzs=np.array([self.cube_xyz], dtype=np.float64),
            button_states=np.array(self.buttons),
            drawer_pos=self.drawer,
            window_pos=self.window,
        )


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite.

    Attributes:
        name: short identifier (``open-drawer``).
        env_kind: ``"scene"`` or ``"puzzle-3x3"`` (see :mod:`lwd.sim.layout`).
        horizon: time limit in control steps.
        instruction: the canonical natural-language instruction.
        paraphrases: other phrasings of the same instruction (used in data, optional at eval).
        subtasks: names of the subtasks whose completion makes up the step-wise score.
        init / goal: scene configurations (scene tasks) or light patterns (puzzle tasks).
    """

    name: str
    env_kind: str
    horizon: int
    instruction: str
    paraphrases: tuple[str, ...]
    subtasks: tuple[str, ...]
    init: SceneGoal | tuple[int, ...]
    goal: SceneGoal | tuple[int, ...]
    long: bool = field(default=False)

    @property
    def instructions(self) -> tuple[str, ...]:
        return (self.instruction, *self.paraphrases)

    def ogbench_task_info(self) -> dict:
        """The ``task_info`` OGBench's ``reset(options=...)`` expects."""
        if self.env_kind == "scene":
            return dict(
                task_name=self.name, init=self.init.as_ogbench(), goal=self.goal.as_ogbench()
            )
        return dict(
            task_name=self.name,
            init_button_states=np.array(self.init, dtype=np.int64),
            goal_button_states=np.array(self.goal, dtype=np.int64),
        )


def _lights(*presses: int, start: tuple[int, ...] = (0,) * 9) -> tuple[int, ...]:
    state = np.array(start, dtype=np.uint8)
    for b in presses:
        state = lights_out.press(state, b, 3, 3)
    return tuple(int(v) for v in state)


_CUBE_HOME = (0.40, 0.10, 0.02)
_IN_CLOSED_DRAWER = (0.33, -0.356, 0.065986)  # OGBench's "cube in the closed drawer" goal

FLEET8: tuple[TaskSpec, ...] = (
    TaskSpec(
        name="open-drawer",
        env_kind="scene",
        horizon=200,
        instruction="open the drawer",
        paraphrases=("pull the drawer open", "slide the drawer out"),
        subtasks=("open drawer",),
        init=SceneGoal(_CUBE_HOME, (1, 1), 0.0, 0.0),
        goal=SceneGoal(_CUBE_HOME, (1, 1), -0.16, 0.0),
    ),
    TaskSpec(
        name="close-window",
        env_kind="scene",
        horizon=200,
        instruction="close the window",
        paraphrases=("slide the window shut", "push the window closed"),
        subtasks=("close window",),
        init=SceneGoal(_CUBE_HOME, (1, 1), 0.0, 0.2),
        goal=SceneGoal(_CUBE_HOME, (1, 1), 0.0, 0.0),
    ),
    TaskSpec(
        name="move-cube",
        env_kind="scene",
        horizon=200,
        instruction="move the cube to the right side of the table",
        paraphrases=("put the cube on the right", "pick up the cube and place it to the right"),
        subtasks=("place cube",),
        init=SceneGoal((0.33, -0.03, 0.02), (0, 0), 0.0, 0.0),
        goal=SceneGoal((0.43, 0.15, 0.02), (0, 0), 0.0, 0.0),
    ),
    TaskSpec(
        name="press-center",
        env_kind="puzzle-3x3",
        horizon=200,
        instruction="press the center button of the light grid",
        paraphrases=("push the middle light", "tap the button in the middle of the grid"),
        subtasks=("press center",),
        init=(0,) * 9,
        goal=_lights(4),
    ),
    TaskSpec(
        name="put-in-drawer",
        env_kind="scene",
        horizon=750,
        instruction="unlock the drawer, put the cube inside and close it",
        paraphrases=(
            "store the cube in the drawer and shut the drawer",
            "put the cube away in the drawer",
        ),
        subtasks=("unlock drawer", "open drawer", "cube in drawer", "close drawer"),
        init=SceneGoal((0.35, 0.05, 0.02), (0, 0), 0.0, 0.0),
        goal=SceneGoal(_IN_CLOSED_DRAWER, (1, 0), 0.0, 0.0),
        long=True,
    ),
    TaskSpec(
        name="rearrange",
        env_kind="scene",
        horizon=600,
        instruction="move the cube right, open the drawer, unlock and close the window",
        paraphrases=(
            "put the cube on the right, pull out the drawer and shut the unlocked window",
            "rearrange the table: cube right, drawer open, window closed and unlocked",
        ),
        subtasks=("place cube", "open drawer", "unlock window", "close window"),
        init=SceneGoal((0.40, -0.05, 0.02), (1, 0), 0.0, 0.2),
        goal=SceneGoal((0.40, 0.15, 0.02), (1, 1), -0.16, 0.0),
        long=True,
    ),
    TaskSpec(
        name="lights-diagonal",
        env_kind="puzzle-3x3",
        horizon=500,
        instruction="light up the diagonal of the grid",
        paraphrases=("make the lights form a diagonal line", "turn on the three diagonal lights"),
        subtasks=("press 1", "press 2", "press 3"),
        init=(0,) * 9,
        goal=_lights(0, 4, 8),
        long=True,
    ),
    TaskSpec(
        name="open-both",
        env_kind="scene",
        horizon=600,
        instruction="unlock both, then open the drawer and the window",
        paraphrases=(
            "press both lock buttons and open the drawer and the window",
            "unlock and open the drawer and the window",
        ),
        subtasks=("unlock drawer", "unlock window", "open drawer", "open window"),
        init=SceneGoal(_CUBE_HOME, (0, 0), 0.0, 0.0),
        goal=SceneGoal(_CUBE_HOME, (1, 1), -0.16, 0.2),
        long=True,
    ),
)

SUITES: dict[str, tuple[TaskSpec, ...]] = {"fleet8": FLEET8}


def get_suite(name: str) -> tuple[TaskSpec, ...]:
    """The named task suite, with a "did you mean" on a typo."""
    if name not in SUITES:
        close = difflib.get_close_matches(name, list(SUITES), n=2)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown suite {name!r}{hint} (known: {', '.join(SUITES)})")
    return SUITES[name]


def get_task(name: str, suite: str = "fleet8") -> TaskSpec:
    """Look a task up by name in a suite."""
    tasks = {t.name: t for t in get_suite(suite)}
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks), n=2)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown task {name!r} in {suite}{hint} (known: {', '.join(tasks)})")
    return tasks[name]


def task_names(suite: str = "fleet8") -> tuple[str, ...]:
    return tuple(t.name for t in get_suite(suite))
