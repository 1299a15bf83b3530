import numpy as np
import pytest

from lwd.sim.layout import STATE_DIM
from lwd.sim.operator import OperatorConfig, ScriptedOperator
from lwd.sim.robot import Perturbation, SimRobot
from lwd.sim.rollout import scripted_episode
from lwd.sim.tasks import get_task
from lwd.types import Source


@pytest.fixture(scope="module")
def robot():
    r = SimRobot("test-robot", Perturbation.sample(1))
    yield r
    r.close()


def test_perturbation_is_seeded_per_robot():
    assert Perturbation.sample(3) == Perturbation.sample(3)
    assert Perturbation.sample(3) != Perturbation.sample(4)
    assert Perturbation.sample(3, strength=0.0) == Perturbation(friction_scale=1.0)


def test_reset_is_deterministic_and_observation_shaped(robot):
    task = get_task("press-center")
    a = robot.reset(task, seed=5)
    b = robot.reset(task, seed=5)
    assert a.state.shape == (78,) and a.state.dtype == np.float32
    np.testing.assert_array_equal(a.state, b.state)
    assert a.instruction == task.instruction


def test_an_episode_depends_on_its_seed_alone_not_on_what_the_env_drew_before(robot):
    # OGBench's task-mode reset takes two steps with action_space.sample() to settle the goal
    # scene and keeps their controls and solver warm start; unseeded, the first steps of an
    # episode (and, through chaos, its outcome) differed from one process to the next.
    task, runs = get_task("press-center"), []
    for scramble in (1, 2):
        robot.reset(task, seed=0)
        robot.env.action_space.seed(scramble)  # as another process's history would leave it
        robot.reset(task, seed=5)
        data = robot.env._data
        start = [data.ctrl.copy(), data.qacc_warmstart.copy()]  # what the next step starts from
        for _ in range(3):
            robot.act(np.full(5, 0.3))
        runs.append([*start, robot.observe().state])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_demonstrator_solves_press_center(robot):
    task = get_task("press-center")
    ep = scripted_episode(robot, ScriptedOperator(robot, seed=0), task, 0, Source.DEMO)
    assert ep.success and ep.terminated and ep.progress == 1.0
    assert ep.rewards[-1] == 1.0 and ep.rewards[:-1].sum() == 0
    assert ep.states.shape == (ep.num_steps + 1, 78)
    assert ep.cycle_time_s == pytest.approx(ep.num_steps * 0.05)


def test_play_is_never_successful(robot):
    task = get_task("press-center")
    ep = scripted_episode(robot, ScriptedOperator(robot, "player", seed=1), task, 1, Source.PLAY)
    assert not ep.success and ep.rewards.sum() == 0
    assert set(ep.sources.tolist()) == {int(Source.PLAY)}


def test_bad_actions_and_order_are_errors(robot):
    robot.reset(get_task("press-center"), seed=0)
    with pytest.raises(ValueError, match="5 finite numbers"):
        robot.act(np.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        robot.act(np.array([0, 0, np.nan, 0, 0]))
    with pytest.raises(ValueError, match="unknown operator role"):
        ScriptedOperator(robot, "teacher")


def test_intervention_takes_over_when_stalled_and_hands_back(robot):
    task = get_task("press-center")
    cfg = OperatorConfig(patience=10, max_takeover=60, budget=100)
    op = ScriptedOperator(robot, cfg=cfg, seed=0)
    obs = robot.reset(task, seed=2)
    op.reset_episode(2)
    controlled = []
    while not robot.done():
        if op.wants_control(obs):
            action = op.act(obs)
            controlled.append(robot.steps)
        else:
            action = np.zeros(5)  # a robot policy that does nothing makes no progress
        robot.act(action)
        obs = robot.observe()
    assert controlled and controlled[0] == 10  # took over exactly after `patience` idle steps
    assert robot.success  # the operator finished the job
    assert op.budget_left == 100 - len(controlled)


def test_robots_sharing_an_env_pool_each_get_their_own_perturbation():
    from lwd.sim.robot import EnvPool

    pool = EnvPool()
    a = SimRobot("a", Perturbation(friction_scale=0.5, start_offset=(0.0, 0.0, 0.02)), pool=pool)
    b = SimRobot("b", Perturbation(friction_scale=2.0), pool=pool)
    task = get_task("open-drawer")
    a.reset(task, seed=0)
    env = a.env
    bounds, friction = pool.base(env)
    np.testing.assert_allclose(env._model.geom_friction[:, 0], friction * 0.5)
    assert env._arm_sampling_bounds[0, 2] == pytest.approx(bounds[0, 2] + 0.02)
    b.reset(task, seed=0)
    assert b.env is env
    np.testing.assert_allclose(env._model.geom_friction[:, 0], friction * 2.0)
    np.testing.assert_allclose(env._arm_sampling_bounds, bounds)
    pool.close()


def test_a_lending_pool_gives_each_robot_in_an_episode_its_own_env_until_the_episode_ends():
    from lwd.sim.robot import EnvPool

    pool = EnvPool(lend=True)
    a, b = (SimRobot(name, pool=pool) for name in "ab")
    task = get_task("open-drawer")
    a.reset(task, seed=0)
    b.reset(task, seed=1)  # a is mid-episode: b must not step a's simulation
    assert a.env is not b.env and pool.size() == 2
    lent = a.env
    while not a.done():
        a.act(np.zeros(5))
    assert a.env is None and a.observe().state.shape == (STATE_DIM,)  # the final observation
    c = SimRobot("c", pool=pool)
    c.reset(task, seed=2)  # takes the environment a gave back: nothing new is built
    assert c.env is lent and pool.size() == 2
    b.close()  # a robot that leaves returns its env; the pool stays open for the others
    a.reset(task, seed=3)
    assert a.env is not None and pool.size() == 2  # b's environment, lent again
    pool.close()


def test_a_capped_lending_pool_makes_the_next_robot_wait_and_never_holds_more_envs():
    import threading

    from lwd.sim.robot import EnvPool

    pool = EnvPool(lend=True, max_active=1)
    first = pool.checkout("scene")
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(pool.checkout("scene")))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and not got  # one robot in an episode: the second waits
    pool.checkin(first)
    waiter.join(10)
    assert got == [first] and pool.size() == 1
    pool.checkin(first)
    puzzle = pool.checkout("puzzle-3x3")  # no free puzzle env: the free scene env makes room
    assert puzzle is not first and pool.size() == 1
    with pytest.raises(ValueError, match="max_active needs lend=True"):
        EnvPool(max_active=2)
    pool.close()
