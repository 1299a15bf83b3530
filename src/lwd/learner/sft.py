"""Supervised fine-tuning (flow-matching behaviour cloning) on demonstrations: the SFT start.

The SFT checkpoint becomes both the frozen reference flow and the initial fine-tuned flow of
the RL learner (ALGORITHMS.md §4). Training resumes from the last checkpoint in ``out``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lwd.algo.flow_bc import flow_matching_loss
from lwd.config import SFTConfig, refuse_other_config, to_dict
from lwd.data.dataset import build_chunk_dataset, select_episodes
from lwd.data.store import EpisodeStore
from lwd.policy.checkpoint import (
    CONFIG_FILE,
    TRAINER_FILE,
    load_policy,
    load_training_state,
    save_policy,
    save_training_state,
)
from lwd.policy.flow import FlowPolicy
from lwd.policy.instruction import InstructionEncoder
from lwd.policy.normalizer import Normalizer

SFT_CONFIG_FILE = "sft_config.json"

StepCallback = Callable[[int, int, dict], None]
"""``on_step(step, total_steps, metrics)``."""


def _cosine(step: int, total: int, floor: float = 0.1) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def train_sft(
    cfg: SFTConfig,
    data_dir: str | Path,
    out: str | Path,
    encoder: InstructionEncoder | None = None,
    on_step: StepCallback | None = None,
    known_tasks=None,
) -> dict:
    """Train (or resume training) an SFT policy; returns a summary dict.

    Args:
        cfg: SFT hyperparameters and the policy architecture.
        data_dir: an episode store written by ``lwd data generate`` (or a fleet server).
        out: checkpoint directory; if it holds an unfinished run with the same config, training
            resumes from it.
        encoder: instruction embedder (default: the shipped all-MiniLM-L6-v2).
        on_step: called after each update (progress display).
    """
    out = Path(out)
    data_dir = Path(data_dir)
    if not (data_dir / "index.sqlite").is_file():
        raise FileNotFoundError(
            f"{data_dir} is not an episode store (no index.sqlite); create one with "
            f"`lwd data generate --out {data_dir}`"
        )
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    store = EpisodeStore(data_dir, known_tasks=known_tasks)
    episodes = select_episodes(store, cfg.sources, cfg.max_demos_per_task)
    ds = build_chunk_dataset(episodes, cfg.policy.chunk)
    if ds.images is None and cfg.policy.use_images:
        raise ValueError("policy.use_images is set but the episodes carry no camera images")
    encoder = encoder or InstructionEncoder()
    lang_table = torch.from_numpy(encoder.encode(list(ds.instructions)))

    normalizer = Normalizer(cfg.policy.state_dim, cfg.policy.action_dim).fit(
        ds.states, ds.chunks[ds.valid]
    )
    policy = FlowPolicy(cfg.policy, normalizer)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = _maybe_resume(cfg, out, policy, optimizer, gen)
    out.mkdir(parents=True, exist_ok=True)
    (out / SFT_CONFIG_FILE).write_text(json.dumps(to_dict(cfg), indent=2))

    states = torch.from_numpy(normalizer.normalize_state(ds.states))
    chunks = torch.from_numpy(ds.chunks)
    valid = torch.from_numpy(ds.valid)
    ids = torch.from_numpy(ds.instruction_ids).long()
    images = None if ds.images is None else torch.from_numpy(ds.images)
    extra = dict(
        trainer="sft",
        episodes=ds.num_episodes,
        samples=len(ds),
        instructions=list(ds.instructions),
        data=str(data_dir.resolve()),
    )

    policy.train()
    t0, metrics = time.perf_counter(), {}
    for step in range(start, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * _cosine(step, cfg.steps)
        idx = torch.randint(len(ds), (cfg.batch_size,), generator=gen)
        loss, info = flow_matching_loss(
            policy.field,
            states[idx],
            lang_table[ids[idx]],
            chunks[idx],
            None if images is None else images[idx],
            valid[idx],
            generator=gen,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        metrics = {k: float(v) for k, v in info.items()} | {"bc/grad_norm": float(grad_norm)}
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_policy(out, policy, extra=extra | {"step": done})
            save_training_state(out, optimizer, done, generators={"sample": gen})
        if on_step is not None:
            on_step(done, cfg.steps, metrics)
    elapsed = time.perf_counter() - t0
    trained = cfg.steps - start
    return dict(
        steps=cfg.steps,
        resumed_from=start,
        episodes=ds.num_episodes,
        samples=len(ds),
        seconds=elapsed,
        samples_per_s=trained * cfg.batch_size / max(elapsed, 1e-9),
        final=metrics,
    )


def _maybe_resume(cfg, out: Path, policy, optimizer, gen) -> int:
    """Load weights and optimizer/RNG state from an earlier run in ``out``; returns its step."""
    if not (out / TRAINER_FILE).is_file() or not (out / CONFIG_FILE).is_file():
        return 0
    refuse_other_config(out / SFT_CONFIG_FILE, cfg, "an SFT run")
    saved_policy = load_policy(out)  # the checkpoint loader's checks apply to resumes too
    policy.load_state_dict(saved_policy.state_dict())
    policy.normalizer = saved_policy.normalizer
    state = load_training_state(out, optimizer, generators={"sample": gen})
    return state.step
