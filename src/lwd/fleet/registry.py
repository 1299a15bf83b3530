"""PolicyRegistry: every policy version the fleet was ever given, immutable and checksummed.

Layout on disk::

    root/
      versions/<N>/        model.safetensors, config.json, normalizer.json (see
                           lwd.policy.checkpoint); never changed once published
      index.sqlite         table ``policies``: version, sha256, created_at, size_bytes
      tmp/                 publishes in progress

Usage loop (learner publishes, server serves, robots load between episodes)::

    registry = PolicyRegistry("runs/fleet/policies")
    version = registry.publish(save_policy(tmp_dir, policy))  # 1, 2, 3, ...
    v = registry.latest()
    body, sha = registry.archive(v), registry.checksum(v)  # what GET /v1/policies/{v} sends
    extract_archive(body, robot_dir); policy = load_policy(robot_dir)  # robot side

A version's checksum is the sha256 of its :meth:`~PolicyRegistry.archive`, a deterministic
uncompressed tar of its three files, so a robot checks a download by hashing the body.
Publishing copies the files to a temporary directory, checks that they load as a policy,
renames the directory into place and only then commits its row: a version is either whole or
absent. Publishing the same content as the latest version again (a retried upload) returns
that version instead of a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import sqlite3
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lwd.durable import connect, fsync_dir, open_index
from lwd.policy.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    NORMALIZER_FILE,
    CheckpointError,
)
from lwd.policy.ranker import RANKER_FILES, load_acting_policy

#: The files a published version holds (and its archive, in this order).
POLICY_FILES = (CONFIG_FILE, MODEL_FILE, NORMALIZER_FILE)
#: Files a version holds when present: the best-of-N ranker (lwd.policy.ranker).
OPTIONAL_POLICY_FILES = RANKER_FILES


def policy_files(directory: Path) -> list[str]:
    """The names :func:`build_archive` packs from ``directory``, in archive order."""
    return [*POLICY_FILES, *(n for n in OPTIONAL_POLICY_FILES if (directory / n).is_file())]


_INDEX_VERSION = 1  # stored as SQLite's user_version; bump on any table change
_TABLES = """
CREATE TABLE IF NOT EXISTS policies (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    size_bytes INTEGER NOT NULL
);
"""
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_COPY_CHUNK = 1 << 20


class PolicyNotFoundError(LookupError):
    """No policy with that version was published."""


class InvalidPolicyError(ValueError):
    """What was given to publish is not a loadable policy checkpoint (or archive of one)."""


class InvalidArchiveError(InvalidPolicyError):
    """The bytes given as a policy archive are not a safe, readable tar of flat files."""


class PolicyIntegrityError(RuntimeError):
    """A published version's files no longer match their recorded checksum."""


@dataclass(frozen=True)
class PolicyInfo:
    """One published version, as the index records it."""

    version: int  #: 1, 2, 3, ... in publishing order
    sha256: str  #: hex sha256 of the version's archive
    created_at: float  #: unix time of publishing
    size_bytes: int  #: size of the archive


