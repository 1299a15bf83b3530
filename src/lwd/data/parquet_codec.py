"""One episode as one Parquet file, written atomically, read back exactly.

File layout (``T`` steps, ``D`` state width, ``A`` action width), ``T+1`` rows, row ``t``
holding state ``t`` and, for ``t < T``, the step taken from it:

==============  ===========================  ==============================================
column          type                         final row (``t = T``)
==============  ===========================  ==============================================
step            int32                        ``T``
state           fixed_size_list<float32>[D]  the final observation
action          fixed_size_list<float32>[A]  null
proposal        fixed_size_list<float32>[A]  null
reward          float32                      null
source          uint8 (:class:`Source`)      null
policy_version  int32                        null
image           binary (PNG), if any         the final frame
==============  ===========================  ==============================================

The episode-level fields (ids, task, instruction, outcome, timings, shapes) live in the
Parquet schema's key-value metadata under ``lwd.episode`` as JSON. Page checksums are written
and verified, so a flipped byte is an error rather than a silently different episode.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from lwd.durable import write_atomic
from lwd.types import Episode

#: Bumped when the file layout changes; readers refuse versions they do not know.
FORMAT_VERSION = 1
_META_KEY = b"lwd.episode"
_STEP_COLUMNS = ("action", "proposal", "reward", "source", "policy_version")


class EpisodeFileError(ValueError):
    """An episode file is truncated, corrupt, or not an lwd episode file."""


def _with_final_null(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Append a zero row standing in for the final row, and the mask marking it null.

    Args:
        values: ``(T, ...)`` per-step values.

    Returns:
        ``(T+1, ...)`` values and a ``(T+1,)`` bool mask, True on the final row.
    """
    padded = np.concatenate([values, np.zeros((1, *values.shape[1:]), values.dtype)])
    mask = np.zeros(len(padded), dtype=bool)
    mask[-1] = True
    return padded, mask


def _vector_column(rows: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """``(N, W)`` float32 rows as a fixed-size-list column (null where ``mask``)."""
    flat = pa.array(np.ascontiguousarray(rows).reshape(-1))
    mask_arr = None if mask is None else pa.array(mask)
    return pa.FixedSizeListArray.from_arrays(flat, rows.shape[1], mask=mask_arr)


def _encode_png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format="PNG")
    return buf.getvalue()


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        if img.mode != "RGB":
            raise ValueError(f"image mode is {img.mode}, expected RGB")
        return np.asarray(img, dtype=np.uint8)


def episode_table(ep: Episode) -> pa.Table:
    """Lay an episode out as its Parquet table (see the module docstring).

    Args:
        ep: the episode, with ``T`` steps.

    Returns:
        A ``T+1``-row table with the episode-level fields in its schema metadata.
    """
    t = ep.num_steps
    columns: dict[str, pa.Array] = {
        "step": pa.array(np.arange(t + 1, dtype=np.int32)),
        "state": _vector_column(ep.states),
    }
    for name, values in (("action", ep.actions), ("proposal", ep.proposals)):
        columns[name] = _vector_column(*_with_final_null(values))
    for name, values in (
        ("reward", ep.rewards),
        ("source", ep.sources),
        ("policy_version", ep.policy_versions),
    ):
        padded, mask = _with_final_null(values)
        columns[name] = pa.array(padded, mask=mask)
    if ep.images is not None:
        columns["image"] = pa.array([_encode_png(f) for f in ep.images], type=pa.binary())
    meta = {
        "format": FORMAT_VERSION,
        "episode_id": ep.episode_id,
        "robot_id": ep.robot_id,
        "task": ep.task,
        "instruction": ep.instruction,
        "num_steps": t,
        "state_dim": int(ep.states.shape[1]),
        "action_dim": int(ep.actions.shape[1]),
        "image_shape": None if ep.images is None else list(ep.images.shape[1:]),
        "success": bool(ep.success),
        "terminated": bool(ep.terminated),
        # Python's float repr round-trips exactly through JSON.
        "progress": float(ep.progress),
        "cycle_time_s": float(ep.cycle_time_s),
        "created_at": float(ep.created_at),
    }
    table = pa.table(columns)
    return table.replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})


