"""Spool: a robot's store-and-forward queue of finished episodes, all on local disk.

An episode is written to disk (atomically, one Parquet file) before any upload is tried, and its
file is removed only after the server acknowledged it (2xx). An episode the server refuses
(4xx) is moved aside to ``rejected/`` with the server's message beside it, never retried.
Everything lives in files, so a robot that crashes or loses power carries on where it stopped
(at-least-once delivery; the server deduplicates a repeated upload).

Layout::

    dir/
      pending/<created_ns>-<episode_id>.parquet    waiting for the server, oldest first
      rejected/<same name>.parquet                 refused by the server (or unreadable)
      rejected/<same name>.error.txt               why
      events.jsonl                                 one JSON object per line (see :meth:`log`)

Usage loop::

    spool = Spool("runs/robot-3/spool")
    spool.put(episode)  # right after the episode ends
    result = spool.drain(client)  # uploads oldest first; stops at the first transient failure
    if result.error:
        ...  # server unreachable: keep acting, drain again after the next episode
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lwd.data.parquet_codec import EpisodeFileError, read_episode, write_episode
from lwd.fleet.client import Backoff, RejectedError, TransientError
from lwd.types import Episode

_SUFFIX = ".parquet"
_ERROR_SUFFIX = ".error.txt"
_STALE_TMP_S = 600.0  # a temporary file this old is no write in progress


class EpisodeUploader(Protocol):
    """What :meth:`Spool.drain` needs: a :class:`~lwd.fleet.client.FleetClient`, or a fake."""

    def upload_episode(self, ep: Episode) -> dict: ...


@dataclass(frozen=True)
class DrainResult:
    """What one :meth:`Spool.drain` did."""

    uploaded: int  #: episodes acknowledged (and removed from the spool)
    duplicates: int  #: of those, how many the server already had
    rejected: int  #: episodes moved to ``rejected/`` (server 4xx, or unreadable file)
    pending: int  #: episodes still waiting afterwards
    error: str | None = None  #: the transient failure that stopped the drain, if any


class Spool:
    """Finished episodes waiting for the fleet server, under ``directory``.

    Args:
        directory: created if missing; a spool reopened on the same directory sees
            everything the previous one left.
        clock: unix seconds, for file names and the event log (injectable for tests).
    """

    def __init__(self, directory: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.dir = Path(directory)
        self.pending_dir = self.dir / "pending"
        self.rejected_dir = self.dir / "rejected"
        self.log_path = self.dir / "events.jsonl"
        self._clock = clock
        self._log_lock = threading.Lock()  # a robot's prefetch thread logs too
        self.pending_dir.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(exist_ok=True)
        # A write cut short by a crash leaves a hidden temporary file. Only old ones go: a
        # young one may be a live robot's write in progress (someone inspecting its spool).
        cutoff = time.time() - _STALE_TMP_S
        for stale in self.pending_dir.glob(".*.tmp"):
            try:
                if stale.stat().st_mtime < cutoff:
                    stale.unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    # ---------------------------------------------------------------------------- queue
    def put(self, ep: Episode) -> Path:
        """Write ``ep`` to disk (atomic, fsynced) and queue it; returns its file."""
        name = f"{int(self._clock() * 1e9):020d}-{ep.episode_id}{_SUFFIX}"
        return write_episode(ep, self.pending_dir / name)

    def pending(self) -> list[Path]:
        """Files waiting for the server, oldest first."""
        return sorted(p for p in self.pending_dir.glob(f"*{_SUFFIX}") if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self.pending())

    def rejected(self) -> list[Path]:
        """Files the server refused, oldest first (each with ``.error.txt`` beside it)."""
        return sorted(self.rejected_dir.glob(f"*{_SUFFIX}"))

    @staticmethod
    def rejection_reason(path: Path) -> str:
        """The message stored beside a rejected episode file."""
        return path.with_name(path.name.removesuffix(_SUFFIX) + _ERROR_SUFFIX).read_text()

    def read(self, path: Path) -> Episode:
        """The episode in a spooled file (raises ``EpisodeFileError`` if it is corrupt)."""
        return read_episode(path)

    def ack(self, path: Path) -> None:
        """The server has the episode: forget it."""
        path.unlink(missing_ok=True)

    def reject(self, path: Path, message: str) -> Path:
        """Move a file aside for a person to look at, with ``message`` beside it."""
        error = self.rejected_dir / (path.name.removesuffix(_SUFFIX) + _ERROR_SUFFIX)
        error.write_text(message.rstrip() + "\n")
        target = self.rejected_dir / path.name
        os.replace(path, target)
        return target

    # -------------------------------------------------------------------------- logging
    def log(self, event: str, **fields: object) -> None:
        """Append ``{"event": event, "t": now, **fields}`` as one line to ``events.jsonl``.

        Safe from several threads of one process (whole lines, never interleaved).
        """
        record = {"event": event, "t": self._clock(), **fields}
        line = json.dumps(record, default=str) + "\n"
        with self._log_lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(line)

    def events(self) -> list[dict]:
        """Every event logged so far (a torn last line, from a crash, is skipped)."""
        if not self.log_path.is_file():
            return []
        out = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    # ---------------------------------------------------------------------------- drain
    def drain(
        self,
        client: EpisodeUploader,
        max_items: int | None = None,
        backoff: Backoff | None = None,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> DrainResult:
        """Upload pending episodes oldest first until done, ``max_items``, or a failure.

        An episode that fails transiently is tried up to ``backoff.attempts`` times with
        exponential backoff and jitter; if it still fails, the drain stops (keeping it and
        everything after it for later) and reports the error.

        Args:
            client: anything with ``upload_episode(ep) -> dict`` raising
                :class:`TransientError` / :class:`RejectedError`.
            max_items: upload at most this many (None: all).
            backoff: retry schedule of one episode.
            rng: jitter source.
            sleep: how to wait (injectable for tests).
        """
        backoff = backoff or Backoff()
        rng = rng or random.Random()
        uploaded = duplicates = rejected = 0
        error: str | None = None
        queue = self.pending()
        if max_items is not None:
            queue = queue[: max(0, max_items)]
        for path in queue:
            try:
                ep = self.read(path)
            except FileNotFoundError:
                continue  # drained concurrently by another process
            except EpisodeFileError as exc:
                self.reject(path, f"unreadable spool file: {exc}")
                self.log("rejected", file=path.name, status=None, error=str(exc))
                rejected += 1
                continue
            for attempt in range(backoff.attempts):
                try:
                    answer = client.upload_episode(ep)
                except TransientError as exc:
                    error = str(exc)
                    if attempt + 1 < backoff.attempts:
                        sleep(backoff.delay(attempt, rng))
                    continue
                except RejectedError as exc:
                    self.reject(path, exc.message)
                    self.log(
                        "rejected", episode_id=ep.episode_id, status=exc.status, error=exc.message
                    )
                    rejected += 1
                    error = None
                    break
                stored = bool(answer.get("stored", True))
                self.ack(path)
                self.log(
                    "acked",
                    episode_id=ep.episode_id,
                    finished_at=ep.created_at,
                    stored=stored,
                    attempts=attempt + 1,
                )
                uploaded += 1
                duplicates += not stored
                error = None
                break
            if error is not None:
                break
        return DrainResult(uploaded, duplicates, rejected, len(self), error)
