"""The online learner: 1:1 batches from fleet snapshots, periodic publishing, exact resume."""

import dataclasses
import threading

import torch

from lwd.config import AgentConfig, OnlineConfig
from lwd.data.store import EpisodeStore
from lwd.fleet.registry import PolicyRegistry
from lwd.learner.online import PHASES, LocalSource, OnlineLearner, RegistrySink
from lwd.types import Source
from tests.conftest import make_episode
from tests.learner.conftest import FakeEncoder

CFG = OnlineConfig(
    batch_size=16,
    publish_every=4,
    refresh_every=4,
    checkpoint_every=4,
    max_updates=12,
    seed=1,
    agent=AgentConfig(critic_width=32, critic_depth=2, num_atoms=11, tau_base=0.9),
)


def fleet_store(root):
    store = EpisodeStore(root, known_tasks=["open-drawer", "close-window"])
    for i in range(3):
        src = Source.INTERVENTION if i == 1 else Source.AUTONOMOUS
        store.put(make_episode(12, seed=100 + i, source=src, success=i == 0, robot_id=f"r{i}"))
    return store


def make_learner(setup, tmp, out, cfg=CFG):
    return OnlineLearner(
        cfg,
        setup / "sft",
        setup / "data",
        LocalSource(fleet_store(tmp / "fleet")),
        RegistrySink(PolicyRegistry(tmp / f"registry-{out}")),
        tmp / out,
        FakeEncoder(),
    )


def test_online_batches_are_one_to_one_and_policies_are_published(setup, tmp_path):
    learner = make_learner(setup, tmp_path, "run")
    seen = []
    status = learner.run(on_update=lambda s, m, st: seen.append(st))
    assert status["step"] == 12
    assert status["online_transitions"] == 36  # 3 fleet episodes of 12 steps
    assert all(st["online_in_batch"] == 8 for st in seen)  # exactly half of 16
    assert [v for _, v in learner.published] == [1, 2, 3, 4]  # start + every 4 updates
    assert learner.agent.cfg.tau_base == 0.9 and learner.online.n_step == 1
    # where the loop's time went: each phase ran, and together they are at most the wall time
    shares = [status[f"share_{phase}"] for phase in PHASES]
    assert status["share_update"] > 0 and status["share_publish"] > 0
    assert all(s >= 0 for s in shares) and sum(shares) <= 1.0


def test_killed_online_learner_resumes_exactly(setup, tmp_path):
    def trajectory(learner, stop=None):
        out = []

        def on(step, m, st):
            out.append((step, m["critic/loss"], m["actor/qam_loss"]))
            if stop is not None and step == 8:
                stop.set()

        learner.run(stop, on)
        return out

    full = trajectory(make_learner(setup, tmp_path / "a", "run"))
    stop = threading.Event()
    first = trajectory(make_learner(setup, tmp_path / "b", "run"), stop)
    resumed_learner = make_learner(setup, tmp_path / "b", "run")
    assert resumed_learner.step == 8 and len(resumed_learner.online) == 36
    rest = trajectory(resumed_learner)
    assert first + rest == full


def test_online_learner_starts_from_an_offline_run(setup, tmp_path):
    from lwd.config import OfflineConfig
    from lwd.learner.offline import train_offline

    off_cfg = OfflineConfig(steps=4, batch_size=16, n_step=2, checkpoint_every=4, agent=CFG.agent)
    train_offline(off_cfg, setup / "data", setup / "sft", tmp_path / "off", FakeEncoder())
    learner = OnlineLearner(
        dataclasses.replace(CFG, max_updates=1),
        tmp_path / "off",
        setup / "data",
        LocalSource(fleet_store(tmp_path / "fleet")),
        RegistrySink(PolicyRegistry(tmp_path / "reg")),
        tmp_path / "on",
        FakeEncoder(),
    )
    from lwd.learner.offline import latest_checkpoint
    from lwd.policy.checkpoint import load_policy

    trained = load_policy(latest_checkpoint(tmp_path / "off") / "policy")
    for a, b in zip(trained.parameters(), learner.agent.policy.parameters(), strict=True):
        assert torch.equal(a, b)
    learner.run()


def test_a_time_based_refresh_picks_up_episodes_between_update_count_refreshes(setup, tmp_path):
    cfg = dataclasses.replace(CFG, refresh_every=1000, refresh_s=0.0, max_updates=3)
    learner = make_learner(setup, tmp_path, "run", cfg)
    commits = []
    commit = learner.source.commit
    learner.source.commit = lambda: commits.append(1) or commit()
    learner.run(
        on_update=lambda s, m, st: learner.source.store.put(
            make_episode(12, seed=200 + s, source=Source.AUTONOMOUS, robot_id="late")
        )
    )
    assert len(commits) == 3  # before updates 1, 2 and 3: every time, not every 1000 updates
    assert len(learner.online) == 36 + 2 * 12  # the episodes put after updates 1 and 2
    slow = make_learner(setup, tmp_path, "slow", dataclasses.replace(cfg, refresh_s=None))
    slow.run()
    assert [step for step, _ in slow.snapshots] == [0]


def test_cut_at_source_change_reaches_both_buffers_and_the_cli(setup, tmp_path):
    cfg = dataclasses.replace(CFG, n_step=3, cut_at_source_change=True, max_updates=2)
    learner = make_learner(setup, tmp_path, "cut", cfg)
    learner.run()
    for buf in (learner.offline, learner.online):
        assert buf.n_step == 3 and buf.cut_at_source_change

    from lwd.cli import build_parser

    base = ["learner", "--server", "http://x", "--init", "a", "--offline-data", "b", "--out", "c"]
    args = build_parser().parse_args([*base, "--n-step", "10", "--cut-at-source-change"])
    assert (args.n_step, args.cut_at_source_change) == (10, True)
    assert build_parser().parse_args(base).cut_at_source_change is None  # preset's value kept
