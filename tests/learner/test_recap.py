"""RECAP: the indicator-conditioned policy, its checkpoints, and one smoke run of the method."""

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from lwd.learner.recap import RecapMethod
from lwd.nets.velocity import BAD, GOOD, INDICATORS, UNKNOWN, VelocityField
from lwd.policy.checkpoint import CONFIG_FILE, load_policy, save_policy
from lwd.policy.flow import FlowPolicy, FlowPolicyRunner, guided_velocity, with_indicator
from lwd.sim.layout import STATE_DIM
from lwd.types import Observation, Source
from tests.conftest import make_episode
from tests.learner.conftest import PCFG, FakeEncoder


def _inputs(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(b, PCFG.state_dim, generator=g)
    lang = torch.randn(b, PCFG.lang_dim, generator=g)
    noise = torch.randn(b, PCFG.chunk * PCFG.action_dim, generator=g)
    return state, lang, noise


def _trained_embedding(policy: FlowPolicy) -> FlowPolicy:
    """Give the (zero) indicator embedding distinct non-zero rows, as training would."""
    with torch.no_grad():
        emb = policy.field.indicator_embed.weight
        emb.copy_(torch.randn(emb.shape, generator=torch.Generator().manual_seed(1)))
    return policy


def _euler(policy: FlowPolicy, state, lang, noise, velocity_of):
    """Reference sampler: K Euler steps of ``velocity_of(context_fn, x, w)``."""
    state_n = policy.normalizer.normalize_state(state)
    x, k = noise.clone(), policy.cfg.flow_steps
    with torch.no_grad():
        for i in range(k):
            ctx = lambda ind: policy.field.encode_context(state_n, lang, None, ind)  # noqa: E731
            x = x + velocity_of(ctx, x, i / k) / k
    return x.reshape(-1, policy.cfg.chunk, policy.cfg.action_dim).clamp(-1, 1)


def test_zero_init_embedding_gives_exactly_the_sft_velocity():
    torch.manual_seed(0)
    sft = FlowPolicy(PCFG).eval()
    cond = with_indicator(sft).eval()
    assert cond.cfg.indicator and cond.cfg.act_indicator == "good" and cond.cfg.guidance == 1.0
    state, lang, x = _inputs()
    w = torch.full((4,), 0.3)
    v_sft = sft.field(state, lang, x, w)
    for label in range(len(INDICATORS)):
        assert torch.equal(cond.field(state, lang, x, w, indicator=label), v_sft)
    assert torch.equal(cond.sample(state, lang, noise=x), sft.sample(state, lang, noise=x))
    # guidance has nothing to amplify while the embedding is zero
    guided = with_indicator(sft, guidance=3.0)
    assert torch.equal(guided.sample(state, lang, noise=x), sft.sample(state, lang, noise=x))


def test_plain_field_refuses_an_indicator_and_old_state_dicts_still_load():
    field = VelocityField(PCFG)
    state, lang, x = _inputs()
    with pytest.raises(ValueError, match="takes no indicator"):
        field.encode_context(state, lang, None, GOOD)
    assert not any("indicator" in k for k in field.state_dict())


def test_sampling_acts_with_good_and_cfg_combines_the_velocities():
    torch.manual_seed(0)
    policy = _trained_embedding(with_indicator(FlowPolicy(PCFG))).eval()
    state, lang, noise = _inputs()
    field = policy.field

    def with_label(label):
        return lambda ctx, x, w: field.velocity(ctx(label), x, w)

    good = _euler(policy, state, lang, noise, with_label(GOOD))
    bad = _euler(policy, state, lang, noise, with_label(BAD))
    torch.testing.assert_close(policy.sample(state, lang, noise=noise), good)
    assert not torch.allclose(good, bad)

    beta = 2.5
    guided_policy = dataclasses.replace(policy.cfg, guidance=beta)
    guided = FlowPolicy(guided_policy, policy.normalizer)
    guided.load_state_dict(policy.state_dict())

    def cfg_velocity(ctx, x, w):
        return guided_velocity(
            field.velocity(ctx(GOOD), x, w), field.velocity(ctx(UNKNOWN), x, w), beta
        )

    expected = _euler(policy, state, lang, noise, cfg_velocity)
    torch.testing.assert_close(guided.eval().sample(state, lang, noise=noise), expected)


def test_checkpoint_round_trip_acts_conditioned_on_good(tmp_path):
    torch.manual_seed(0)
    policy = _trained_embedding(with_indicator(FlowPolicy(PCFG), guidance=1.5)).eval()
    save_policy(tmp_path / "ckpt", policy)
    loaded = load_policy(tmp_path / "ckpt")
    assert (loaded.cfg.indicator, loaded.cfg.act_indicator, loaded.cfg.guidance) == (
        True,
        "good",
        1.5,
    )
    # A robot that knows nothing about RECAP: load_policy + FlowPolicyRunner.
    obs = Observation(state=np.linspace(-1, 1, STATE_DIM, dtype=np.float32), instruction="go")
    chunk = FlowPolicyRunner(loaded, FakeEncoder(), version=1, seed=3).infer(obs).actions
    state = torch.from_numpy(obs.state[None])
    lang = torch.from_numpy(FakeEncoder().encode(["go"]))
    noise = torch.randn(1, PCFG.chunk * PCFG.action_dim, generator=torch.Generator().manual_seed(3))
    field = policy.field

    def good(ctx, x, w):
        return guided_velocity(
            field.velocity(ctx(GOOD), x, w), field.velocity(ctx(UNKNOWN), x, w), 1.5
        )

    np.testing.assert_allclose(
        chunk, _euler(policy, state, lang, noise, good)[0].numpy(), atol=1e-6
    )


def test_old_checkpoints_without_indicator_fields_still_load(tmp_path):
    torch.manual_seed(0)
    save_policy(tmp_path / "old", FlowPolicy(PCFG))
    path = tmp_path / "old" / CONFIG_FILE
    data = json.loads(path.read_text())
    for key in ("indicator", "act_indicator", "guidance"):
        del data["policy"][key]
    path.write_text(json.dumps(data))
    loaded = load_policy(tmp_path / "old")
    assert not loaded.cfg.indicator and loaded.field.indicator_embed is None


def test_unknown_settings_are_refused(setup, tmp_path):
    with pytest.raises(TypeError, match="unknown RECAP settings"):
        RecapMethod(setup / "sft", setup / "data", tmp_path, FakeEncoder(), good_fracton=0.3)
    with pytest.raises(ValueError, match="advantage"):
        RecapMethod(setup / "sft", setup / "data", tmp_path, FakeEncoder(), advantage="td")


@pytest.mark.parametrize("advantage", ["n_step", "monte_carlo"])
def test_recap_method_start_observe_improve(setup, tmp_path, advantage):
    t0 = time.perf_counter()
    method = RecapMethod(
        setup / "sft",
        setup / "data",
        tmp_path / "recap",
        FakeEncoder(),
        seed=1,
        updates_per_round=6,
        batch_size=16,
        value_updates_per_round=6,
        value_width=32,
        value_depth=2,
        advantage=advantage,
        advantage_chunks=2,
    )
    start = method.start()
    assert start == tmp_path / "recap" / "round-0"
    sft, round0 = load_policy(setup / "sft"), load_policy(start)
    state, lang, noise = _inputs()
    assert torch.equal(
        round0.sample(state, lang, noise=noise), sft.sample(state, lang, noise=noise)
    )

    fleet = [
        make_episode(10, seed=200, source=Source.AUTONOMOUS, success=True),
        make_episode(10, seed=201, source=Source.INTERVENTION, success=True),
        make_episode(10, seed=202, source=Source.AUTONOMOUS, success=False, task="close-window"),
    ]
    method.observe(fleet)
    method.observe(fleet[:1])  # already seen: skipped
    assert method.replay.num_episodes == 6 + 3

    first = method.improve()
    second = method.improve()
    assert (first.name, second.name) == ("round-1", "round-2")
    loaded = load_policy(second)
    assert loaded.cfg.indicator and loaded.cfg.act_indicator == "good"
    assert not torch.equal(loaded.field.indicator_embed.weight, torch.zeros(3, PCFG.width))
    extra = json.loads((second / CONFIG_FILE).read_text())["extra"]
    assert extra["trainer"] == "recap" and extra["round"] == 2
    m = method.last_metrics
    assert m["recap/forced_good"] == pytest.approx(10 / 120)  # the intervention episode
    # ~30% of the other steps beat their task's threshold, plus every intervention step
    assert 0.3 < m["recap/labelled_good"] < 0.45
    assert np.isfinite(m["value/loss"]) and np.isfinite(m["bc/loss"])
    assert time.perf_counter() - t0 < 20
