"""The RL agent: networks, optimizers and target nets; ``update(batch)`` in the paper's order.

Usage (the learner owns the data and the files; the agent only updates)::

    agent = Agent(AgentConfig(), load_policy(sft_dir), seed=0)
    for step in range(steps):
        metrics = agent.update(replay.sample(256, rng))   # value, critic, EMA, actor
    save_policy(out, agent.acting_policy())

One update (ALGORITHMS.md §2 and §3):

1. value step on ``min_heads Q_target(s, a_data)`` (C51-projected for DIVL, expectile for IQL);
2. adaptive tau and the quantile of the *updated* ``V(s')`` (no gradient);
3. critic step towards ``R + gamma^{nH} (1 - done) Quant_tau(V(s'))``;
4. EMA of the target critic;
5. policy extraction (QAM by default; FQL or advantage-weighted BC as baselines).

Each loss only produces gradients for its own network: frozen nets (target critic, reference
flow) have ``requires_grad=False`` and the actor's gradients are taken with
``torch.autograd.grad`` over the actor's parameters alone.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from lwd.algo.divl import (
    adaptive_tau,
    c51_project,
    categorical_value_loss,
    critic_loss,
    expectile_loss,
    normalized_entropy,
    quantile_readout,
    td_target,
    value_support,
)
from lwd.algo.extraction import awr_actor_loss, fql_actor_loss, qam_actor_loss
from lwd.algo.flow_bc import flow_matching_loss
from lwd.config import AgentConfig
from lwd.nets.critic import (
    HEAD_RULES,
    ValueNet,
    build_critic,
    combine_heads,
    observation_encoder,
)
from lwd.policy.checkpoint import save_policy
from lwd.policy.flow import FlowPolicy
from lwd.policy.ranker import remove_ranker, save_ranker
from lwd.types import Batch

_VALUES = ("divl", "expectile")
_EXTRACTIONS = ("qam", "fql", "awr", "none")
_PRECISIONS = ("fp32", "bf16", "bf16_actor")


def check_agent_config(cfg: AgentConfig) -> None:
    """Raise a clear error for settings the agent cannot run with."""
    if cfg.value not in _VALUES:
        raise ValueError(f"AgentConfig.value must be one of {_VALUES}, got {cfg.value!r}")
    if cfg.extraction not in _EXTRACTIONS:
        raise ValueError(
            f"AgentConfig.extraction must be one of {_EXTRACTIONS}, got {cfg.extraction!r}"
        )
    for name in ("critic_target", "q_grad_heads", "rank_heads"):
        if getattr(cfg, name) not in HEAD_RULES:
            raise ValueError(
                f"AgentConfig.{name} must be one of {HEAD_RULES}, got {getattr(cfg, name)!r}"
            )
    if cfg.pessimism < 0:
        raise ValueError(f"AgentConfig.pessimism must be >= 0, got {cfg.pessimism}")
    if cfg.reference not in ("frozen", "bc"):
        raise ValueError(f"AgentConfig.reference must be 'frozen' or 'bc', got {cfg.reference!r}")
    if cfg.rollout_field not in ("finetuned", "reference"):
        raise ValueError(
            f"AgentConfig.rollout_field must be 'finetuned' or 'reference', got {cfg.rollout_field!r}"
        )
    if not 0.0 < cfg.tau_min <= cfg.tau_max <= 1.0:
        raise ValueError(f"need 0 < tau_min <= tau_max <= 1, got {cfg.tau_min}, {cfg.tau_max}")
    if cfg.lam <= 0 or cfg.critic_heads < 1 or cfg.actor_every < 1 or cfg.actor_warmup < 0:
        raise ValueError(
            "AgentConfig: lam must be > 0, critic_heads >= 1, actor_every >= 1, actor_warmup >= 0"
        )
    if cfg.precision not in _PRECISIONS:
        raise ValueError(
            f"AgentConfig.precision must be one of {_PRECISIONS}, got {cfg.precision!r}"
        )
    if cfg.best_of_n < 1:
        raise ValueError(f"AgentConfig.best_of_n must be >= 1 (1 = off), got {cfg.best_of_n}")


def _adam(params, lr: float) -> torch.optim.Adam:
    # One fused kernel per step instead of a dozen ops per tensor (same update, CPU and CUDA).
    return torch.optim.Adam(params, lr=lr, fused=True)


def _ema(target: nn.Module, source: nn.Module, rate: float) -> None:
    """``target <- target + rate (source - target)``, parameter by parameter (call without grad)."""
    torch._foreach_lerp_(list(target.parameters()), list(source.parameters()), rate)


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class Agent(nn.Module):
    """DIVL + QAM (or an ablation) around a pretrained flow policy.

    Args:
        cfg: the update's hyperparameters.
        policy: the SFT policy. It becomes the frozen reference ``f_ref`` and the starting
            point of the fine-tuned policy (for FQL: of the one-step policy).
        seed: seeds network initialisation and the update's noise.
    """

    def __init__(self, cfg: AgentConfig, policy: FlowPolicy, *, seed: int = 0) -> None:
        super().__init__()
        check_agent_config(cfg)
        self.cfg = cfg
        with torch.random.fork_rng():  # seed the initialisation without touching global RNG
            torch.manual_seed(seed)
            self._build(cfg, policy)
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0

    def _build(self, cfg: AgentConfig, policy: FlowPolicy) -> None:
        self.reference = _frozen(copy.deepcopy(policy))
        # QAM's "bc" reference: a BC-trained flow whose EMA is f_ref (None: f_ref stays frozen).
        self.reference_bc = copy.deepcopy(policy) if cfg.reference == "bc" else None
        acting_cfg = policy.cfg
        if cfg.extraction == "fql":  # a one-step policy: x1 = z + f(s, z, 0)
            acting_cfg = dataclasses.replace(policy.cfg, flow_steps=1)
        self.policy = FlowPolicy(acting_cfg, copy.deepcopy(policy.normalizer))
        self.policy.field.load_state_dict(policy.field.state_dict())
        pc = policy.cfg
        self.action_size = pc.chunk * pc.action_dim

        out = cfg.num_atoms if cfg.value == "divl" else 1
        self.value = ValueNet(observation_encoder(pc), cfg.critic_width, cfg.critic_depth, out)
        self.critic = build_critic(pc, cfg.critic_width, cfg.critic_depth, cfg.critic_heads)
        self.target_critic = _frozen(copy.deepcopy(self.critic))
        self.register_buffer("support", value_support(cfg.num_atoms, cfg.v_min, cfg.v_max))
        self.optimizers = {
            "value": _adam(self.value.parameters(), cfg.value_lr),
            "critic": _adam(self.critic.parameters(), cfg.critic_lr),
        }
        self.actor_params = [p for p in self.policy.parameters() if p.requires_grad]
        if cfg.extraction != "none":
            self.optimizers["actor"] = _adam(self.actor_params, cfg.actor_lr)
        if self.reference_bc is not None:
            self.optimizers["reference"] = _adam(self.reference_bc.parameters(), cfg.reference_lr)

    # ------------------------------------------------------------------------ read-outs
    def acting_policy(self) -> FlowPolicy:
        """The policy to deploy and evaluate (the fine-tuned flow, or FQL's one-step flow)."""
        return self.policy

    def save_acting_policy(self, directory, extra: dict | None = None):
        """``save_policy`` of the acting flow, plus the target critic as its best-of-N ranker
        when ``cfg.best_of_n > 1``; returns the directory."""
        save_policy(directory, self.policy, extra=extra)
        if self.cfg.best_of_n > 1:
            save_ranker(
                directory,
                self.target_critic,
                self.cfg.best_of_n,
                reduce=self.cfg.rank_heads,
                pessimism=self.cfg.pessimism,
            )
        else:  # a directory reused from a best-of-N run must not keep acting with a stale critic
            remove_ranker(directory)
        return directory

    def bootstrap_value(
        self, state_n: torch.Tensor, lang: torch.Tensor, image: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The value used as the bootstrap target at ``s'``, and its tau statistics."""
        cfg = self.cfg
        out = self.value(state_n, lang, image)
        if cfg.value == "expectile":
            return out[:, 0], {}
        probs = torch.softmax(out, dim=-1)
        entropy = normalized_entropy(probs)
        if cfg.adaptive_tau:
            tau = adaptive_tau(entropy, cfg.tau_base, cfg.tau_alpha, cfg.tau_min, cfg.tau_max)
        else:
            tau = torch.full_like(entropy, cfg.tau_base)
        value = quantile_readout(probs, self.support, tau)
        return value, {"value/entropy": entropy.mean(), "value/tau": tau.mean()}

    def critic_value(
        self, state_n: torch.Tensor, lang: torch.Tensor, actions: torch.Tensor, image=None
    ) -> torch.Tensor:
        """The target critic's heads, combined by ``cfg.critic_target`` (clipped double-Q by
        default), for raw action chunks ``(B, H, A)``: ``(B,)``."""
        qs = self.target_critic(state_n, lang, actions, image)
        return combine_heads(qs, self.cfg.critic_target, self.cfg.pessimism)

    # --------------------------------------------------------------------------- update
    def _autocast(self, actor: bool = False) -> torch.autocast:
        """The forward passes' precision (``cfg.precision``); backward follows the forward."""
        p = self.cfg.precision
        return torch.autocast(
            self.support.device.type,
            dtype=torch.bfloat16,
            enabled=p == "bf16" or (actor and p == "bf16_actor"),
        )

    def _step(self, name: str, loss: torch.Tensor, params) -> torch.Tensor:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        return norm

    def update(self, batch: Batch) -> dict[str, float]:
        """One learner update on ``batch``; returns scalar metrics (namespaced keys)."""
        cfg, norm = self.cfg, self.policy.normalizer
        state_n = norm.normalize_state(batch.state)
        next_n = norm.normalize_state(batch.next_state)
        lang, image, actions = batch.lang, batch.image, batch.actions
        metrics: dict[str, torch.Tensor] = {}

        # 1. Value step on the dataset action's (clipped double-Q) target value.
        with torch.no_grad(), self._autocast():
            label = self.critic_value(state_n, lang, actions, image)
        with self._autocast():
            out = self.value(state_n, lang, image)
        if cfg.value == "divl":
            target = c51_project(label, self.support)
            loss_v = categorical_value_loss(out, target)
            metrics["value/mean"] = (torch.softmax(out.detach(), -1) @ self.support).mean()
        else:
            loss_v = expectile_loss(out[:, 0], label, cfg.expectile)
            metrics["value/mean"] = out.detach().mean()
        metrics["value/loss"] = loss_v.detach()
        metrics["value/grad_norm"] = self._step("value", loss_v, self.value.parameters())

        # 2-3. Bootstrap from the updated value at s' (adaptive tau quantile), no gradient.
        with torch.no_grad(), self._autocast():
            boot, tau_info = self.bootstrap_value(next_n, lang, batch.next_image)
            y = td_target(batch.reward, batch.discount, boot)
        metrics |= tau_info

        # 4. Critic step on the whole chunk, both heads.
        with self._autocast():
            q = self.critic(state_n, lang, actions, image)
        loss_q = critic_loss(q, y)
        metrics |= {"critic/loss": loss_q.detach(), "critic/q_mean": q.detach().mean()}
        metrics["critic/target_mean"] = y.mean()
        metrics["critic/grad_norm"] = self._step("critic", loss_q, self.critic.parameters())

        # 5. EMA of the target critic.
        with torch.no_grad():
            _ema(self.target_critic, self.critic, cfg.ema)

        since = self.updates - cfg.actor_warmup
        if cfg.extraction != "none" and since >= 0 and since % cfg.actor_every == 0:
            metrics |= self._actor_update(state_n, lang, image, actions, label)
        if self.reference_bc is not None:  # after the actor, which used the pre-step f_ref
            with self._autocast():
                loss_bc, _ = flow_matching_loss(
                    self.reference_bc.field,
                    state_n,
                    lang,
                    norm.normalize_action(actions),
                    image,
                    generator=self.generator,
                )
            metrics["reference/bc_loss"] = loss_bc.detach()
            metrics["reference/grad_norm"] = self._step(
                "reference", loss_bc, self.reference_bc.parameters()
            )
            with torch.no_grad():
                _ema(self.reference, self.reference_bc, cfg.ema)
        self.updates += 1
        return {k: float(v) for k, v in metrics.items()}

    def _q_fn(self, state_n, lang, image, critic: nn.Module):
        norm, pc = self.policy.normalizer, self.policy.cfg

        def q_fn(x: torch.Tensor) -> torch.Tensor:
            a = norm.denormalize_action(x.view(-1, pc.chunk, pc.action_dim)).clamp(-1.0, 1.0)
            qs = critic(state_n, lang, a, image)
            return combine_heads(qs, self.cfg.q_grad_heads, self.cfg.pessimism)

        return q_fn

    def _actor_update(self, state_n, lang, image, actions, q_data) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        with self._autocast(actor=True):
            loss, info = self._actor_loss(state_n, lang, image, actions, q_data)
        opt = self.optimizers["actor"]
        opt.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(loss, self.actor_params, allow_unused=True)
        for p, g in zip(self.actor_params, grads, strict=False):
            p.grad = g
        info["actor/grad_norm"] = torch.nn.utils.clip_grad_norm_(self.actor_params, cfg.grad_clip)
        opt.step()
        return info

    def _actor_loss(self, state_n, lang, image, actions, q_data):
        """``cfg.extraction``'s loss (with gradient into the acting flow) and its metrics."""
        cfg, field = self.cfg, self.policy.field
        steps = self.reference.cfg.flow_steps
        if cfg.extraction == "qam":
            loss, info = qam_actor_loss(
                field,
                self.reference.field,
                state_n,
                lang,
                image,
                self._q_fn(state_n, lang, image, self.target_critic),
                lam=cfg.lam,
                steps=steps,
                generator=self.generator,
                rollout=cfg.rollout_field,
            )
        elif cfg.extraction == "fql":
            loss, info = fql_actor_loss(
                field,
                self.reference.field,
                state_n,
                lang,
                image,
                self._q_fn(state_n, lang, image, self.critic),
                alpha=cfg.fql_alpha,
                steps=steps,
                generator=self.generator,
            )
        else:  # awr
            with torch.no_grad():
                v, _ = self.bootstrap_value(state_n, lang, image)
            loss, info = awr_actor_loss(
                field,
                state_n,
                lang,
                image,
                self.policy.normalizer.normalize_action(actions),
                q_data - v,
                beta=cfg.awr_beta,
                max_weight=cfg.awr_max_weight,
                generator=self.generator,
            )
        return loss, info

    # ---------------------------------------------------------------------- checkpoints
    def trainable_modules(self) -> dict[str, nn.Module]:
        """Everything a checkpoint must hold to resume exactly (besides optimizers and RNG)."""
        modules = {
            "policy": self.policy,
            "value": self.value,
            "critic": self.critic,
            "target_critic": self.target_critic,
        }
        if self.reference_bc is not None:
            modules |= {"reference": self.reference, "reference_bc": self.reference_bc}
        return modules
