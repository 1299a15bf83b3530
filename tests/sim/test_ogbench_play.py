import gymnasium as gym
import numpy as np
import pytest

from lwd.data.schema import validate_episode
from lwd.data.store import EpisodeStore
from lwd.sim.layout import ENV_FLAG, PUZZLE, STATE_DIM
from lwd.sim.ogbench_play import (
    PlayCollector,
    PlayRollout,
    evaluate_singletask,
    generate_play,
    generate_play_store,
    split_at_successes,
)
from lwd.sim.ogbench_tasks import goal_reached, ogbench_task
from lwd.types import SCRIPTED_VERSION, ActionChunk, Source

SHORT = 200


def test_split_at_successes_known_answers():
    f, t = False, True
    # Enter the goal at s2, stay until s3, leave, re-enter at s6, stay to the end.
    assert split_at_successes([f, f, t, t, f, f, t, t]) == [(0, 2, True), (4, 6, True)]
    # Start inside the goal: those transitions are dropped; no success afterwards.
    assert split_at_successes([t, t, f, f, f]) == [(2, 4, False)]
    assert split_at_successes([f, f, f]) == [(0, 2, False)]
    assert split_at_successes([f, t, f, f]) == [(0, 1, True), (2, 3, False)]
    assert split_at_successes([t, t, t]) == []


def test_tasks_come_from_ogbench():
    scene = ogbench_task("scene-play-singletask-task2-v0", 2)
    assert scene.name == "scene-task2" and scene.ogbench_name == "task2_unlock_and_lock"
    assert scene.buttons == (0, 0) and scene.drawer == 0.0 and scene.window == 0.0
    assert scene.cube_xyz == pytest.approx((0.35, -0.05, 0.02))
    assert "locked" in scene.instruction and scene.eval_env_id == "scene-singletask-task2-v0"
    puzzle = ogbench_task("puzzle-3x3", 2)
    assert puzzle.buttons == (0, 1, 1, 1, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="names task 3"):
        ogbench_task("scene-play-singletask-task3-v0", 2)
    with pytest.raises(ValueError, match="unsupported environment"):
        ogbench_task("cube-double", 2)
    with pytest.raises(ValueError, match="tasks 1..5"):
        ogbench_task("scene", 6)


@pytest.mark.parametrize("env_name", ["scene", "puzzle-3x3"])
def test_goal_test_agrees_with_ogbench(env_name):
    """Our goal test equals OGBench's own task-mode success check, off and on the goal."""
    task = ogbench_task(env_name, 2)
    env = gym.make(task.eval_env_id)
    u = env.unwrapped
    try:
        env.reset(seed=3)

        def ogbench_success() -> bool:
            parts = u._compute_successes()
            flat = [p for x in parts for p in (x if isinstance(x, list) else [x])]
            return bool(all(flat))

        assert goal_reached(task, u) == ogbench_success() is False
        qpos, qvel = u._data.qpos.copy(), u._data.qvel.copy()
        if env_name == "scene":
            qpos[14:17] = task.cube_xyz
            qpos[14] += 0.03  # inside the 0.04 m tolerance
            qpos[u._model.jnt_qposadr[u._model.joint("drawer_slide").id]] = task.drawer
            qpos[u._model.jnt_qposadr[u._model.joint("window_slide").id]] = task.window + 0.03
        u.set_state(qpos, qvel, np.array(task.buttons))
        assert goal_reached(task, u) == ogbench_success() is True
        if env_name == "scene":
            qpos[14] += 0.02  # now 0.05 m away
            u.set_state(qpos, qvel, np.array(task.buttons))
            assert goal_reached(task, u) == ogbench_success() is False
    finally:
        env.close()


@pytest.fixture(scope="module", params=["scene", "puzzle-3x3"])
def collected(request):
    task = ogbench_task(request.param, 2)
    collector = PlayCollector(task, episode_length=SHORT)
    rollout = collector.rollout(seed=11)
    yield task, collector, rollout
    collector.close()


