"""EpisodeStore: the fleet's append-only, deduplicated, versioned record of episodes.

Layout on disk::

    root/
      episodes/<episode_id>.parquet   one file per episode (see lwd.data.parquet_codec)
      index.sqlite                    SQLite in WAL mode: tables ``episodes`` and ``snapshots``

Usage loop (fleet server and learner)::

    store = EpisodeStore("runs/fleet", known_tasks=suite.task_names)
    episode_id = store.put(episode)  # on every upload; retries are harmless
    version = store.snapshot()  # now and then: freeze "everything so far"
    batch = store.read(version, tasks=["open-drawer"], success=True)

An episode is committed whole exactly once or not at all: it is validated first, its file is
written atomically while the index's write lock is held, and only then is its row committed.
A crash in between leaves at most an unindexed file, which the next put of that episode
replaces. Snapshots are cut by insertion sequence, so every host reading version ``N`` sees
the same episodes however many arrive later.
"""

from __future__ import annotations

import contextlib
import numbers
import sqlite3
import threading
import time
from collections.abc import Collection
from pathlib import Path

from lwd.data.parquet_codec import EpisodeFileError, read_episode, write_episode
from lwd.data.schema import content_hash, validate_episode
from lwd.durable import connect, open_index
from lwd.types import Episode, Source

_INDEX_VERSION = 1  # stored as SQLite's user_version; bump on any table change
_SOURCE_COLUMNS = {s: f"n_{s.name.lower()}" for s in Source}
_TABLES = f"""
CREATE TABLE IF NOT EXISTS episodes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id TEXT NOT NULL UNIQUE,
    content_hash TEXT NOT NULL UNIQUE,
    robot_id TEXT NOT NULL,
    task TEXT NOT NULL,
    instruction TEXT NOT NULL,
    num_steps INTEGER NOT NULL,
    success INTEGER NOT NULL,
    terminated INTEGER NOT NULL,
    progress REAL NOT NULL,
    cycle_time_s REAL NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL" for c in _SOURCE_COLUMNS.values())},
    min_policy_version INTEGER NOT NULL,
    max_policy_version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    stored_at REAL NOT NULL,
    path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS episodes_task ON episodes (task);
CREATE INDEX IF NOT EXISTS episodes_robot ON episodes (robot_id);
CREATE TABLE IF NOT EXISTS snapshots (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    max_seq INTEGER NOT NULL,
    created_at REAL NOT NULL
);
"""


class EpisodeNotFoundError(LookupError):
    """No episode with that id is stored."""


class SnapshotNotFoundError(LookupError):
    """No snapshot with that version was committed."""


class EpisodeConflictError(ValueError):
    """A different episode is already stored under the same id."""


def _names(values: str | Collection[str], what: str) -> list[str]:
    # A bare string is a Collection of characters; treat it as one name instead.
    names = [values] if isinstance(values, str) else list(values)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"{what} must be names (str), got {names!r}")
    return names


def _source(value: Source | int | str) -> Source:
    return Source.parse(value) if isinstance(value, str) else Source(value)


def _placeholders(n: int) -> str:
    return ", ".join("?" * n)


