"""Replay for the RL learner: n-chunk transitions sampled from flat per-step arrays.

Episodes are stored once, concatenated, as per-step arrays (states keep all ``T+1`` rows per
episode, so every bootstrap state ``s_{t+nH}`` and the final state are at hand); windows are
gathered at sampling time, never precomputed, so memory stays at one copy of the data.
Instructions are embedded once per distinct string with a shared instruction encoder.

Usage loop (learner; ALGORITHMS.md §4)::

    encoder = InstructionEncoder()
    offline = ReplayBuffer.from_store(store, version, encoder=encoder, horizon=5, n_step=10,
                                      gamma=0.99)
    online = ReplayBuffer(horizon=5, n_step=1, gamma=0.99, encoder=encoder, online=True)
    replay = MixedReplay(offline, online, online_fraction=0.5)
    rng = np.random.default_rng(seed)
    while True:
        online.add_episodes(new_episodes)  # whenever a new snapshot arrives
        batch = replay.sample(256, rng, device="cuda")  # lwd.types.Batch
        agent.update(batch)

Sample semantics (``T`` steps in the episode, ``t`` uniform over every step ``0..T-1`` of every
episode, ``m = min(nH, T - t)``)::

    reward     = sum_{k < m} gamma^k r_{t+k}
    discount   = gamma^{nH} if t + nH < T else 0   (every episode end is terminal)
    next_state = s_{min(t + nH, T)}
    actions    = a_{t..t+H-1}, past the end the last action repeats (lwd.data.windows)

With ``takeover_as_failure`` an autonomous step's window also ends where the operator takes
over (the first intervention step after an autonomous one, at ``j``): ``m = min(nH, T - t,
j - t)`` and no bootstrap if ``j - t <= nH``, as if the policy's attempt had failed there.
[choice, not the paper's: see ``OnlineConfig.takeover_as_failure``.]

With ``cut_at_source_change`` a window also stops before the first step whose source differs
from step ``t``'s (the operator taking over or handing back, at ``c``) and bootstraps there:
``m = min(nH, T - t, c - t)``, ``discount = gamma^m`` if ``t + m < T``, ``next_state = s_{t+m}``.
So an n-chunk return never mixes the policy's actions with a human's, the paper's reason for
n = 1 online. [choice, not the paper's: see ``OnlineConfig.cut_at_source_change``.]
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lwd.data.store import EpisodeStore
from lwd.types import Batch, Episode, Source

if TYPE_CHECKING:
    from lwd.policy.flow import TextEncoder

_GROWTH = 1.5  # capacity factor when an array must grow: amortised O(1) per appended row


class _Column:
    """A numpy array that grows geometrically along axis 0; rows ``[0, len)`` are filled."""

    def __init__(self, row_shape: tuple[int, ...], dtype: np.dtype | type) -> None:
        self.data = np.empty((0, *row_shape), dtype=dtype)
        self.size = 0

    def reserve(self, extra: int) -> None:
        need = self.size + extra
        if need > self.data.shape[0]:
            rows = max(need, int(self.data.shape[0] * _GROWTH))
            grown = np.empty((rows, *self.data.shape[1:]), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown

    def extend(self, rows: np.ndarray) -> None:
        self.reserve(len(rows))
        self.data[self.size : self.size + len(rows)] = rows
        self.size += len(rows)

    @property
    def filled(self) -> np.ndarray:
        return self.data[: self.size]

    @property
    def nbytes(self) -> int:
        return self.filled.nbytes


@dataclass(frozen=True)
class EpisodeInfo:
    """What the buffer remembers about one stored episode besides its per-step arrays."""

    episode_id: str  #: the episode's id in the store
    robot_id: str  #: the robot that ran it
    task: str  #: task name
    instruction: str  #: natural-language instruction
    success: bool  #: the episode reached its goal
    num_steps: int  #: ``T``


class ReplayBuffer:
    """Episodes as flat per-step arrays; samples n-chunk transitions as :class:`Batch`.

    Args:
        horizon: ``H >= 1``, the action-chunk length.
        n_step: ``n >= 1``, chunks in the TD backup (``n * H`` control steps); 10 offline on
            long tasks, 1 online (ALGORITHMS.md §2 step 4).
        gamma: per-control-step discount in ``[0, 1]``.
        encoder: embeds instructions, ``encode(list[str]) -> (N, L) float32``; share one
            encoder between buffers that are mixed.
        online: the value of ``Batch.online`` for every sample of this buffer.
        takeover_as_failure: end an autonomous step's return at the operator's next takeover,
            with no bootstrap (see the module docstring).

    Episodes with the same ``episode_id`` as a stored one are skipped, so adding overlapping
    snapshots never counts an episode twice.
    """

    def __init__(
        self,
        horizon: int,
        n_step: int,
        gamma: float,
        encoder: TextEncoder,
        *,
        online: bool = False,
        takeover_as_failure: bool = False,
        cut_at_source_change: bool = False,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon (chunk length H) must be >= 1, got {horizon}")
        if n_step < 1:
            raise ValueError(f"n_step must be >= 1 (1 = one-chunk TD), got {n_step}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma is a per-step discount and must be in [0, 1], got {gamma}")
        if not callable(getattr(encoder, "encode", None)):
            raise TypeError(
                f"encoder must have encode(list[str]) -> (N, L) float32, got "
                f"{type(encoder).__name__}; pass an lwd.policy.instruction.InstructionEncoder"
            )
        self.horizon = int(horizon)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.encoder = encoder
        self.online = bool(online)
        self.takeover_as_failure = bool(takeover_as_failure)
        self.cut_at_source_change = bool(cut_at_source_change)
        span = self.n_step * self.horizon
        self._span = span
        self._powers = self.gamma ** np.arange(span, dtype=np.float64)  # (nH,)
        self._discounts = (self.gamma ** np.arange(span + 1)).astype(np.float32)  # gamma^m
        self._states: _Column | None = None  # created by the first episode (dims unknown now)
        self._actions: _Column | None = None
        self._images: _Column | None = None
        self._image_shape: tuple[int, ...] | None = None
        self._rewards = _Column((), np.float32)
        self._sources = _Column((), np.uint8)
        self._versions = _Column((), np.int32)
        self._step_episode = _Column((), np.int32)
        self._to_takeover = _Column((), np.int32)  # steps to the operator's next takeover
        self._ep_start = _Column((), np.int64)  # first step (action row) of each episode
        self._ep_len = _Column((), np.int32)
        self._ep_instruction = _Column((), np.int32)
        self._ep_success = _Column((), np.bool_)
        self._lang: _Column | None = None
        self._instructions: dict[str, int] = {}
        self._meta: list[tuple[str, str, str]] = []  # (episode_id, robot_id, task)
        self._ids: set[str] = set()
        self._source_steps = np.zeros(len(Source), dtype=np.int64)

    @classmethod
    def from_store(
        cls,
        store: EpisodeStore,
        version: int | None = None,
        *,
        encoder: TextEncoder,
        horizon: int,
        n_step: int,
        gamma: float,
        online: bool = False,
        tasks: str | Collection[str] | None = None,
        sources: Collection[Source | int | str] | None = None,
        success: bool | None = None,
        robots: str | Collection[str] | None = None,
    ) -> ReplayBuffer:
        """A buffer holding a store snapshot's episodes (filters as in ``EpisodeStore.read``).

        The episodes are read into memory first, then copied into arrays sized exactly.
        """
        buffer = cls(horizon, n_step, gamma, encoder, online=online)
        episodes = store.read(version, tasks=tasks, sources=sources, success=success, robots=robots)
        buffer.add_episodes(episodes)
        return buffer

    # -- adding ------------------------------------------------------------------------------

    def add_episodes(self, episodes: Iterable[Episode]) -> int:
        """Append episodes; amortised O(new data). Returns how many were added.

        Episodes with zero steps, or whose id is already stored, are skipped. Either every
        episode is added or (on an error) none is.

        Raises:
            ValueError: an episode's state or action width differs from the buffer's, its
                arrays disagree on ``T``, or some episodes have images and others do not.
        """
        new: list[Episode] = []
        seen: set[str] = set()
        for ep in episodes:
            if ep.num_steps > 0 and ep.episode_id not in self._ids and ep.episode_id not in seen:
                new.append(ep)
                seen.add(ep.episode_id)
        if not new:
            return 0
        self._check_shapes(new)
        self._embed([ep.instruction for ep in new])

        steps = sum(ep.num_steps for ep in new)
        if self._states is None:
            first = new[0]
            self._states = _Column(first.states.shape[1:], np.float32)
            self._actions = _Column(first.actions.shape[1:], np.float32)
            if first.images is not None:
                self._image_shape = tuple(first.images.shape[1:])
                self._images = _Column(self._image_shape, np.uint8)
        per_step = [self._actions, self._rewards, self._sources, self._versions, self._step_episode]
        per_step.append(self._to_takeover)
        for column in per_step:
            column.reserve(steps)
        for column in [self._states] + ([self._images] if self._images is not None else []):
            column.reserve(steps + len(new))
        for column in (self._ep_start, self._ep_len, self._ep_instruction, self._ep_success):
            column.reserve(len(new))

        first_index = self.num_episodes
        lengths = np.array([ep.num_steps for ep in new], dtype=np.int64)
        self._ep_start.extend(self._actions.size + np.cumsum(lengths) - lengths)
        self._ep_len.extend(lengths)
        self._ep_instruction.extend(np.array([self._instructions[ep.instruction] for ep in new]))
        self._ep_success.extend(np.array([bool(ep.success) for ep in new]))
        for offset, ep in enumerate(new):
            self._states.extend(ep.states)
            self._actions.extend(ep.actions)
            self._rewards.extend(ep.rewards)
            self._sources.extend(ep.sources)
            self._versions.extend(ep.policy_versions)
            self._step_episode.extend(np.full(ep.num_steps, first_index + offset, np.int32))
            self._to_takeover.extend(steps_to_takeover(ep.sources))
            if self._images is not None:
                self._images.extend(ep.images)
            self._source_steps += np.bincount(ep.sources, minlength=len(Source))
            self._meta.append((ep.episode_id, ep.robot_id, ep.task))
            self._ids.add(ep.episode_id)
        return len(new)

    def _check_shapes(self, episodes: list[Episode]) -> None:
        """Raise unless every episode fits this buffer (the first one sets the shapes)."""
        if self._states is None:
            ref = episodes[0]
            state_row, action_row = ref.states.shape[1:], ref.actions.shape[1:]
            frame = None if ref.images is None else tuple(ref.images.shape[1:])
        else:
            state_row, action_row = self._states.data.shape[1:], self._actions.data.shape[1:]
            frame = self._image_shape
        for ep in episodes:
            name, t = ep.episode_id, ep.num_steps
            if ep.states.shape[1:] != state_row or ep.actions.shape[1:] != action_row:
                raise ValueError(
                    f"episode {name} has states {ep.states.shape} and actions "
                    f"{ep.actions.shape}, but this buffer holds state rows of shape {state_row} "
                    f"and action rows of shape {action_row}; keep one embodiment per buffer"
                )
            for field, array, rows in (
                ("states", ep.states, t + 1),
                ("rewards", ep.rewards, t),
                ("sources", ep.sources, t),
                ("policy_versions", ep.policy_versions, t),
            ):
                if array.shape[0] != rows:
                    raise ValueError(
                        f"episode {name} has {t} actions but {array.shape[0]} {field} rows; "
                        f"expected {rows} (validate episodes with lwd.data.validate_episode)"
                    )
            if int(ep.sources.max()) >= len(Source):
                raise ValueError(
                    f"episode {name} has source value {int(ep.sources.max())}; expected one "
                    f"of {[int(s) for s in Source]} (lwd.types.Source)"
                )
            if (ep.images is None) != (frame is None):
                has, holds = ("has", "without") if frame is None else ("has no", "with")
                raise ValueError(
                    f"episode {name} {has} images, but this buffer holds episodes {holds} "
                    "images; images must be in all episodes of a buffer or in none "
                    "(filter the episodes, or use separate buffers)"
                )
            if frame is not None and ep.images.shape != (t + 1, *frame):
                raise ValueError(
                    f"episode {name} has images {ep.images.shape}; expected "
                    f"{(t + 1, *frame)} (T+1 frames of the buffer's frame shape)"
                )

    def _embed(self, instructions: list[str]) -> None:
        missing = list(dict.fromkeys(s for s in instructions if s not in self._instructions))
        if not missing:
            return
        emb = np.asarray(self.encoder.encode(missing), dtype=np.float32)
        width = None if self._lang is None else self._lang.data.shape[1]
        if emb.ndim != 2 or emb.shape[0] != len(missing) or (width and emb.shape[1] != width):
            want = f"({len(missing)}, {width or 'L'})"
            raise ValueError(
                f"the instruction encoder returned shape {emb.shape} for {len(missing)} "
                f"instructions; expected {want} float32 (one row per instruction, the same "
                "width for every call)"
            )
        if self._lang is None:
            self._lang = _Column(emb.shape[1:], np.float32)
        self._lang.extend(emb)
        for text in missing:
            self._instructions[text] = len(self._instructions)

    # -- sampling ----------------------------------------------------------------------------

    def sample(
        self, batch_size: int, generator: np.random.Generator, device: str | torch.device = "cpu"
    ) -> Batch:
        """``batch_size`` transitions, start steps uniform over all stored steps.

        Args:
            batch_size: ``B >= 1``.
            generator: the only source of randomness (seed it once at the entry point).
            device: where the tensors go.

        Returns:
            A :class:`Batch` with ``B`` samples (see the module docstring for the fields).
        """
        return _to_batch(self._sample_arrays(batch_size, generator), device)

    def sample_indices(
        self, batch_size: int, generator: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``(episode, step)`` pairs that :meth:`sample` would draw, each ``(B,)`` int64."""
        flat = self._draw(batch_size, generator)
        episode = self._step_episode.data[flat].astype(np.int64)
        return episode, flat - self._ep_start.data[episode]

    def batch_at(
        self,
        episode: Sequence[int] | np.ndarray,
        step: Sequence[int] | np.ndarray,
        device: str | torch.device = "cpu",
    ) -> Batch:
        """The transitions starting at ``step[b]`` of episode ``episode[b]`` (both ``(B,)``).

        Raises:
            IndexError: an episode index or step is out of range.
        """
        episode = np.asarray(episode, dtype=np.int64).reshape(-1)
        step = np.asarray(step, dtype=np.int64).reshape(-1)
        if episode.shape != step.shape:
            raise ValueError(f"episode {episode.shape} and step {step.shape} must match")
        if episode.size and (episode.min() < 0 or episode.max() >= self.num_episodes):
            raise IndexError(
                f"episode indices must be in [0, {self.num_episodes}), got {episode.tolist()}"
            )
        lengths = self._ep_len.data[episode]
        bad = (step < 0) | (step >= lengths)
        if bad.any():
            b = int(np.argmax(bad))
            raise IndexError(
                f"step {int(step[b])} is outside episode {int(episode[b])}, which has "
                f"{int(lengths[b])} steps (valid start steps: 0..{int(lengths[b]) - 1})"
            )
        return _to_batch(self._gather(self._ep_start.data[episode] + step), device)

    def _draw(self, batch_size: int, generator: np.random.Generator) -> np.ndarray:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(self) == 0:
            raise ValueError("the replay buffer is empty; add episodes before sampling")
        return generator.integers(0, len(self), size=batch_size, dtype=np.int64)

    def _sample_arrays(self, batch_size: int, generator: np.random.Generator) -> dict:
        return self._gather(self._draw(batch_size, generator))

    def _gather(self, flat: np.ndarray) -> dict[str, np.ndarray | None]:
        """Numpy fields of :class:`Batch` for flat step indices ``(B,)`` int64."""
        episode = self._step_episode.data[flat].astype(np.int64)  # (B,)
        start = self._ep_start.data[episode]
        step = flat - start
        left = self._ep_len.data[episode].astype(np.int64) - step  # steps from t to the end, >= 1
        chunk_left = left
        if self.takeover_as_failure:  # the attempt "ends" at the takeover (autonomous steps only)
            left = np.minimum(left, self._to_takeover.data[flat].astype(np.int64))
        # Each episode has one more state row than actions: its states start at start + episode.
        state_row = flat + episode
        chunk = flat[:, None] + np.minimum(np.arange(self.horizon), chunk_left[:, None] - 1)
        k = np.arange(self._span)  # (nH,)
        stop = np.full(flat.shape, self._span)  # (B,) where the backup bootstraps
        if self.cut_at_source_change:
            seen = self._sources.data[flat[:, None] + np.minimum(k, chunk_left[:, None] - 1)]
            change = seen != self._sources.data[flat][:, None]  # (B, nH); column 0 is False
            stop = np.where(change.any(axis=1), change.argmax(axis=1), stop)
        ahead = np.minimum(stop, left)  # (B,) rows from s_t to the bootstrap (or final) state
        window = flat[:, None] + np.minimum(k, ahead[:, None] - 1)  # (B, nH)
        weights = np.where(k < ahead[:, None], self._powers, 0.0)  # (B, nH)
        reward = (self._rewards.data[window] * weights).sum(axis=1).astype(np.float32)
        out = {
            "state": self._states.data[state_row],
            "lang": self._lang.data[self._ep_instruction.data[episode]],
            "actions": self._actions.data[chunk],
            "reward": reward,
            "discount": np.where(left > stop, self._discounts[stop], np.float32(0.0)),
            "next_state": self._states.data[state_row + ahead],
            "source": self._sources.data[flat].astype(np.int64),
            "policy_version": self._versions.data[flat].astype(np.int64),
            "episode": episode,
            "step": step,
            "online": np.full(flat.shape, self.online),
            "image": None,
            "next_image": None,
        }
        if self._images is not None:
            out["image"] = self._images.data[state_row]
            out["next_image"] = self._images.data[state_row + ahead]
        return out

    # -- inspection --------------------------------------------------------------------------

    def __len__(self) -> int:
        """Transitions: every step of every episode is a valid start step."""
        return self._rewards.size

    @property
    def num_episodes(self) -> int:
        return self._ep_len.size

    @property
    def state_dim(self) -> int | None:
        """``D``, or None before the first episode."""
        return None if self._states is None else int(self._states.data.shape[1])

    @property
    def action_dim(self) -> int | None:
        """``A``, or None before the first episode."""
        return None if self._actions is None else int(self._actions.data.shape[1])

    @property
    def lang_dim(self) -> int | None:
        """``L``, the instruction embedding width, or None before the first episode."""
        return None if self._lang is None else int(self._lang.data.shape[1])

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """``(h, w, 3)`` when the buffer stores frames, else None."""
        return self._image_shape

    @property
    def instructions(self) -> tuple[str, ...]:
        """The distinct instructions, in the order of their embedding rows."""
        return tuple(self._instructions)

    def episode_info(self, index: int) -> EpisodeInfo:
        """Metadata of the stored episode ``index`` (as in ``Batch.episode``)."""
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode index must be in [0, {self.num_episodes}), got {index}")
        episode_id, robot_id, task = self._meta[index]
        return EpisodeInfo(
            episode_id=episode_id,
            robot_id=robot_id,
            task=task,
            instruction=self.instructions[int(self._ep_instruction.data[index])],
            success=bool(self._ep_success.data[index]),
            num_steps=int(self._ep_len.data[index]),
        )

    def _columns(self) -> list[_Column]:
        columns = [self._states, self._actions, self._images, self._lang]
        columns += [self._rewards, self._sources, self._versions, self._step_episode]
        columns.append(self._to_takeover)
        columns += [self._ep_start, self._ep_len, self._ep_instruction, self._ep_success]
        return [c for c in columns if c is not None]

    @property
    def nbytes(self) -> int:
        """Bytes of the stored arrays (filled rows; Python-side metadata strings excluded)."""
        return sum(c.nbytes for c in self._columns())

    @property
    def allocated_nbytes(self) -> int:
        """Bytes held, including spare capacity kept for amortised growth."""
        return sum(c.data.nbytes for c in self._columns())

    def summary(self) -> dict:
        """Counts for logs, as JSON-friendly values.

        Returns:
            ``{"transitions", "episodes", "instructions", "source_steps": {name: steps},
            "success_rate" (None when empty), "online", "horizon", "n_step", "gamma",
            "nbytes"}``.
        """
        episodes = self.num_episodes
        return {
            "transitions": len(self),
            "episodes": episodes,
            "instructions": len(self._instructions),
            "source_steps": {s.name.lower(): int(self._source_steps[s]) for s in Source},
            "success_rate": float(self._ep_success.filled.mean()) if episodes else None,
            "online": self.online,
            "horizon": self.horizon,
            "n_step": self.n_step,
            "gamma": self.gamma,
            "nbytes": self.nbytes,
        }


