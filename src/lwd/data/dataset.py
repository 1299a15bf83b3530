"""In-memory chunk datasets for imitation learning, built from an episode store.

Every step ``t`` of every selected episode becomes one sample: the state ``s_t``, the action
chunk ``a_{t:t+H}`` (padded past the episode's end and masked), and the index of the episode's
instruction. Instructions are embedded once per distinct string, not once per sample.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lwd.data.store import EpisodeStore
from lwd.data.windows import chunk_windows
from lwd.types import Episode, Source


@dataclass(frozen=True)
class ChunkDataset:
    """Flat arrays of (state, chunk) samples.

    Attributes:
        states: ``(N, D)`` float32.
        chunks: ``(N, H, A)`` float32 executed actions.
        valid: ``(N, H)`` bool, False past an episode's end.
        instruction_ids: ``(N,)`` int32 index into ``instructions``.
        instructions: the distinct instruction strings.
        images: ``(N, h, w, 3)`` uint8 or None.
        num_episodes: episodes the samples came from.
    """

    states: np.ndarray
    chunks: np.ndarray
    valid: np.ndarray
    instruction_ids: np.ndarray
    instructions: tuple[str, ...]
    images: np.ndarray | None
    num_episodes: int

    def __len__(self) -> int:
        return int(self.states.shape[0])


def select_episodes(
    store: EpisodeStore, sources: Sequence[str], max_per_task: int = 0, success_only: bool = False
) -> list[Episode]:
    """Episodes whose steps all come from ``sources``, at most ``max_per_task`` per task."""
    wanted = {int(Source.parse(s)) for s in sources}
    per_task: dict[str, int] = defaultdict(int)
    chosen = []
    for ep in store.read(sources=sorted(wanted)):
        if not set(np.unique(ep.sources).tolist()) <= wanted:
            continue
        if success_only and not ep.success:
            continue
        if max_per_task and per_task[ep.task] >= max_per_task:
            continue
        per_task[ep.task] += 1
        chosen.append(ep)
    return chosen


def build_chunk_dataset(episodes: Sequence[Episode], horizon: int) -> ChunkDataset:
    """Flatten episodes into (state, chunk) samples; raises if there is nothing to learn from."""
    if not episodes:
        raise ValueError(
            "no episodes to train on; check the data directory and the source filter "
            "(SFT learns from demonstrations: generate them with `lwd data generate`)"
        )
    instructions: dict[str, int] = {}
    states, chunks, valid, ids, images = [], [], [], [], []
    with_images = all(ep.images is not None for ep in episodes)
    for ep in episodes:
        c, v = chunk_windows(ep.actions, horizon)
        states.append(ep.states[:-1])
        chunks.append(c)
        valid.append(v)
        idx = instructions.setdefault(ep.instruction, len(instructions))
        ids.append(np.full(ep.num_steps, idx, dtype=np.int32))
        if with_images:
            images.append(ep.images[:-1])
    return ChunkDataset(
        states=np.concatenate(states).astype(np.float32),
        chunks=np.concatenate(chunks).astype(np.float32),
        valid=np.concatenate(valid),
        instruction_ids=np.concatenate(ids),
        instructions=tuple(instructions),
        images=np.concatenate(images) if with_images else None,
        num_episodes=len(episodes),
    )
