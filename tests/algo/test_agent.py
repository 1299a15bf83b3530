"""The agent's update: order, gradient isolation, and every ablation/baseline runs."""

import copy
import dataclasses

import pytest
import torch

from lwd.agent import Agent
from lwd.algo.extraction import qam_actor_loss
from lwd.algo.flow_bc import flow_matching_loss
from lwd.config import AgentConfig, PolicyConfig
from lwd.policy.flow import FlowPolicy
from lwd.types import Batch

PCFG = PolicyConfig(
    state_dim=6, action_dim=2, chunk=3, flow_steps=4, width=32, depth=2, lang_dim=8, lang_proj=4
)
ACFG = AgentConfig(critic_width=32, critic_depth=2, num_atoms=21)


def make_batch(b=16, seed=0, pcfg=PCFG, images=False) -> Batch:
    g = torch.Generator().manual_seed(seed)
    disc = torch.where(torch.rand(b, generator=g) < 0.2, 0.0, 0.99**3)
    img = torch.randint(0, 255, (b, pcfg.image_size, pcfg.image_size, 3), dtype=torch.uint8)
    return Batch(
        state=torch.randn(b, pcfg.state_dim, generator=g),
        lang=torch.randn(b, pcfg.lang_dim, generator=g),
        actions=torch.rand(b, pcfg.chunk, pcfg.action_dim, generator=g) * 2 - 1,
        reward=(disc == 0).float(),
        discount=disc,
        next_state=torch.randn(b, pcfg.state_dim, generator=g),
        source=torch.zeros(b, dtype=torch.long),
        policy_version=torch.zeros(b, dtype=torch.long),
        episode=torch.arange(b),
        step=torch.zeros(b, dtype=torch.long),
        online=torch.zeros(b, dtype=torch.bool),
        image=img if images else None,
        next_image=img if images else None,
    )


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, module):
    after = module.state_dict()
    return any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "cfg",
    [
        ACFG,
        dataclasses.replace(ACFG, value="expectile"),
        dataclasses.replace(ACFG, adaptive_tau=False),
        dataclasses.replace(ACFG, extraction="fql"),
        dataclasses.replace(ACFG, extraction="awr"),
        dataclasses.replace(ACFG, rollout_field="reference", q_grad_heads="min"),
        dataclasses.replace(
            ACFG, critic_heads=10, critic_target="pessimistic", q_grad_heads="pessimistic"
        ),
        dataclasses.replace(ACFG, precision="bf16"),
        dataclasses.replace(ACFG, precision="bf16_actor"),
    ],
    ids=[
        "divl-qam",
        "expectile",
        "constant-tau",
        "fql",
        "awr",
        "ref-rollout",
        "qam-ensemble",
        "bf16",
        "bf16-actor",
    ],
)
def test_every_variant_updates_and_never_moves_the_reference(cfg):
    agent = Agent(cfg, FlowPolicy(PCFG), seed=0)
    ref, pol = snapshot(agent.reference), snapshot(agent.policy)
    for i in range(3):
        metrics = agent.update(make_batch(seed=i))
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert "critic/loss" in metrics and "value/loss" in metrics
    assert not changed(ref, agent.reference)
    assert changed(pol, agent.policy)
    if cfg.value == "divl":
        assert cfg.tau_min <= metrics["value/tau"] <= cfg.tau_max


def test_update_isolation_per_loss_and_ema():
    """Value step moves only V, critic step only Q (and target by EMA), actor only f_theta."""
    agent = Agent(ACFG, FlowPolicy(PCFG), seed=0)
    batch = make_batch()
    before = {name: snapshot(m) for name, m in agent.trainable_modules().items()}
    agent.update(batch)
    for name in ("policy", "value", "critic", "target_critic"):
        assert changed(before[name], agent.trainable_modules()[name]), name
    # EMA: target = (1 - rate) * old_target + rate * new_critic, exactly
    rate = ACFG.ema
    for k, new_t in agent.target_critic.state_dict().items():
        expect = before["target_critic"][k] * (1 - rate) + agent.critic.state_dict()[k] * rate
        torch.testing.assert_close(new_t, expect)


def test_qam_loss_gradients_reach_only_the_finetuned_flow():
    agent = Agent(ACFG, FlowPolicy(PCFG), seed=0)
    b = make_batch()
    s = agent.policy.normalizer.normalize_state(b.state)
    q_fn = agent._q_fn(s, b.lang, None, agent.critic)  # even the *online* critic gets no grad
    loss, _ = qam_actor_loss(
        agent.policy.field, agent.reference.field, s, b.lang, None, q_fn, lam=2.0, steps=4
    )
    loss.backward()
    assert all(p.grad is not None for p in agent.policy.field.parameters())
    for m in (agent.reference, agent.critic, agent.target_critic, agent.value):
        assert all(p.grad is None for p in m.parameters())


def test_value_and_critic_losses_touch_only_their_nets():
    agent = Agent(dataclasses.replace(ACFG, extraction="none"), FlowPolicy(PCFG), seed=0)
    pol = snapshot(agent.policy)
    crit_before = snapshot(agent.critic)
    # freeze critic optimizer: if the value step leaked into the critic its grads would appear
    agent.optimizers["critic"] = torch.optim.SGD(agent.critic.parameters(), lr=0.0)
    agent.update(make_batch())
    assert not changed(pol, agent.policy)
    assert not changed(crit_before, agent.critic)
    assert all(p.grad is None for p in agent.policy.parameters())


