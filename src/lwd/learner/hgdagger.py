"""HG-DAgger (ALGORITHMS.md §5): aggregate the operator's corrections into the BC data, retrain.

Usage loop (one round of :func:`lwd.learner.fleet_online.run_fleet_online`)::

    method = HGDaggerMethod(sft_dir, offline_data, out, encoder, updates_per_round=300)
    policy = method.start()           # the SFT policy, unchanged
    method.observe(fleet_episodes)    # keep the windows below
    policy = method.improve()         # flow BC on demos + everything kept, from current weights

What a fleet episode adds to the BC data (:func:`aggregation_windows`):

- every step the operator controlled (``Source.INTERVENTION``), as an action-chunk window that
  stops where its intervention segment stops: the positions after the hand-back are the
  policy's actions, not the expert's, so they are masked like positions past an episode's end;
- every step of a successful episode that ran with no intervention at all (the robot's own
  success is a demonstration);
- nothing else: failed autonomous steps, the autonomous steps of an episode that needed rescuing
  (the operator judged them not good enough) [choice], and play.

The demonstrations are the SFT run's own (its ``sft_config.json`` names the sources and the
per-task cap), the normalizer stays the SFT's, and training continues from the current weights
with one Adam optimizer for the whole run (batches uniform over demos and aggregate).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lwd.algo.flow_bc import flow_matching_loss
from lwd.config import SFTConfig, from_dict
from lwd.data.dataset import select_episodes
from lwd.data.store import EpisodeStore
from lwd.data.windows import chunk_windows
from lwd.learner.sft import SFT_CONFIG_FILE
from lwd.policy.checkpoint import load_policy, save_policy
from lwd.policy.flow import TextEncoder
from lwd.types import Episode, Source


def aggregation_windows(ep: Episode, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """Which steps of ``ep`` HG-DAgger learns from, and the valid positions of their chunks.

    Args:
        ep: a fleet (or demo) episode with ``T`` steps.
        horizon: ``H``, the policy's chunk length.

    Returns:
        ``steps``: ``(M,)`` int64 start steps kept, ascending;
        ``valid``: ``(M, H)`` bool, position ``h`` of the window at ``t`` is a target iff
        ``t + h < T`` and step ``t + h`` belongs to the same kept segment as ``t``.

    Example (``H = 3``; A autonomous, I intervention; a failed episode)::

        sources = [A, A, I, I, A]   ->  steps = [2, 3]
                                        valid = [[T, T, F], [T, F, F]]
    """
    sources = np.asarray(ep.sources)
    t_len = len(sources)
    if Source.PLAY in sources:
        keep = np.zeros(t_len, dtype=bool)  # exploration, never a target
    elif ep.success and Source.INTERVENTION not in sources:
        keep = np.ones(t_len, dtype=bool)  # a clean success (or a demo): the whole episode
    else:
        keep = (sources == Source.INTERVENTION) | (sources == Source.DEMO)
    # A segment is a maximal run of kept steps with one source; a window must not leave it.
    change = np.ones(t_len, dtype=bool)
    change[1:] = (sources[1:] != sources[:-1]) | (keep[1:] != keep[:-1])
    segment = np.cumsum(change)
    _, valid = chunk_windows(np.zeros((t_len, 1)), horizon)
    raw = np.arange(t_len)[:, None] + np.arange(horizon)[None, :]
    same = segment[np.minimum(raw, max(t_len - 1, 0))] == segment[:, None]
    steps = np.flatnonzero(keep)
    return steps, (valid & same)[steps]


class HGDaggerMethod:
    """HG-DAgger as an :class:`~lwd.learner.fleet_online.OnlineMethod`.

    Args:
        init: the SFT policy checkpoint (start, normalizer, and which demos it learnt from).
        offline_data: the episode store holding the SFT demonstrations.
        out: directory for the published policies (``out/policies/vNNNN``).
        encoder: instruction embedder (the policy's ``lang_dim``).
        seed: seeds batch sampling and the flow-matching noise.
        updates_per_round: flow BC updates per ``improve``.
        batch_size: samples per update.
        lr: Adam learning rate, constant (below SFT's 3e-4 start: this continues a trained
            policy) [choice].
        max_demos_per_task: override the SFT run's per-task demo cap (None: the SFT run's).
    """

    name = "hgdagger"

    def __init__(
        self,
        init: str | Path,
        offline_data: str | Path,
        out: str | Path,
        encoder: TextEncoder,
        *,
        seed: int = 0,
        updates_per_round: int = 300,
        batch_size: int = 256,
        lr: float = 1e-4,
        max_demos_per_task: int | None = None,
    ) -> None:
        self.init, self.out = Path(init), Path(out)
        self.encoder = encoder
        self.updates_per_round, self.batch_size = int(updates_per_round), int(batch_size)
        self.policy = load_policy(self.init)
        if self.policy.cfg.use_images:
            raise ValueError(f"{init} is an image policy; HGDaggerMethod trains state policies")
        self.horizon = self.policy.cfg.chunk
        sft = self._sft_config()
        cap = sft.max_demos_per_task if max_demos_per_task is None else max_demos_per_task
        demos = select_episodes(EpisodeStore(offline_data), sft.sources, cap)
        if not demos:
            raise ValueError(f"{offline_data} holds no episodes of sources {sft.sources}")
        self._states: list[np.ndarray] = []
        self._chunks: list[np.ndarray] = []
        self._valid: list[np.ndarray] = []
        self._instructions: list[str] = []  # one per sample; embedded once per string later
        for ep in demos:
            self._add(ep, np.arange(ep.num_steps), chunk_windows(ep.actions, self.horizon)[1])
        self.demo_samples = self.num_samples
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.version = 0
        self.updates = 0

    def _sft_config(self) -> SFTConfig:
        path = self.init / SFT_CONFIG_FILE
        if path.is_file():
            return from_dict(SFTConfig, json.loads(path.read_text()))
        return SFTConfig()  # a policy from elsewhere: all demos

    @property
    def num_samples(self) -> int:
        return sum(len(s) for s in self._states)

    def _add(self, ep: Episode, steps: np.ndarray, valid: np.ndarray) -> None:
        if len(steps) == 0:
            return
        chunks, _ = chunk_windows(ep.actions, self.horizon)
        self._states.append(ep.states[steps])
        self._chunks.append(chunks[steps])
        self._valid.append(valid)
        self._instructions.extend([ep.instruction] * len(steps))

    # ------------------------------------------------------------------- OnlineMethod
    def start(self) -> Path:
        return self._publish()

    def observe(self, episodes: Sequence[Episode]) -> None:
        for ep in episodes:
            self._add(ep, *aggregation_windows(ep, self.horizon))

    def improve(self) -> Path:
        norm = self.policy.normalizer
        states = torch.from_numpy(norm.normalize_state(np.concatenate(self._states)))
        chunks = norm.normalize_action(torch.from_numpy(np.concatenate(self._chunks)))
        valid = torch.from_numpy(np.concatenate(self._valid))
        texts = list(dict.fromkeys(self._instructions))
        table = torch.from_numpy(np.asarray(self.encoder.encode(texts), dtype=np.float32))
        index = {t: i for i, t in enumerate(texts)}
        lang_ids = torch.tensor([index[t] for t in self._instructions])
        self.policy.train()
        for _ in range(self.updates_per_round):
            idx = torch.from_numpy(self.rng.integers(len(states), size=self.batch_size))
            loss, _ = flow_matching_loss(
                self.policy.field,
                states[idx],
                table[lang_ids[idx]],
                chunks[idx],
                None,
                valid[idx],
                generator=self.generator,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), 1.0)
            self.optimizer.step()
            self.updates += 1
        return self._publish()

    def _publish(self) -> Path:
        self.version += 1
        path = self.out / "policies" / f"v{self.version:04d}"
        extra = dict(
            trainer="hgdagger",
            init=str(self.init.resolve()),
            version=self.version,
            updates=self.updates,
            samples=self.num_samples,
            demo_samples=self.demo_samples,
        )
        save_policy(path, self.policy, extra=extra)
        return path
