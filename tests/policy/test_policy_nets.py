"""Networks of the flow policy: MLP, time embedding, image encoder, velocity field."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lwd.config import PolicyConfig
from lwd.nets.image import ImageEncoder
from lwd.nets.mlp import MLP, Linearization, sinusoidal_time_embedding
from lwd.nets.velocity import VelocityField

TINY = PolicyConfig(state_dim=6, action_dim=2, chunk=3, width=32, depth=2, lang_dim=8)


def test_mlp_shapes_and_layer_norm():
    net = MLP(4, (16, 16), 3, layer_norm=True, activation="silu")
    assert net(torch.zeros(5, 4)).shape == (5, 3)
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in net.modules()) == 2
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(4, (8,), 1, activation="relu6")


def test_time_embedding_at_zero_is_sin0_cos1():
    emb = sinusoidal_time_embedding(torch.zeros(3), 8)
    assert emb.shape == (3, 8)
    torch.testing.assert_close(emb[:, :4], torch.zeros(3, 4))
    torch.testing.assert_close(emb[:, 4:], torch.ones(3, 4))


def test_time_embedding_known_values():
    w = torch.tensor([0.5])
    emb = sinusoidal_time_embedding(w, 4, scale=1.0, max_period=100.0)
    # frequencies 1 and 100 ** -0.5 = 0.1
    expected = [math.sin(0.5), math.sin(0.05), math.cos(0.5), math.cos(0.05)]
    torch.testing.assert_close(emb[0], torch.tensor(expected))
    with pytest.raises(ValueError, match="even"):
        sinusoidal_time_embedding(w, 5)


def test_image_encoder_on_random_uint8_batch():
    enc = ImageEncoder(features=16, image_size=32, channels=(8, 16))
    frames = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    out = enc(frames)
    assert out.shape == (2, 16) and out.dtype == torch.float32 and out.isfinite().all()
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    with pytest.raises(TypeError, match="uint8"):
        enc(frames.float())
    with pytest.raises(ValueError, match="built for 32x32"):
        enc(torch.zeros(1, 16, 16, 3, dtype=torch.uint8))


def test_velocity_field_context_path_equals_forward():
    torch.manual_seed(0)
    field = VelocityField(TINY)
    state, lang = torch.randn(4, 6), torch.randn(4, 8)
    x, w = torch.randn(4, 6), torch.rand(4)
    ctx = field.encode_context(state, lang)
    assert ctx.shape == (4, TINY.width)
    torch.testing.assert_close(field.velocity(ctx, x, w), field(state, lang, x, w))
    # a float w is the same as a batch of equal times
    torch.testing.assert_close(
        field.velocity(ctx, x, 0.3), field.velocity(ctx, x, torch.full((4,), 0.3))
    )
    assert field(state, lang, x, w).shape == (4, 6)


@pytest.mark.parametrize("layer_norm", [True, False])
def test_batched_steps_and_hand_written_vjps_match_autograd(layer_norm):
    """``velocity_steps`` equals per-step ``velocity``; ``linearize(...).vjp`` equals autograd's
    VJP in ``x`` at every step (float64, so any mismatch is a real one)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, depth=3, layer_norm=layer_norm)
    field = VelocityField(cfg).double()
    k, b = 4, 5
    ctx = field.encode_context(torch.randn(b, 6).double(), torch.randn(b, 8).double())
    xs, times = torch.randn(k, b, 6).double(), torch.rand(k).double()
    per_step = torch.stack([field.velocity(ctx, xs[i], times[i]) for i in range(k)])
    torch.testing.assert_close(field.velocity_steps(ctx, xs, times), per_step)
    v, lin = field.linearize(ctx, xs, times)
    torch.testing.assert_close(v, per_step)
    assert not v.requires_grad
    for i in range(k):
        g = torch.randn(b, 6).double()
        x = xs[i].clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(field.velocity(ctx, x, times[i]), x, grad_outputs=g)
        torch.testing.assert_close(lin.vjp(i, g), expected)


def test_linearization_refuses_layers_it_cannot_differentiate():
    lin = Linearization(torch.eye(3))
    with pytest.raises(TypeError, match="SiLU"):
        lin.record(torch.nn.SiLU(), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="GELU"):
        lin.record(torch.nn.GELU(approximate="tanh"), torch.zeros(2, 3))
    field = VelocityField(TINY)
    with pytest.raises(ValueError, match="times must have shape"):
        field.velocity_steps(torch.zeros(2, TINY.width), torch.zeros(3, 2, 6), torch.zeros(2))


def test_velocity_field_with_images_and_shape_errors():
    cfg = PolicyConfig(
        state_dim=6, action_dim=2, chunk=3, width=32, depth=1, lang_dim=8,
        use_images=True, image_size=16, image_features=8,
    )  # fmt: skip
    field = VelocityField(cfg)
    state, lang = torch.randn(2, 6), torch.randn(2, 8)
    image = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)
    assert field(state, lang, torch.randn(2, 6), torch.rand(2), image).shape == (2, 6)
    with pytest.raises(ValueError, match="pass image"):
        field(state, lang, torch.randn(2, 6), torch.rand(2))
    with pytest.raises(ValueError, match=r"state must have shape \(B, 6\)"):
        field(torch.randn(2, 5), lang, torch.randn(2, 6), torch.rand(2), image)
    with pytest.raises(ValueError, match="H\\*A"):
        field(state, lang, torch.randn(2, 7), torch.rand(2), image)


def test_under_bf16_autocast_output_layers_and_time_features_stay_fp32():
    torch.manual_seed(0)
    net = MLP(4, (16, 16), 3, layer_norm=True)
    x = torch.randn(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = net.net[:-1](x)
        y = net(x)
    assert hidden.dtype == torch.bfloat16 and y.dtype == torch.float32
    torch.testing.assert_close(y, net.net[-1](hidden.float()))  # last layer in fp32

    field = VelocityField(TINY)
    state, lang, xs = torch.randn(64, 6), torch.randn(64, 8), torch.randn(64, 6)
    w = torch.rand(64)  # large phases (1000 w): bfloat16 time features would be off by radians
    exact = field(state, lang, xs, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = field(state, lang, xs, w)
        steps = field.velocity_steps(field.encode_context(state, lang), xs[None], w[:1])
    assert mixed.dtype == torch.float32 and steps.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, atol=0.05, rtol=0.05)
    torch.testing.assert_close(
        steps[0], field(state, lang, xs, w[:1].expand(64)), atol=0.05, rtol=0.05
    )