_NO_TAKEOVER = np.iinfo(np.int32).max


def steps_to_takeover(sources: np.ndarray) -> np.ndarray:
    """``(T,)`` int32: for an autonomous step ``t``, ``j - t`` with ``j`` the first takeover after
    ``t`` (an intervention step right after an autonomous one); otherwise a huge number.

    Example: sources ``[A, A, I, I, A, D]`` -> ``[2, 1, big, big, big, big]``.
    """
    sources = np.asarray(sources)
    n = len(sources)
    out = np.full(n, _NO_TAKEOVER, dtype=np.int64)
    auto = sources == Source.AUTONOMOUS
    takeover = np.zeros(n, dtype=bool)
    takeover[1:] = (sources[1:] == Source.INTERVENTION) & auto[:-1]
    starts = np.flatnonzero(takeover)
    k = np.searchsorted(starts, np.arange(n))  # the first takeover at or after t
    has = auto & (k < len(starts))
    out[has] = starts[k[has]] - np.flatnonzero(has)
    return out.astype(np.int32)


def _to_batch(arrays: dict[str, np.ndarray | None], device: str | torch.device) -> Batch:
    def tensor(x: np.ndarray | None) -> torch.Tensor | None:
        return None if x is None else torch.from_numpy(np.ascontiguousarray(x)).to(device)

    return Batch(**{name: tensor(x) for name, x in arrays.items()})


