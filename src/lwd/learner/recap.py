"""The RECAP online baseline (π*0.6 style, ALGORITHMS.md §5) as a round-based method.

A harness deploys the acting policy, hands back the fleet's episodes, and asks for the next
policy::

    method = RecapMethod(sft_dir, offline_store_dir, out, encoder, updates_per_round=500)
    policy_dir = method.start()                  # round 0: the SFT policy, made conditionable
    while deploying:
        episodes = fleet.run(load_policy(policy_dir))
        method.observe(episodes)                 # autonomous + intervention steps
        policy_dir = method.improve()            # value -> indicators -> conditioned flow BC

One round of :meth:`RecapMethod.improve`, on all offline + observed steps:

1. value steps: ``V(s_t)`` (201-bin categorical) on C51-projected Monte-Carlo returns;
2. relabel every step: advantage (n-step ``r + gamma^(nH) V(s') - V(s)`` or ``G - V(s)``),
   per-task threshold at the ``1 - good_fraction`` quantile, interventions forced good;
3. policy steps: flow BC conditioned on the label, dropped to "unknown" with ``cfg_dropout``;
4. ``out/round-N/``: a policy checkpoint whose config records ``act_indicator="good"`` and the
   guidance weight, so ``load_policy`` + ``FlowPolicyRunner`` act as RECAP does.

The value and the policy (and their Adam states) carry over from round to round; the
normaliser stays the SFT policy's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from lwd.algo.divl import value_support
from lwd.algo.recap import (
    expected_value,
    indicator_flow_loss,
    label_indicators,
    mc_value_loss,
    monte_carlo_advantage,
    monte_carlo_returns,
    n_step_advantage,
    task_thresholds,
)
from lwd.config import RecapConfig, to_dict
from lwd.data.replay import ReplayBuffer
from lwd.data.store import EpisodeStore
from lwd.nets.critic import ObservationEncoder, ValueNet
from lwd.nets.velocity import GOOD
from lwd.policy.checkpoint import load_policy, save_module_weights, save_policy
from lwd.policy.flow import TextEncoder, with_indicator
from lwd.types import Episode, Source

CONFIG_FILE = "recap_config.json"
VALUE_FILE = "recap_value.safetensors"
_ADVANTAGES = ("n_step", "monte_carlo")
_RELABEL_BATCH = 4096


def make_recap_config(**fields) -> RecapConfig:
    """A :class:`RecapConfig` from keyword fields, with a clear error for unknown ones."""
    known = {f.name for f in dataclasses.fields(RecapConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"unknown RECAP settings {unknown}; known: {sorted(known)}")
    cfg = RecapConfig(**fields)
    if cfg.advantage not in _ADVANTAGES:
        raise ValueError(
            f"RecapConfig.advantage must be one of {_ADVANTAGES}, got {cfg.advantage!r}"
        )
    if cfg.advantage_chunks < 1 or cfg.batch_size < 1:
        raise ValueError("RecapConfig.advantage_chunks and batch_size must be >= 1")
    if cfg.updates_per_round < 0 or cfg.value_updates_per_round < 0:
        raise ValueError("RecapConfig update counts must be >= 0")
    for name in ("good_fraction", "cfg_dropout"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"RecapConfig.{name} must be in [0, 1], got {getattr(cfg, name)}")
    return cfg


class RecapMethod:
    """RECAP: a Monte-Carlo value, a binarised advantage, indicator-conditioned flow BC.

    Args:
        init: an SFT policy checkpoint directory (``save_policy``); a plain policy gets a
            zero-initialised indicator embedding, so round 0 acts exactly as the SFT policy.
        offline_data: an :class:`~lwd.data.store.EpisodeStore` directory; all its episodes
            are training data.
        out: where ``round-N/`` checkpoints and ``recap_config.json`` go.
        encoder: instruction embedder (an ``InstructionEncoder``, or a test fake).
        seed: seeds the value net's initialisation, sampling and the update noise.
        updates_per_round: policy updates per :meth:`improve`.
        batch_size: samples per update.
        **cfg_overrides: any other :class:`~lwd.config.RecapConfig` field.
    """

    name = "recap"

    def __init__(
        self,
        init: Path,
        offline_data: Path,
        out: Path,
        encoder: TextEncoder,
        *,
        seed: int = 0,
        updates_per_round: int = 500,
        batch_size: int = 256,
        **cfg_overrides,
    ) -> None:
        cfg = make_recap_config(
            seed=seed, updates_per_round=updates_per_round, batch_size=batch_size, **cfg_overrides
        )
        self.cfg = cfg
        self.out = Path(out)
        self.round = 0
        self.last_metrics: dict[str, float] = {}
        self.policy = with_indicator(load_policy(init), guidance=cfg.guidance).train()
        pc = self.policy.cfg
        with torch.random.fork_rng():  # seed the initialisation without touching global RNG
            torch.manual_seed(seed)
            feats = pc.image_features if pc.use_images else 0
            obs = ObservationEncoder(pc.state_dim, pc.lang_dim, pc.lang_proj, feats, pc.image_size)
            self.value = ValueNet(obs, cfg.value_width, cfg.value_depth, cfg.num_atoms)
        self.support = value_support(cfg.num_atoms, cfg.v_min, cfg.v_max)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr)
        self.policy_opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.policy_lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

        n_step = cfg.advantage_chunks if cfg.advantage == "n_step" else 1
        self.replay = ReplayBuffer(pc.chunk, n_step, cfg.gamma, encoder)
        self._tasks: dict[str, int] = {}
        self._lengths: list[np.ndarray] = []  # per added batch of episodes, in buffer order
        self._returns: list[np.ndarray] = []
        self._task: list[np.ndarray] = []
        self._forced: list[np.ndarray] = []
        self._add(EpisodeStore(Path(offline_data)).read())
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / CONFIG_FILE).write_text(json.dumps(to_dict(cfg), indent=2))

    # -- the harness interface ---------------------------------------------------------------

    def start(self) -> Path:
        """Write and return the round-0 acting policy (the SFT start, made conditionable)."""
        return self._save(0, {})

    def observe(self, episodes: Sequence[Episode]) -> None:
        """Add new fleet episodes (ids already seen are skipped)."""
        self._add(episodes)

    def improve(self) -> Path:
        """One round: value on MC returns, relabel, conditioned flow BC; returns the new policy."""
        data = self._arrays()
        metrics = self._train_value(data)
        labels, label_info = self._relabel(data)
        metrics |= label_info
        metrics |= self._train_policy(data, labels)
        self.round += 1
        self.last_metrics = metrics
        return self._save(self.round, metrics)

    # -- data ----------------------------------------------------------------------------------

    def _add(self, episodes: Iterable[Episode]) -> None:
        episodes = list(episodes)
        by_id = {ep.episode_id: ep for ep in episodes}
        before = self.replay.num_episodes
        self.replay.add_episodes(episodes)
        new = [
            by_id[self.replay.episode_info(i).episode_id]
            for i in range(before, self.replay.num_episodes)
        ]
        if not new:
            return
        lengths = np.array([ep.num_steps for ep in new], dtype=np.int64)
        rewards = np.concatenate([ep.rewards for ep in new])
        sources = np.concatenate([ep.sources for ep in new])
        self._lengths.append(lengths)
        self._returns.append(monte_carlo_returns(rewards, lengths, self.cfg.gamma))
        ids = [self._tasks.setdefault(ep.task, len(self._tasks)) for ep in new]
        self._task.append(np.repeat(np.array(ids, dtype=np.int64), lengths))
        forced = sources == Source.INTERVENTION
        self._forced.append(forced if self.cfg.interventions_good else np.zeros_like(forced))

    def _arrays(self) -> dict[str, np.ndarray]:
        """Per-step arrays in the replay buffer's order, and each episode's first step."""
        if not self._lengths:
            raise ValueError(
                "RECAP has no data: the offline store is empty and no episodes were observed"
            )
        lengths = np.concatenate(self._lengths)
        return {
            "lengths": lengths,
            "starts": np.cumsum(lengths) - lengths,
            "returns": np.concatenate(self._returns),
            "task": np.concatenate(self._task),
            "forced": np.concatenate(self._forced),
        }

    def _sample(self, data: dict[str, np.ndarray]):
        """A uniform batch of steps: the :class:`Batch`, their flat indices and chunk masks."""
        episode, step = self.replay.sample_indices(self.cfg.batch_size, self.rng)
        batch = self.replay.batch_at(episode, step)
        flat = data["starts"][episode] + step
        valid = step[:, None] + np.arange(self.policy.cfg.chunk) < data["lengths"][episode, None]
        return batch, flat, torch.from_numpy(valid)

    # -- the three stages of a round -------------------------------------------------------

    def _step(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params) -> float:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        return float(norm)

    def _train_value(self, data: dict[str, np.ndarray]) -> dict[str, float]:
        norm, metrics = self.policy.normalizer, {}
        returns = torch.from_numpy(data["returns"])
        self.value.train()
        for _ in range(self.cfg.value_updates_per_round):
            batch, flat, _ = self._sample(data)
            logits = self.value(norm.normalize_state(batch.state), batch.lang, batch.image)
            loss, info = mc_value_loss(logits, returns[flat], self.support)
            grad = self._step(self.value_opt, loss, self.value.parameters())
            metrics = {k: float(v) for k, v in info.items()} | {"value/grad_norm": grad}
        return metrics

    @torch.no_grad()
    def _relabel(self, data: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        """Advantage and good/bad label of every stored step (in buffer order)."""
        norm, cfg = self.policy.normalizer, self.cfg
        episode = np.repeat(np.arange(len(data["lengths"])), data["lengths"])
        step = np.arange(len(episode)) - data["starts"][episode]
        self.value.eval()
        parts = []
        for lo in range(0, len(episode), _RELABEL_BATCH):
            b = self.replay.batch_at(
                episode[lo : lo + _RELABEL_BATCH], step[lo : lo + _RELABEL_BATCH]
            )
            v = expected_value(
                self.value(norm.normalize_state(b.state), b.lang, b.image), self.support
            )
            if cfg.advantage == "monte_carlo":
                adv = monte_carlo_advantage(data["returns"][lo : lo + len(v)], v.numpy())
            else:
                nxt = self.value(norm.normalize_state(b.next_state), b.lang, b.next_image)
                v_next = expected_value(nxt, self.support).numpy()
                adv = n_step_advantage(b.reward.numpy(), b.discount.numpy(), v_next, v.numpy())
            parts.append(adv)
        self.value.train()
        advantage = np.concatenate(parts)
        eps = task_thresholds(advantage, data["task"], data["forced"], cfg.good_fraction)
        labels = label_indicators(advantage, data["task"], eps, data["forced"])
        info = {
            "recap/advantage_mean": float(advantage.mean()),
            "recap/advantage_std": float(advantage.std()),
            "recap/labelled_good": float((labels == GOOD).mean()),
            "recap/forced_good": float(data["forced"].mean()),
        }
        for task, j in self._tasks.items():  # +inf: every step of the task is forced good
            info[f"recap/threshold/{task}"] = float(eps[j])
        return labels, info

    def _train_policy(self, data: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
        policy, metrics = self.policy, {}
        norm, params = policy.normalizer, list(policy.parameters())
        labels_t = torch.from_numpy(labels)
        policy.train()
        for _ in range(self.cfg.updates_per_round):
            batch, flat, valid = self._sample(data)
            loss, info = indicator_flow_loss(
                policy.field,
                norm.normalize_state(batch.state),
                batch.lang,
                norm.normalize_action(batch.actions),
                labels_t[flat],
                batch.image,
                valid,
                drop_prob=self.cfg.cfg_dropout,
                generator=self.generator,
            )
            grad = self._step(self.policy_opt, loss, params)
            metrics = {k: float(v) for k, v in info.items()} | {"bc/grad_norm": grad}
        return metrics

    # -- files -------------------------------------------------------------------------------

    def _save(self, round_: int, metrics: dict[str, float]) -> Path:
        directory = self.out / f"round-{round_}"
        extra = {
            "trainer": "recap",
            "round": round_,
            "transitions": len(self.replay),
            "episodes": self.replay.num_episodes,
            "recap": to_dict(self.cfg),
            "metrics": {k: v if np.isfinite(v) else None for k, v in metrics.items()},
        }
        save_policy(directory, self.policy, extra=extra)
        save_module_weights(directory / VALUE_FILE, self.value)
        return directory