def _copy_synced(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, _COPY_CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


def build_archive(directory: str | Path) -> bytes:
    """A deterministic uncompressed tar of a checkpoint's :func:`policy_files`.

    Equal files give equal bytes: fixed order, mode 0644, owner 0, mtime 0, USTAR format.

    Raises:
        FileNotFoundError: one of the files is missing.
    """
    directory = Path(directory)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in policy_files(directory):
            data = (directory / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def extract_archive(data: bytes | bytearray, dest: str | Path) -> list[str]:
    """Unpack an uncompressed tar of flat regular files into ``dest`` (new or empty).

    Only plain file names are accepted (an optional ``./`` prefix and a ``.`` directory entry
    are tolerated): absolute paths, ``..``, subdirectories, links and devices are refused
    before anything is written, so a hostile archive cannot write outside ``dest``.

    Returns:
        The names written, in archive order.

    Raises:
        InvalidArchiveError: the bytes are not a tar archive, or a member is unsafe.
    """
    dest = Path(dest)
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise InvalidArchiveError(
            f"policy archive ({len(data)} bytes) is not an uncompressed tar file ({exc}); "
            "send the bytes of PolicyRegistry.archive / build_archive"
        ) from None
    files: list[tuple[str, tarfile.TarInfo]] = []
    for m in members:
        name = m.name[2:] if m.name.startswith("./") else m.name
        if name in ("", ".") and m.isdir():
            continue
        if not m.isreg():
            kind = "link" if (m.issym() or m.islnk()) else "directory" if m.isdir() else "special"
            raise InvalidArchiveError(
                f"policy archive member {m.name!r} is a {kind}; only regular files are allowed"
            )
        if not _SAFE_NAME.fullmatch(name) or name in (".", ".."):
            raise InvalidArchiveError(
                f"policy archive member {m.name!r} is not a plain file name; a checkpoint is "
                "flat (no absolute paths, '..' or subdirectories)"
            )
        if any(name == n for n, _ in files):
            raise InvalidArchiveError(f"policy archive holds {name!r} twice")
        files.append((name, m))
    dest.mkdir(parents=True, exist_ok=True)
    with tar:
        for name, m in files:
            src = tar.extractfile(m)
            if src is None:  # pragma: no cover - isreg() members always have data
                raise InvalidArchiveError(f"policy archive member {name!r} has no data")
            try:
                with src, open(dest / name, "xb") as fout:
                    shutil.copyfileobj(src, fout, _COPY_CHUNK)
            except tarfile.TarError as exc:
                raise InvalidArchiveError(
                    f"policy archive member {name!r} cannot be read ({exc}); was the archive "
                    "truncated?"
                ) from None
    return [name for name, _ in files]


class PolicyRegistry:
    """Published policy versions under ``root``; safe for threads and for several processes.

    Args:
        root: the registry's directory; created if missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._db_path = self.root / "index.sqlite"
        self._lock = threading.Lock()
        (self.root / "versions").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        open_index(self._db_path, _TABLES, _INDEX_VERSION, "policy index")

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return connect(self._db_path)

    # ------------------------------------------------------------------------- publishing
    def publish(self, checkpoint_dir: str | Path) -> int:
        """Publish the policy in a checkpoint directory written by ``save_policy``.

        Only :func:`policy_files` are copied (optimizer and trainer state stay behind).

        Args:
            checkpoint_dir: the checkpoint directory.

        Returns:
            The new version (1 for the first); the latest version unchanged if its content
            is identical to this checkpoint's.

        Raises:
            InvalidPolicyError: the directory is missing a file or does not load as a policy.
        """
        src = Path(checkpoint_dir)
        if not src.is_dir():
            raise InvalidPolicyError(f"{src}: not a directory; expected a policy checkpoint")
        missing = [n for n in POLICY_FILES if not (src / n).is_file()]
        if missing:
            raise InvalidPolicyError(
                f"{src}: missing {', '.join(missing)}; a policy checkpoint holds "
                f"{', '.join(POLICY_FILES)} (write one with lwd.policy.checkpoint.save_policy)"
            )
        staging = self.root / "tmp" / f"{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for name in policy_files(src):
                _copy_synced(src / name, staging / name)
            fsync_dir(staging)
            return self._commit(staging, str(src))
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already if it was committed

    def publish_archive(self, data: bytes | bytearray) -> int:
        """Publish the policy in a tar archive of its checkpoint files (see :meth:`publish`).

        Raises:
            InvalidArchiveError: the archive is malformed or unsafe.
            InvalidPolicyError: it does not hold a loadable policy.
        """
        with tempfile.TemporaryDirectory(dir=self.root / "tmp") as tmp:
            extract_archive(data, tmp)
            try:
                return self.publish(tmp)
            except InvalidPolicyError as exc:
                raise InvalidPolicyError(str(exc).replace(tmp, "policy archive", 1)) from None

    def _commit(self, staging: Path, label: str) -> int:
        try:
            load_acting_policy(staging)
        except (CheckpointError, ValueError, TypeError, RuntimeError) as exc:
            message = str(exc).replace(str(staging), label)
            raise InvalidPolicyError(f"{label}: does not load as a policy ({message})") from None
        archive = build_archive(staging)
        digest = hashlib.sha256(archive).hexdigest()
        with self._lock, self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            target: Path | None = None
            try:
                row = conn.execute(
                    "SELECT version, sha256 FROM policies ORDER BY version DESC LIMIT 1"
                ).fetchone()
                if row is not None and row[1] == digest:
                    conn.execute("ROLLBACK")
                    return int(row[0])
                cur = conn.execute(
                    "INSERT INTO policies (sha256, created_at, size_bytes) VALUES (?, ?, ?)",
                    (digest, time.time(), len(archive)),
                )
                version = int(cur.lastrowid)
                target = self.root / "versions" / str(version)
                if target.exists():  # left by a publish that crashed before its commit
                    shutil.rmtree(target)
                os.rename(staging, target)
                fsync_dir(target.parent)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if target is not None and target.exists():
                    shutil.rmtree(target, ignore_errors=True)
                raise
        return version

    # ---------------------------------------------------------------------------- reading
    def latest(self) -> int | None:
        """The newest version, or ``None`` if nothing was published yet."""
        with self._connect() as conn:
            return conn.execute("SELECT MAX(version) FROM policies").fetchone()[0]

    def versions(self) -> list[PolicyInfo]:
        """Every published version, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT version, sha256, created_at, size_bytes FROM policies ORDER BY version"
            ).fetchall()
        return [PolicyInfo(*row) for row in rows]

    def info(self, version: int) -> PolicyInfo:
        """What the index records about ``version``.

        Raises:
            PolicyNotFoundError: the version was never published.
        """
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"policy version must be an int, got {version!r}")
        with self._connect() as conn:
            row = conn.execute(
                "SELECT version, sha256, created_at, size_bytes FROM policies WHERE version = ?",
                (version,),
            ).fetchone()
            if row is None:
                latest = conn.execute("SELECT MAX(version) FROM policies").fetchone()[0]
        if row is None:
            have = f"versions 1..{latest} exist" if latest else "no policy was published yet"
            raise PolicyNotFoundError(f"no policy version {version} in {self.root}; {have}")
        return PolicyInfo(*row)

    def get(self, version: int) -> Path:
        """The directory of ``version`` (load it with ``lwd.policy.checkpoint.load_policy``).

        Raises:
            PolicyNotFoundError: the version was never published.
        """
        self.info(version)
        return self.root / "versions" / str(version)

    def checksum(self, version: int) -> str:
        """The hex sha256 of ``version``'s archive.

        Raises:
            PolicyNotFoundError: the version was never published.
        """
        return self.info(version).sha256

    def archive(self, version: int) -> bytes:
        """``version``'s files as a deterministic tar (see :func:`build_archive`), verified.

        Raises:
            PolicyNotFoundError: the version was never published.
            PolicyIntegrityError: its files changed or vanished since publishing.
        """
        info = self.info(version)
        directory = self.root / "versions" / str(version)
        try:
            data = build_archive(directory)
        except FileNotFoundError as exc:
            raise PolicyIntegrityError(
                f"policy version {version} is missing a file ({exc.filename}); restore "
                f"{directory} from a copy or publish the policy again"
            ) from None
        if hashlib.sha256(data).hexdigest() != info.sha256:
            raise PolicyIntegrityError(
                f"policy version {version} in {directory} no longer matches its checksum "
                f"{info.sha256[:12]}...; its files were modified after publishing"
            )
        return data