def write_episode(ep: Episode, path: str | Path) -> Path:
    """Write one episode to ``path`` atomically: whole, or not at all.

    Writes to a temporary file in the same directory, flushes and fsyncs it, renames it over
    ``path`` and fsyncs the directory, so a crash leaves either the old file or the new one.

    Args:
        ep: the episode (validate it first; see :func:`lwd.data.schema.validate_episode`).
        path: destination file; its directory must exist.

    Returns:
        ``path`` as a :class:`Path`.
    """
    path = Path(path)
    buf = io.BytesIO()
    pq.write_table(episode_table(ep), buf, compression="zstd", write_page_checksum=True)
    write_atomic(path, buf.getvalue())
    return path


def _vectors(table: pa.Table, name: str, rows: int, width: int) -> np.ndarray:
    """The first ``rows`` entries of a fixed-size-list column as a ``(rows, width)`` array."""
    column = table.column(name).slice(0, rows).combine_chunks()
    if column.null_count:
        raise ValueError(f"column {name!r} has nulls before the final row")
    if column.type.list_size != width:
        raise ValueError(f"column {name!r} has width {column.type.list_size}, expected {width}")
    # np.array copies: Arrow buffers are read-only and an Episode's arrays should not be.
    return np.array(column.flatten().to_numpy(zero_copy_only=False)).reshape(rows, width)


def _scalars(table: pa.Table, name: str, rows: int) -> np.ndarray:
    column = table.column(name).slice(0, rows).combine_chunks()
    if column.null_count:
        raise ValueError(f"column {name!r} has nulls before the final row")
    return np.array(column.to_numpy(zero_copy_only=False))


def _episode_from_table(table: pa.Table) -> Episode:
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        raise ValueError(f"no {_META_KEY.decode()!r} metadata; not an lwd episode file")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"format version {meta.get('format')!r}; this lwd reads {FORMAT_VERSION}")
    t, d, a = meta["num_steps"], meta["state_dim"], meta["action_dim"]
    if table.num_rows != t + 1:
        raise ValueError(f"{table.num_rows} rows but metadata says {t} steps (expected {t + 1})")
    for name in _STEP_COLUMNS:
        if table.column(name)[t].is_valid:
            raise ValueError(f"column {name!r} is not null on the final row")
    images = None
    if meta["image_shape"] is not None:
        images = np.stack([_decode_png(b) for b in table.column("image").to_pylist()])
        if images.shape[1:] != tuple(meta["image_shape"]):
            raise ValueError(f"images of shape {images.shape[1:]}, expected {meta['image_shape']}")
    return Episode(
        episode_id=meta["episode_id"],
        robot_id=meta["robot_id"],
        task=meta["task"],
        instruction=meta["instruction"],
        states=_vectors(table, "state", t + 1, d),
        actions=_vectors(table, "action", t, a),
        proposals=_vectors(table, "proposal", t, a),
        rewards=_scalars(table, "reward", t).astype(np.float32, copy=False),
        sources=_scalars(table, "source", t).astype(np.uint8, copy=False),
        policy_versions=_scalars(table, "policy_version", t).astype(np.int32, copy=False),
        success=bool(meta["success"]),
        terminated=bool(meta["terminated"]),
        progress=float(meta["progress"]),
        cycle_time_s=float(meta["cycle_time_s"]),
        images=images,
        created_at=float(meta["created_at"]),
    )


def read_episode(path: str | Path) -> Episode:
    """Read an episode written by :func:`write_episode`, exactly (dtypes included).

    Args:
        path: the episode's Parquet file.

    Returns:
        The episode; arrays are fresh, writable numpy arrays.

    Raises:
        FileNotFoundError: no file at ``path``.
        EpisodeFileError: the file is truncated, corrupt or not an lwd episode file; the
            message names the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no episode file at {path}")
    try:
        with pq.ParquetFile(path, page_checksum_verification=True) as pf:
            table = pf.read()
        return _episode_from_table(table)
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise EpisodeFileError(
            f"episode file {path} is truncated, corrupt or not an lwd episode file ({e}); "
            "restore it from a copy or re-record the episode"
        ) from e
