"""SyntheticRobot: schema-valid fleet8-shaped episodes, paced, without MuJoCo."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lwd.data.schema import validate_episode
from lwd.sim.layout import ACTION_DIM, ENV_FLAG, STATE_DIM
from lwd.sim.synthetic_robot import SyntheticRobot, synthetic_episode
from lwd.sim.tasks import get_suite, task_names
from lwd.types import ActionChunk, Source


class FixedVersion:
    version = 4


def test_whole_episodes_are_valid_and_sized_like_fleet8():
    robot = SyntheticRobot("syn-1", episode_s=0.0, seed=1)
    for i, task in enumerate(get_suite("fleet8")):
        ep = synthetic_episode(robot, FixedVersion(), task, seed=i)
        validate_episode(ep, known_tasks=task_names())
        t = ep.num_steps
        assert ep.states.shape == (t + 1, STATE_DIM) and ep.actions.shape == (t, ACTION_DIM)
        assert (t < task.horizon) if ep.success else (t == task.horizon)
        assert set(ep.policy_versions.tolist()) == {4} and ep.robot_id == "syn-1"
        flag = (1, 0) if task.env_kind == "scene" else (0, 1)
        assert np.all(ep.states[:, ENV_FLAG] == flag)
        assert set(np.unique(ep.sources)) <= {Source.AUTONOMOUS, Source.INTERVENTION}
        assert ep.rewards.sum() == float(ep.success)


def test_restarted_robot_never_repeats_content():
    task = get_suite("fleet8")[0]
    a = SyntheticRobot("syn", episode_s=0.0, seed=3).record_episode(1, task, seed=9)
    b = SyntheticRobot("syn", episode_s=0.0, seed=3).record_episode(1, task, seed=9)
    assert not np.array_equal(a.states, b.states)  # the store would deduplicate a repeat


def test_pacing_and_step_by_step_driving():
    waits = []
    robot = SyntheticRobot("syn", episode_s=2.0, steps=8, sleep=waits.append)
    task = get_suite("fleet8")[0]
    ep = robot.record_episode(1, task, seed=0)
    assert ep.num_steps == 8 and len(waits) == 1 and 1.5 < waits[0] <= 2.0

    waits.clear()
    obs = robot.reset(task, seed=1)
    assert obs.state.shape == (STATE_DIM,) and obs.instruction == task.instruction
    chunk = ActionChunk(np.zeros((4, ACTION_DIM), np.float32), version=1)
    steps = 0
    while not robot.done():
        result = robot.act(chunk.actions[steps % 4])
        steps += 1
    assert steps == 8 and result.done and len(waits) == 8  # each step paced to 2 s / 8
    assert robot.cycle_time_s == pytest.approx(0.4)
    with pytest.raises(RuntimeError, match="episode is over"):
        robot.act(np.zeros(ACTION_DIM))
    with pytest.raises(ValueError, match="operator=None"):
        synthetic_episode(robot, FixedVersion(), task, 0, operator=object())


def test_importing_it_does_not_load_mujoco():
    code = (
        "import lwd.sim.synthetic_robot, lwd.fleet.robot_host, sys; print('mujoco' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
