"""Durable local files and SQLite indexes: the crash-safety mechanics shared by the episode
store, the Parquet codec, checkpoints and the policy registry.

- :func:`write_atomic`: a file is either its old content or its new content, never a mix.
- :func:`fsync_dir`: makes a rename inside ``directory`` itself survive power loss.
- :func:`exclusive_lock`: one process at a time works in a directory (the OS drops the lock when
  the holder dies, so a crash never leaves a stale lock behind).
- :func:`open_index` / :func:`connect`: a WAL-mode SQLite index with a layout version, opened in
  autocommit mode (writers take the write lock with ``BEGIN IMMEDIATE``) and ``synchronous=FULL``
  (a committed row survives power loss).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path


class LockedError(RuntimeError):
    """Another process holds the directory's lock."""


@contextlib.contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block, or raise :class:`LockedError` at once.

    Args:
        path: the lock file (created if missing; it records the holder's pid for the message).
        what: the job, for the message (e.g. ``"lwd demo"``).
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise LockedError(
                f"another {what} (pid {holder}) is working in {path.parent}; wait for it to "
                f"finish or give this one another directory"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fsync_dir(directory: Path) -> None:
    """fsync a directory (a no-op where the platform cannot open one)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling, fsync it, rename it over ``path``, fsync the dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def connect(db_path: Path) -> Iterator[sqlite3.Connection]:
    """A fresh autocommit connection with ``synchronous=FULL``, closed on exit."""
    conn = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=FULL")
        yield conn
    finally:
        conn.close()


def open_index(db_path: Path, tables: str, layout_version: int, what: str) -> None:
    """Create (or check) a WAL-mode index whose ``user_version`` is ``layout_version``.

    Raises:
        RuntimeError: the file was written with another layout version.
    """
    with connect(db_path) as conn:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found not in (0, layout_version):
            raise RuntimeError(
                f"{what} {db_path} has layout version {found}, but this lwd reads version "
                f"{layout_version}; open it with the lwd that wrote it"
            )
        conn.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block writers
        conn.executescript(tables)
        conn.execute(f"PRAGMA user_version={layout_version}")