class MixedReplay:
    """Batches with an exact share of online samples (ALGORITHMS.md §4: 1:1 offline/online).

    Every batch takes exactly ``round(batch_size * online_fraction)`` samples (Python's
    ``round``: halves go to the even number) from ``online`` and the rest from ``offline``,
    offline samples first. While ``online`` is empty the whole batch is offline;
    :attr:`last_online_count` tells how many online samples the latest batch has.

    The buffers may differ in ``n_step`` and ``gamma`` (reward and discount are per sample) but
    must agree on the chunk length, state and action widths, instruction embedding width and
    whether they store images.

    Args:
        offline: the offline buffer (built with ``online=False``).
        online: the fleet's buffer (built with ``online=True``).
        online_fraction: in ``[0, 1]``.
    """

    def __init__(self, offline: ReplayBuffer, online: ReplayBuffer, online_fraction: float) -> None:
        if not 0.0 <= online_fraction <= 1.0:
            raise ValueError(f"online_fraction must be in [0, 1], got {online_fraction}")
        if offline.online or not online.online:
            raise ValueError(
                f"MixedReplay got an offline buffer with online={offline.online} and an online "
                f"buffer with online={online.online}; build them with online=False and "
                "online=True so that Batch.online tells the samples apart"
            )
        if offline.horizon != online.horizon:
            raise ValueError(
                f"the offline buffer has chunk length H={offline.horizon} and the online one "
                f"H={online.horizon}; both must use the policy's chunk length"
            )
        self.offline = offline
        self.online = online
        self.online_fraction = float(online_fraction)
        self.last_online_count = 0

    def sample(
        self, batch_size: int, generator: np.random.Generator, device: str | torch.device = "cpu"
    ) -> Batch:
        """``batch_size`` transitions: offline samples, then online samples.

        Raises:
            ValueError: the offline buffer is empty but offline samples are needed, or the two
                buffers hold incompatible data.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n_online = round(batch_size * self.online_fraction) if len(self.online) else 0
        n_offline = batch_size - n_online
        if n_offline and not len(self.offline):
            raise ValueError(
                f"the offline buffer is empty but {n_offline} of {batch_size} samples must "
                "come from it; fill it (ReplayBuffer.from_store) before sampling"
            )
        if n_offline and n_online:
            self._check_compatible()
        parts = []
        if n_offline:
            parts.append(self.offline._sample_arrays(n_offline, generator))
        if n_online:
            parts.append(self.online._sample_arrays(n_online, generator))
        merged = {
            name: None if parts[0][name] is None else np.concatenate([p[name] for p in parts])
            for name in parts[0]
        }
        self.last_online_count = n_online
        return _to_batch(merged, device)

    def _check_compatible(self) -> None:
        off, on = self.offline, self.online
        for what, a, b in (
            ("state width", off.state_dim, on.state_dim),
            ("action width", off.action_dim, on.action_dim),
            ("instruction embedding width", off.lang_dim, on.lang_dim),
            ("image shape", off.image_shape, on.image_shape),
        ):
            if a != b:
                hint = (
                    "store images in both buffers or in neither"
                    if what == "image shape"
                    else "use one embodiment and one shared instruction encoder"
                )
                raise ValueError(
                    f"cannot mix buffers: the offline {what} is {a} but the online one is {b}; "
                    + hint
                )
