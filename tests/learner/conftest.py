"""Fixtures shared by the learner tests: a tiny offline store and a tiny SFT checkpoint."""

import numpy as np
import pytest
import torch

from lwd.config import AgentConfig, OfflineConfig, PolicyConfig
from lwd.data.store import EpisodeStore
from lwd.policy.checkpoint import save_policy
from lwd.policy.flow import FlowPolicy
from lwd.sim.layout import ACTION_DIM, STATE_DIM
from lwd.types import Source
from tests.conftest import make_episode


class FakeEncoder:
    def encode(self, texts):
        return np.stack(
            [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=16) for t in texts]
        ).astype(np.float32)


PCFG = PolicyConfig(
    state_dim=STATE_DIM,
    action_dim=ACTION_DIM,
    chunk=3,
    flow_steps=3,
    width=32,
    depth=2,
    lang_dim=16,
    lang_proj=4,
)
CFG = OfflineConfig(
    steps=12,
    batch_size=32,
    n_step=2,
    checkpoint_every=4,
    log_every=2,
    seed=5,
    agent=AgentConfig(critic_width=32, critic_depth=2, num_atoms=11),
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    store = EpisodeStore(root / "data", known_tasks=["open-drawer", "close-window"])
    for i in range(6):
        src = [Source.DEMO, Source.AUTONOMOUS, Source.PLAY][i % 3]
        task = ["open-drawer", "close-window"][i % 2]
        store.put(make_episode(15, seed=i, task=task, source=src, success=src == Source.DEMO))
    store.snapshot()
    torch.manual_seed(0)
    save_policy(root / "sft", FlowPolicy(PCFG))
    return root