def test_rollout_shapes_and_relabelled_episodes(collected):
    task, collector, rollout = collected
    raw_dim = 40 if task.kind == "scene" else 55
    assert rollout.raw_states.shape == (SHORT + 1, raw_dim)
    assert rollout.raw_states.dtype == np.float32
    assert rollout.actions.shape == (SHORT, 5) and rollout.actions.dtype == np.float32
    assert np.abs(rollout.actions).max() <= 1.0 and rollout.reached.shape == (SHORT + 1,)
    if task.kind == "puzzle-3x3":  # the goal test, recomputed from the observed button states
        lights = rollout.raw_states[:, 19:].reshape(-1, 9, 4)[:, :, 1] > 0.5
        np.testing.assert_array_equal(rollout.reached, (lights == task.buttons).all(axis=1))
    episodes = collector.to_episodes(rollout)
    assert sum(ep.num_steps for ep in episodes) <= SHORT
    for ep in episodes:
        validate_episode(ep, known_tasks=[task.name])
        assert ep.states.shape == (ep.num_steps + 1, STATE_DIM) and ep.states.dtype == np.float32
        assert ep.task == task.name and ep.instruction == task.instruction
        assert (ep.sources == Source.AUTONOMOUS).all()
        assert (ep.policy_versions == SCRIPTED_VERSION).all()
        np.testing.assert_array_equal(ep.proposals, ep.actions)
        assert ep.cycle_time_s == pytest.approx(ep.num_steps * 0.05)
        assert ep.rewards.sum() == float(ep.success) and ep.terminated == ep.success
        if ep.success:
            assert ep.rewards[-1] == 1.0 and ep.progress == 1.0
    flag = (1.0, 0.0) if task.kind == "scene" else (0.0, 1.0)
    np.testing.assert_array_equal(
        episodes[0].states[:, ENV_FLAG], np.tile(flag, (len(episodes[0].states), 1))
    )
    if task.kind == "puzzle-3x3":
        np.testing.assert_array_equal(episodes[0].states[0, PUZZLE], rollout.raw_states[0, 19:])


def test_success_segments_end_in_the_goal(collected):
    """A synthetic goal entry (same states) is cut there, rewarded and terminated."""
    task, collector, rollout = collected
    reached = np.zeros(SHORT + 1, dtype=bool)
    reached[50:60] = True
    fake = PlayRollout(rollout.raw_states, rollout.actions, reached, True, rollout.seed)
    first, second = collector.to_episodes(fake)
    assert first.success and first.terminated and first.num_steps == 50
    assert first.rewards[-1] == 1.0 and first.rewards[:-1].sum() == 0
    assert not second.success and second.num_steps == SHORT - 60
    np.testing.assert_array_equal(second.actions, rollout.actions[60:])


def test_generator_is_deterministic_and_store_round_trips(tmp_path):
    kwargs = dict(episode_length=40, seed=5)
    direct = list(generate_play("puzzle-3x3", 2, 1, **kwargs))
    seen = []
    summary = generate_play_store(
        "puzzle-3x3", 2, 1, tmp_path, workers=1, progress=lambda *a: seen.append(a), **kwargs
    )
    assert summary["segments"] == len(direct) and summary["transitions"] == 40
    assert summary["snapshot"] == 1 and len(seen) == 1
    stored = EpisodeStore(tmp_path).read(summary["snapshot"])
    assert len(stored) == len(direct)
    for a, b in zip(direct, stored, strict=True):
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert (a.task, a.instruction, a.success) == (b.task, b.instruction, b.success)


class ZeroPolicy:
    version = 1

    def __init__(self):
        self.seen = []

    def infer(self, obs):
        self.seen.append(obs)
        return ActionChunk(actions=np.zeros((4, 5), dtype=np.float32), version=self.version)


def test_evaluate_singletask_runs_chunks_and_reports():
    policy = ZeroPolicy()
    report = evaluate_singletask(policy, "puzzle-3x3", 2, episodes=1, seed=0, max_steps=10)
    assert set(report) >= {"success", "episodes", "per_episode"}
    assert report["episodes"] == 1 and report["success"] == 0.0
    assert report["per_episode"][0]["steps"] == 10 and len(policy.seen) == 3  # 4 + 4 + 2
    obs = policy.seen[0]
    assert obs.state.shape == (STATE_DIM,) and obs.state.dtype == np.float32
    assert obs.instruction == ogbench_task("puzzle-3x3", 2).instruction


def test_oracle_solves_puzzle_task2():
    report = evaluate_singletask("oracle", "puzzle-3x3", 2, episodes=1, seed=0)
    assert report["success"] == 1.0 and report["per_episode"][0]["steps"] < 500
