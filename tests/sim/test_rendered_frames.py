"""The image path of the policy on real rendered MuJoCo frames (needs offscreen OpenGL)."""

import ctypes.util

import numpy as np
import pytest
import torch

from lwd.config import PolicyConfig
from lwd.policy.flow import FlowPolicy
from lwd.sim.robot import SimRobot
from lwd.sim.tasks import get_task

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("OSMesa") is None, reason="needs libOSMesa (apt install libosmesa6)"
)


def test_policy_conditions_on_rendered_frames():
    robot = SimRobot("camera-robot", image_size=64)
    try:
        frames, states = [], []
        for task_name in ("open-drawer", "press-center"):
            obs = robot.reset(get_task(task_name), seed=0)
            assert obs.image.shape == (64, 64, 3) and obs.image.dtype == np.uint8
            assert obs.image.std() > 5  # a real picture, not a blank buffer
            frames.append(obs.image)
            states.append(obs.state)
    finally:
        robot.close()
    assert np.abs(frames[0].astype(int) - frames[1].astype(int)).mean() > 5
    torch.manual_seed(0)
    cfg = PolicyConfig(width=64, depth=2, use_images=True, image_size=64, image_features=16)
    policy = FlowPolicy(cfg)
    images = torch.from_numpy(np.stack(frames))
    state = torch.from_numpy(np.stack(states))
    lang = torch.zeros(2, cfg.lang_dim)
    feats = policy.field.image_encoder(images)
    assert feats.shape == (2, 16) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])  # different scenes, different features
    chunk = policy.sample(state, lang, images, noise=torch.zeros(2, cfg.chunk, cfg.action_dim))
    assert chunk.shape == (2, cfg.chunk, cfg.action_dim)
    # Gradients reach the CNN through the flow-matching loss.
    from lwd.algo.flow_bc import flow_matching_loss

    loss, _ = flow_matching_loss(policy.field, state, lang, torch.zeros(2, cfg.chunk, 5), images)
    loss.backward()
    assert policy.field.image_encoder.parameters().__next__().grad is not None
