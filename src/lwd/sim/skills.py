"""Skills: which primitive to do next (a symbolic planner) and how (OGBench's Markov oracles).

OGBench ships closed-loop "Markov" oracles for single primitives (move a cube, press a button,
slide the drawer or the window). They read their target from privileged ``info`` keys that the
environments only fill in data-collection mode; :class:`SkillRunner` fills them in for any target
we choose, so the oracles can be chained into whole tasks from any state (which an intervening
operator needs: it takes over wherever the robot got stuck).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

from lwd.sim import lights_out
from lwd.sim.progress import CLOSED_DRAWER, CUBE_TOLERANCE, lights, scene_facts
from lwd.sim.tasks import TaskSpec

SLIDE_TOLERANCE = 0.02  # plan to within half of OGBench's 0.04 success tolerance
DRAWER_OPEN = -0.16
WINDOW_OPEN = 0.2


@dataclass(frozen=True)
class Primitive:
    """One skill invocation: ``kind`` in {cube, button, drawer, window} and its target."""

    kind: str
    button: int = 0
    target: tuple[float, ...] = ()


def plan_scene(task: TaskSpec, env) -> Primitive | None:
    """Next primitive toward ``task.goal`` in the scene, or None when nothing is left to do.

    Order: cube first (opening the drawer on the way if the cube goes inside), then drawer,
    window, and finally the lock buttons; a locked drawer or window is unlocked first.
    """
    goal = task.goal
    f = scene_facts(env)
    goal_cube = np.asarray(goal.cube_xyz)
    cube_goal_in_drawer = goal_cube[1] < -0.3
    if np.linalg.norm(f["cube"] - goal_cube) > CUBE_TOLERANCE * 0.75:
        if cube_goal_in_drawer and not f["cube_in_drawer"]:
            if f["drawer"] > DRAWER_OPEN + SLIDE_TOLERANCE:
                return _unlock_or_slide(f, 0, "drawer", DRAWER_OPEN)
            if f["buttons"][0] == 1:
                # Lock the open drawer first: carrying the cube in, the arm would push it shut.
                return Primitive("button", button=0)
            # Place where the goal will be once the drawer is back at its goal position.
            target = goal_cube + np.array([0.0, goal.drawer - f["drawer"], 0.0])
            return Primitive("cube", target=tuple(target))
        if not cube_goal_in_drawer:
            return Primitive("cube", target=tuple(goal_cube))
    if abs(f["drawer"] - goal.drawer) > SLIDE_TOLERANCE:
        return _unlock_or_slide(f, 0, "drawer", goal.drawer)
    if abs(f["window"] - goal.window) > SLIDE_TOLERANCE:
        return _unlock_or_slide(f, 1, "window", goal.window)
    for i, (now, want) in enumerate(zip(f["buttons"], goal.buttons, strict=True)):
        if now != want:
            return Primitive("button", button=i)
    return None


def _unlock_or_slide(f: dict, lock: int, kind: str, target: float) -> Primitive:
    if f["buttons"][lock] == 0:
        return Primitive("button", button=lock)
    return Primitive(kind, target=(target,))


def plan_puzzle(task: TaskSpec, env) -> Primitive | None:
    """Next button to press: the nearest one in a fewest-presses lights-out solution."""
    presses = lights_out.solve(lights(env), np.asarray(task.goal), 3, 3)
    if not presses:
        return None
    eff = env._data.site_xpos[env._pinch_site_id][:2]
    dists = [
        np.linalg.norm(env._data.site_xpos[env._button_site_ids[b]][:2] - eff) for b in presses
    ]
    return Primitive("button", button=int(presses[int(np.argmin(dists))]))


def plan(task: TaskSpec, env) -> Primitive | None:
    return plan_puzzle(task, env) if task.env_kind == "puzzle-3x3" else plan_scene(task, env)


def random_primitive(env_kind: str, env, rng: np.random.Generator) -> Primitive:
    """A random primitive for play: any button, a random cube target, or toggle a slide."""
    if env_kind == "puzzle-3x3":
        return Primitive("button", button=int(rng.integers(9)))
    choice = rng.integers(4)
    if choice == 0:
        lo, hi = env._object_sampling_bounds
        xy = rng.uniform(lo, hi)
        return Primitive("cube", target=(float(xy[0]), float(xy[1]), 0.02))
    if choice == 1:
        return Primitive("button", button=int(rng.integers(2)))
    f = scene_facts(env)
    if choice == 2:
        return Primitive("drawer", target=(0.0 if f["drawer"] < CLOSED_DRAWER else DRAWER_OPEN,))
    return Primitive("window", target=(0.0 if f["window"] > WINDOW_OPEN / 2 else WINDOW_OPEN,))


class SkillRunner:
    """Runs one primitive with the matching OGBench oracle until the oracle says it is done."""

    def __init__(self, env, primitive: Primitive, env_kind: str) -> None:
        self.env = env
        self.primitive = primitive
        kind = primitive.kind
        if kind == "cube":
            self.oracle = CubeMarkovOracle(env=env)
        elif kind == "button":
            self.oracle = ButtonMarkovOracle(
                env=env, gripper_always_closed=env_kind == "puzzle-3x3"
            )
        elif kind == "drawer":
            self.oracle = DrawerMarkovOracle(env=env)
        elif kind == "window":
            self.oracle = WindowMarkovOracle(env=env)
        else:
            raise ValueError(f"unknown primitive kind {kind!r}")
        self._target_button_state = int(env._cur_button_states[primitive.button]) ^ 1
        info = self._info(env.compute_ob_info())
        self.oracle.reset(None, info)

    @property
    def done(self) -> bool:
        return bool(self.oracle.done)

    def _info(self, info: dict) -> dict:
        env, p = self.env, self.primitive
        info = dict(info)
        if p.kind == "cube":
            info["privileged/target_block"] = 0
            info["privileged/target_block_pos"] = np.asarray(p.target, dtype=np.float64)
            info["privileged/target_block_yaw"] = np.zeros(1)
        elif p.kind == "button":
            info["privileged/target_button"] = p.button
            info["privileged/target_button_state"] = self._target_button_state
            info["privileged/target_button_top_pos"] = env._data.site_xpos[
                env._button_site_ids[p.button]
            ].copy()
        elif p.kind == "drawer":
            slide = env._data.joint("drawer_slide").qpos[0]
            handle = info["privileged/drawer_handle_pos"]
            # Opening the drawer (more negative slide) moves its handle towards +y.
            info["privileged/target_drawer_handle_pos"] = handle + np.array(
                [0.0, -(p.target[0] - slide), 0.0]
            )
        elif p.kind == "window":
            slide = env._data.joint("window_slide").qpos[0]
            handle = info["privileged/window_handle_pos"]
            info["privileged/target_window_handle_pos"] = handle + np.array(
                [p.target[0] - slide, 0.0, 0.0]
            )
        return info

    def act(self, info: dict) -> np.ndarray:
        """The oracle's action ``(5,)`` in [-1, 1] for the current simulator ``info``."""
        return np.asarray(self.oracle.select_action(None, self._info(info)), dtype=np.float64)