class EpisodeStore:
    """Episodes in Parquet files under ``root``, indexed in SQLite, read by snapshot version.

    Safe for one writer process with many threads (a fresh SQLite connection per call; writes
    take SQLite's write lock), and for readers in other processes.

    Args:
        root: the store's directory; created if missing.
        known_tasks: task names to accept; ``None`` accepts any (see :func:`validate_episode`).
    """

    def __init__(self, root: str | Path, known_tasks: Collection[str] | None = None) -> None:
        self.root = Path(root)
        self.known_tasks = None if known_tasks is None else frozenset(known_tasks)
        self._db_path = self.root / "index.sqlite"
        self._lock = threading.Lock()
        (self.root / "episodes").mkdir(parents=True, exist_ok=True)
        open_index(self._db_path, _TABLES, _INDEX_VERSION, "episode index")

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return connect(self._db_path)

    def put(self, ep: Episode) -> str:
        """Validate and store one episode, unless the same content is already stored.

        Args:
            ep: the episode.

        Returns:
            The id under which the content is stored: ``ep.episode_id``, or the id of the
            episode with the same :func:`content_hash` stored earlier (then nothing is written).

        Raises:
            EpisodeValidationError: the episode is malformed; nothing is written.
            EpisodeConflictError: another episode with different content has this id.
        """
        validate_episode(ep, self.known_tasks)
        digest = content_hash(ep)
        rel_path = f"episodes/{ep.episode_id}.parquet"
        with self._lock, self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            written = False
            try:
                row = conn.execute(
                    "SELECT episode_id FROM episodes WHERE content_hash = ?", (digest,)
                ).fetchone()
                if row is not None:
                    conn.execute("ROLLBACK")
                    return row[0]
                if conn.execute(
                    "SELECT 1 FROM episodes WHERE episode_id = ?", (ep.episode_id,)
                ).fetchone():
                    raise EpisodeConflictError(
                        f"episode {ep.episode_id} is already stored with different content; "
                        "give each recorded episode a fresh id (uuid.uuid4().hex)"
                    )
                write_episode(ep, self.root / rel_path)
                written = True
                counts = {s: int((ep.sources == s).sum()) for s in Source}
                fields = {
                    "episode_id": ep.episode_id,
                    "content_hash": digest,
                    "robot_id": ep.robot_id,
                    "task": ep.task,
                    "instruction": ep.instruction,
                    "num_steps": ep.num_steps,
                    "success": int(bool(ep.success)),
                    "terminated": int(bool(ep.terminated)),
                    "progress": float(ep.progress),
                    "cycle_time_s": float(ep.cycle_time_s),
                    **{_SOURCE_COLUMNS[s]: n for s, n in counts.items()},
                    "min_policy_version": int(ep.policy_versions.min()),
                    "max_policy_version": int(ep.policy_versions.max()),
                    "created_at": float(ep.created_at),
                    "stored_at": time.time(),
                    "path": rel_path,
                }
                conn.execute(
                    f"INSERT INTO episodes ({', '.join(fields)}) "
                    f"VALUES ({_placeholders(len(fields))})",
                    tuple(fields.values()),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if written:  # the id was free (checked above), so this file is ours alone
                    (self.root / rel_path).unlink(missing_ok=True)
                raise
        return ep.episode_id

    def snapshot(self) -> int:
        """Commit a new snapshot version covering every episode stored so far.

        Returns:
            The new version; versions start at 1 and only ever increase.
        """
        with self._lock, self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # no insert can be half-done while we cut
            try:
                max_seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM episodes").fetchone()[0]
                cur = conn.execute(
                    "INSERT INTO snapshots (max_seq, created_at) VALUES (?, ?)",
                    (max_seq, time.time()),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return int(cur.lastrowid)

    def latest_snapshot(self) -> int | None:
        """The newest snapshot version, or ``None`` if none was committed yet."""
        with self._connect() as conn:
            return conn.execute("SELECT MAX(version) FROM snapshots").fetchone()[0]

    def _query(
        self,
        conn: sqlite3.Connection,
        columns: str,
        version: int | None,
        tasks: str | Collection[str] | None,
        sources: Collection[Source | int | str] | None,
        success: bool | None,
        robots: str | Collection[str] | None,
        limit: int | None,
    ) -> list[tuple]:
        where: list[str] = []
        params: list[object] = []
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, numbers.Integral):
                raise TypeError(f"snapshot version must be an int, got {version!r}")
            version = int(version)
            row = conn.execute("SELECT max_seq FROM snapshots WHERE version = ?", (version,))
            row = row.fetchone()
            if row is None:
                latest = conn.execute("SELECT MAX(version) FROM snapshots").fetchone()[0]
                have = f"versions 1..{latest} exist" if latest else "no snapshot exists yet"
                raise SnapshotNotFoundError(
                    f"no snapshot version {version} in {self.root}; {have} "
                    "(call snapshot() to commit one, or pass version=None to read everything)"
                )
            where.append("seq <= ?")
            params.append(row[0])
        for column, values in (("task", tasks), ("robot_id", robots)):
            if values is not None:
                names = _names(values, column)
                where.append(f"{column} IN ({_placeholders(len(names))})" if names else "0")
                params.extend(names)
        if sources is not None:
            cols = sorted({_SOURCE_COLUMNS[_source(s)] for s in sources})
            where.append("(" + " OR ".join(f"{c} > 0" for c in cols) + ")" if cols else "0")
        if success is not None:
            where.append("success = ?")
            params.append(int(bool(success)))
        sql = f"SELECT {columns} FROM episodes"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq"
        if limit is not None:
            if limit < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
            sql += " LIMIT ?"
            params.append(int(limit))
        return conn.execute(sql, params).fetchall()

    def episode_ids(
        self,
        version: int | None = None,
        tasks: str | Collection[str] | None = None,
        sources: Collection[Source | int | str] | None = None,
        success: bool | None = None,
        robots: str | Collection[str] | None = None,
        limit: int | None = None,
    ) -> list[str]:
        """Ids of the stored episodes that match every given filter, in insertion order.

        Args:
            version: a snapshot version; ``None`` means everything stored now.
            tasks: keep episodes of these tasks.
            sources: keep episodes with at least one step from any of these sources
                (:class:`Source`, its int value, or its name such as ``"intervention"``).
            success: keep only successes (True) or only failures (False).
            robots: keep episodes from these robot ids.
            limit: at most this many (the earliest stored).

        Raises:
            SnapshotNotFoundError: ``version`` was never committed.
        """
        with self._connect() as conn:
            rows = self._query(conn, "episode_id", version, tasks, sources, success, robots, limit)
        return [r[0] for r in rows]

    def read(
        self,
        version: int | None = None,
        tasks: str | Collection[str] | None = None,
        sources: Collection[Source | int | str] | None = None,
        success: bool | None = None,
        robots: str | Collection[str] | None = None,
        limit: int | None = None,
    ) -> list[Episode]:
        """The matching episodes, in insertion order; filters as in :meth:`episode_ids`.

        Raises:
            SnapshotNotFoundError: ``version`` was never committed.
            FileNotFoundError: an indexed episode's file is missing.
            EpisodeFileError: an episode's file is corrupt.
        """
        with self._connect() as conn:
            rows = self._query(
                conn, "episode_id, path", version, tasks, sources, success, robots, limit
            )
        return [self._load(episode_id, path) for episode_id, path in rows]

    def get(self, episode_id: str) -> Episode:
        """The stored episode with this id.

        Raises:
            EpisodeNotFoundError: no such id is stored.
        """
        with self._connect() as conn:
            row = conn.execute(
                "SELECT path FROM episodes WHERE episode_id = ?", (episode_id,)
            ).fetchone()
        if row is None:
            raise EpisodeNotFoundError(f"no episode {episode_id!r} in the store at {self.root}")
        return self._load(episode_id, row[0])

    def _load(self, episode_id: str, rel_path: str) -> Episode:
        path = self.root / rel_path
        if not path.is_file():
            raise FileNotFoundError(
                f"episode {episode_id} is in the index {self._db_path} but its file {path} is "
                "missing; restore the file (or the whole store directory) from a copy"
            )
        ep = read_episode(path)
        if ep.episode_id != episode_id:
            raise EpisodeFileError(
                f"episode file {path} holds episode {ep.episode_id}, but the index says "
                f"{episode_id}; the file was replaced or moved"
            )
        return ep

    def index_rows(self, after_seq: int = 0) -> list[dict]:
        """Index records (no payloads) of episodes stored after ``after_seq``, in store order.

        Cheap enough to poll for dashboards: each dict holds the index columns (``seq``,
        ``episode_id``, ``robot_id``, ``task``, ``num_steps``, ``success``, ``progress``,
        ``cycle_time_s``, ``n_<source>`` step counts, ``min/max_policy_version``,
        ``created_at``, ``stored_at``).
        """
        columns = (
            "seq, episode_id, robot_id, task, num_steps, success, progress, cycle_time_s, "
            f"{', '.join(_SOURCE_COLUMNS.values())}, min_policy_version, max_policy_version, "
            "created_at, stored_at"
        )
        with self._connect() as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                f"SELECT {columns} FROM episodes WHERE seq > ? ORDER BY seq", (int(after_seq),)
            ).fetchall()
        return [dict(r) for r in rows]

    def snapshots(self) -> list[dict]:
        """Every committed snapshot: ``version``, ``max_seq`` (last episode in it), ``created_at``."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT version, max_seq, created_at FROM snapshots ORDER BY version"
            ).fetchall()
        return [dict(version=v, max_seq=m, created_at=c) for v, m, c in rows]

    def __len__(self) -> int:
        with self._connect() as conn:
            return conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]

    def summary(self, version: int | None = None) -> dict:
        """Counts for dashboards and logs, as plain JSON-friendly values.

        Args:
            version: a snapshot version; ``None`` means everything stored now.

        Returns:
            ``{"episodes", "steps", "latest_snapshot", "sources": {name: {"episodes",
            "steps"}}, "tasks": {task: {"episodes", "steps", "successes", "success_rate"}}}``
            where a source's ``episodes`` counts episodes with at least one such step.
        """
        source_cols = list(_SOURCE_COLUMNS.values())
        columns = f"task, num_steps, success, {', '.join(source_cols)}"
        with self._connect() as conn:
            rows = self._query(conn, columns, version, None, None, None, None, None)
            latest = conn.execute("SELECT MAX(version) FROM snapshots").fetchone()[0]
        sources = {s.name.lower(): {"episodes": 0, "steps": 0} for s in Source}
        tasks: dict[str, dict] = {}
        for task, steps, success, *counts in rows:
            entry = tasks.setdefault(task, {"episodes": 0, "steps": 0, "successes": 0})
            entry["episodes"] += 1
            entry["steps"] += steps
            entry["successes"] += success
            for s, n in zip(Source, counts, strict=True):
                sources[s.name.lower()]["episodes"] += int(n > 0)
                sources[s.name.lower()]["steps"] += n
        for entry in tasks.values():
            entry["success_rate"] = entry["successes"] / entry["episodes"]
        return {
            "episodes": len(rows),
            "steps": sum(r[1] for r in rows),
            "latest_snapshot": latest,
            "sources": sources,
            "tasks": dict(sorted(tasks.items())),
        }