def test_bc_reference_takes_one_flow_bc_step_and_f_ref_is_its_ema():
    """reference="bc" (QAM's option): the BC flow moves by one Adam step of flow BC on the
    batch, after the actor's step; f_ref moves only as its EMA; QAM still only moves f_theta."""
    cfg = dataclasses.replace(ACFG, reference="bc")
    torch.manual_seed(0)
    agent = Agent(cfg, FlowPolicy(PCFG), seed=0)
    twin = copy.deepcopy(agent)  # replays the update with the reference's part done by hand
    ref_before = snapshot(agent.reference)
    batch = make_batch()
    agent.update(batch)
    assert not any(p.requires_grad for p in agent.reference.parameters())

    bc_flow, ref_opt = twin.reference_bc, twin.optimizers.pop("reference")
    twin.reference_bc = None  # the same update without the reference's part
    twin.update(batch)
    norm = twin.policy.normalizer
    loss, _ = flow_matching_loss(
        bc_flow.field,
        norm.normalize_state(batch.state),
        batch.lang,
        norm.normalize_action(batch.actions),
        generator=twin.generator,
    )
    ref_opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(bc_flow.parameters(), cfg.grad_clip)
    ref_opt.step()
    for name in ("reference_bc", "policy", "critic", "value"):
        a = getattr(agent, name).state_dict()
        b = (bc_flow if name == "reference_bc" else getattr(twin, name)).state_dict()
        for k in a:
            torch.testing.assert_close(a[k], b[k], msg=f"{name}.{k}")
    for (k, new), p in zip(agent.reference.named_parameters(), bc_flow.parameters(), strict=True):
        expect = ref_before[k] * (1 - cfg.ema) + p.detach() * cfg.ema
        torch.testing.assert_close(new.detach(), expect)


def test_bc_reference_checkpoint_holds_its_optimizer():
    agent = Agent(dataclasses.replace(ACFG, reference="bc"), FlowPolicy(PCFG), seed=0)
    assert set(agent.optimizers) == {"value", "critic", "actor", "reference"}
    with pytest.raises(ValueError, match="reference"):
        Agent(dataclasses.replace(ACFG, reference="ema"), FlowPolicy(PCFG), seed=0)


def test_fql_acts_with_a_one_step_flow():
    agent = Agent(dataclasses.replace(ACFG, extraction="fql"), FlowPolicy(PCFG), seed=0)
    assert agent.acting_policy().cfg.flow_steps == 1
    agent.update(make_batch())
    out = agent.acting_policy().sample(torch.zeros(2, PCFG.state_dim), torch.zeros(2, 8))
    assert out.shape == (2, PCFG.chunk, PCFG.action_dim)


def test_agent_with_images():
    pcfg = dataclasses.replace(PCFG, use_images=True, image_size=16, image_features=8)
    agent = Agent(ACFG, FlowPolicy(pcfg), seed=0)
    metrics = agent.update(make_batch(pcfg=pcfg, images=True))
    assert torch.isfinite(torch.tensor(metrics["actor/qam_loss"]))


def test_same_seed_same_updates():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)  # the same SFT start
        agent = Agent(ACFG, FlowPolicy(PCFG), seed=3)
        runs.append([agent.update(make_batch(seed=i))["actor/qam_loss"] for i in range(2)])
    assert runs[0] == runs[1]


def test_bad_config_is_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="extraction"):
        Agent(dataclasses.replace(ACFG, extraction="ppo"), FlowPolicy(PCFG))
    with pytest.raises(ValueError, match="critic_target"):
        Agent(dataclasses.replace(ACFG, critic_target="max"), FlowPolicy(PCFG))
    with pytest.raises(ValueError, match="pessimism"):
        Agent(dataclasses.replace(ACFG, pessimism=-1.0), FlowPolicy(PCFG))
    with pytest.raises(ValueError, match="precision"):
        Agent(dataclasses.replace(ACFG, precision="fp16"), FlowPolicy(PCFG))


def test_bf16_update_tracks_fp32_and_keeps_every_state_in_fp32():
    torch.manual_seed(0)
    sft = FlowPolicy(PCFG)
    agents = {
        p: Agent(dataclasses.replace(ACFG, precision=p), sft, seed=0)
        for p in ("fp32", "bf16", "bf16_actor")
    }
    metrics = {p: a.update(make_batch()) for p, a in agents.items()}
    for key in ("value/loss", "critic/loss", "actor/qam_loss", "actor/q_sample"):
        assert metrics["bf16"][key] == pytest.approx(metrics["fp32"][key], rel=0.03, abs=1e-3)
    assert metrics["bf16"] != metrics["fp32"]  # the matmuls did run in bfloat16
    # bf16_actor: value and critic steps exactly fp32, extraction in bfloat16
    for key in ("value/loss", "critic/loss"):
        assert metrics["bf16_actor"][key] == metrics["fp32"][key]
    assert metrics["bf16_actor"]["actor/qam_loss"] != metrics["fp32"]["actor/qam_loss"]
    agent = agents["bf16"]
    assert all(
        t.dtype == torch.float32 for t in agent.state_dict().values() if t.is_floating_point()
    )
    for opt in agent.optimizers.values():
        for state in opt.state.values():
            assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("rule", ["min", "mean", "pessimistic"])
def test_value_label_combines_the_target_heads_by_the_configured_rule(rule):
    cfg = dataclasses.replace(ACFG, critic_heads=4, critic_target=rule, pessimism=0.5)
    agent = Agent(cfg, FlowPolicy(PCFG), seed=0)
    b = make_batch()
    s = agent.policy.normalizer.normalize_state(b.state)
    qs = agent.target_critic(s, b.lang, b.actions, None)  # (4, B)
    expected = {
        "min": qs.min(0).values,
        "mean": qs.mean(0),
        "pessimistic": qs.mean(0) - 0.5 * qs.std(0, correction=0),
    }[rule]
    torch.testing.assert_close(agent.critic_value(s, b.lang, b.actions), expected)
