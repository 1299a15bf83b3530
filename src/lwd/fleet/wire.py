"""The wire codec: episodes and arrays as msgpack, never pickle.

A numpy array travels as a map ``{"dtype": "<f4", "shape": [T, D], "data": <raw bytes>}``
(C order, little-endian); an episode as a map of its :class:`~lwd.types.Episode` fields plus
``"format": "lwd.episode.v1"``. Decoding trusts nothing: every failure is a :class:`WireError`
naming the field and the problem, and msgpack extension types are refused.

Usage::

    payload = encode_episode(ep)  # robot side, before the upload
    ep = decode_episode(payload)  # server side; then validate_episode / EpisodeStore.put

    body = encode_arrays({"state": s, "image": im}, meta={"instruction": "open the drawer"})
    arrays, meta = decode_arrays(body)

The codec checks the wire format (types, per-field dtypes and ranks, byte counts); whether an
episode makes sense (matching lengths, finite values, known task) is
:func:`lwd.data.schema.validate_episode`'s job.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from lwd.types import Episode

#: Format tag of an encoded episode; bump on any change to the layout below.
EPISODE_FORMAT = "lwd.episode.v1"
#: Format tag of an encoded dict of arrays.
ARRAYS_FORMAT = "lwd.arrays.v1"

# Array kinds allowed on the wire: bool, signed and unsigned ints, floats.
_ARRAY_KINDS = frozenset("biuf")
# (dtype, ndim) of every array field of an Episode; images is optional.
_EPISODE_ARRAYS: dict[str, tuple[np.dtype, int]] = {
    "states": (np.dtype(np.float32), 2),
    "actions": (np.dtype(np.float32), 2),
    "proposals": (np.dtype(np.float32), 2),
    "rewards": (np.dtype(np.float32), 1),
    "sources": (np.dtype(np.uint8), 1),
    "policy_versions": (np.dtype(np.int32), 1),
    "images": (np.dtype(np.uint8), 4),
}
_EPISODE_TEXT = ("episode_id", "robot_id", "task", "instruction")
_EPISODE_BOOLS = ("success", "terminated")
_EPISODE_FLOATS = ("progress", "cycle_time_s", "created_at")
_EPISODE_FIELDS = frozenset(f.name for f in dataclasses.fields(Episode))


class WireError(ValueError):
    """A payload cannot be decoded; the message says what is wrong with it."""


def _refuse_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not allowed; send only plain values")


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpackb(data: bytes | bytearray | memoryview, what: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"{what} must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise WireError(f"{what} is empty; expected a msgpack map")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext)
    except WireError:
        raise
    except msgpack.ExtraData as exc:
        raise WireError(
            f"{what} has {len(exc.extra)} trailing byte(s) after the msgpack value; "
            "send exactly one encoded value"
        ) from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        detail = str(exc) or type(exc).__name__
        raise WireError(
            f"{what} ({len(data)} bytes) is not valid msgpack ({detail}); "
            "was it truncated or corrupted in transit?"
        ) from None
    except RecursionError:
        raise WireError(f"{what} is nested too deeply to decode") from None


# ---------------------------------------------------------------------------------- arrays
def pack_array(arr: np.ndarray) -> dict[str, Any]:
    """One array as a msgpack-ready map ``{"dtype", "shape", "data"}`` (C order, little-endian).

    Raises:
        TypeError: ``arr`` is not a numpy array of bools, ints or floats.
    """
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(arr).__name__}")
    if arr.dtype.kind not in _ARRAY_KINDS:
        raise TypeError(f"cannot send arrays of dtype {arr.dtype}; only bool, int and float")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    arr = np.ascontiguousarray(arr)
    return {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_array(
    obj: object, name: str, dtype: np.dtype | None = None, ndim: int | None = None
) -> np.ndarray:
    """The array encoded by :func:`pack_array`, checked.

    The result is a read-only view of the payload's bytes (copy it to modify it).

    Args:
        obj: the decoded map.
        name: the field's name, for error messages.
        dtype: the dtype the field must have, if any.
        ndim: the rank the field must have, if any.

    Raises:
        WireError: naming ``name`` and the problem.
    """
    if not isinstance(obj, dict):
        raise WireError(f"{name} is a {type(obj).__name__}; expected an array map")
    if set(obj) != {"dtype", "shape", "data"}:
        raise WireError(
            f"{name} has keys {sorted(map(str, obj))}; expected exactly ['data', 'dtype', 'shape']"
        )
    dtype_str, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(dtype_str, str):
        raise WireError(f"{name} has a dtype of type {type(dtype_str).__name__}; expected a str")
    try:
        found = np.dtype(dtype_str)
    except (TypeError, ValueError):
        raise WireError(f"{name} has unknown dtype {dtype_str!r}") from None
    if found.kind not in _ARRAY_KINDS or found.byteorder == ">" or found.str != dtype_str:
        raise WireError(
            f"{name} has dtype {dtype_str!r}; expected a little-endian bool, int or float "
            "dtype string such as '<f4' or '|u1'"
        )
    if dtype is not None and found != dtype:
        raise WireError(f"{name} has dtype {found}; expected {np.dtype(dtype)}")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise WireError(f"{name} has shape {shape!r}; expected a list of non-negative ints")
    if ndim is not None and len(shape) != ndim:
        raise WireError(f"{name} has {len(shape)} dimension(s) {tuple(shape)}; expected {ndim}")
    if not isinstance(data, bytes):
        raise WireError(f"{name} has data of type {type(data).__name__}; expected bin bytes")
    expected = math.prod(shape) * found.itemsize
    if len(data) != expected:
        raise WireError(
            f"{name} has {len(data)} data bytes; shape {tuple(shape)} of {found} needs {expected}"
        )
    return np.frombuffer(data, dtype=found).reshape(shape)


def encode_arrays(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """A dict of named arrays, plus JSON-like metadata, as one msgpack payload.

    Args:
        arrays: name -> numpy array (bool, int or float).
        meta: plain values (str, int, float, bool, None, lists and str-keyed dicts of those).
    """
    body = {
        "format": ARRAYS_FORMAT,
        "arrays": {str(k): pack_array(v) for k, v in arrays.items()},
        "meta": dict(meta or {}),
    }
    try:
        return _packb(body)
    except TypeError as exc:
        raise TypeError(f"metadata is not msgpack-serialisable: {exc}") from exc


def decode_arrays(data: bytes | bytearray | memoryview) -> tuple[dict[str, np.ndarray], dict]:
    """Inverse of :func:`encode_arrays`: ``(arrays, meta)``; arrays are read-only.

    Raises:
        WireError: the payload is not an encoded dict of arrays.
    """
    obj = _check_format(_unpackb(data, "payload"), ARRAYS_FORMAT, {"arrays", "meta"})
    arrays, meta = obj["arrays"], obj["meta"]
    if not isinstance(arrays, dict) or not isinstance(meta, dict):
        raise WireError("payload's 'arrays' and 'meta' must both be maps")
    if not all(isinstance(k, str) for k in arrays):
        raise WireError("payload's array names must be strings")
    return {k: unpack_array(v, k) for k, v in arrays.items()}, meta


def _check_format(obj: object, fmt: str, keys: set[str] | frozenset[str]) -> dict:
    if not isinstance(obj, dict):
        raise WireError(f"payload is a msgpack {type(obj).__name__}; expected a map")
    if not all(isinstance(k, str) for k in obj):
        raise WireError(
            f"payload has non-string key(s) {[k for k in obj if not isinstance(k, str)]}"
        )
    if obj.get("format") != fmt:
        raise WireError(
            f"payload has format {obj.get('format')!r}; expected {fmt!r} "
            "(was it encoded by a different lwd version, or sent to the wrong endpoint?)"
        )
    missing = sorted(keys - obj.keys())
    extra = sorted(obj.keys() - keys - {"format"})
    if missing or extra:
        parts = ([f"missing field(s) {missing}"] if missing else []) + (
            [f"unexpected field(s) {extra}"] if extra else []
        )
        raise WireError(f"{fmt} payload has {' and '.join(parts)}")
    return obj


# -------------------------------------------------------------------------------- episodes
def encode_episode(ep: Episode) -> bytes:
    """An episode as msgpack bytes; nothing is validated (see :func:`validate_episode`).

    Raises:
        TypeError: a field has a type the wire cannot carry (e.g. an array of objects).
    """
    if not isinstance(ep, Episode):
        raise TypeError(f"expected an Episode, got {type(ep).__name__}")
    body: dict[str, Any] = {"format": EPISODE_FORMAT}
    for f in dataclasses.fields(Episode):
        value = getattr(ep, f.name)
        if f.name in _EPISODE_ARRAYS:
            body[f.name] = None if value is None else pack_array(np.asarray(value))
        elif isinstance(value, np.generic):
            body[f.name] = value.item()
        else:
            body[f.name] = value
    try:
        return _packb(body)
    except TypeError as exc:
        raise TypeError(f"episode {ep.episode_id} cannot be encoded: {exc}") from exc


def decode_episode(data: bytes | bytearray | memoryview) -> Episode:
    """The episode encoded by :func:`encode_episode`; its arrays are read-only.

    Raises:
        WireError: the payload is truncated or garbled, has missing or extra fields, or a
            field has the wrong type, dtype, rank or byte count.
    """
    obj = _check_format(_unpackb(data, "episode payload"), EPISODE_FORMAT, _EPISODE_FIELDS)
    ep_id = obj.get("episode_id")
    where = f"episode {ep_id}" if isinstance(ep_id, str) else "episode"
    fields: dict[str, Any] = {}
    for name in _EPISODE_TEXT:
        value = obj[name]
        if not isinstance(value, str):
            raise WireError(f"{where} has {name} of type {type(value).__name__}; expected a str")
        fields[name] = value
    for name in _EPISODE_BOOLS:
        value = obj[name]
        if not isinstance(value, bool):
            raise WireError(f"{where} has {name} of type {type(value).__name__}; expected a bool")
        fields[name] = value
    for name in _EPISODE_FLOATS:
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WireError(f"{where} has {name} of type {type(value).__name__}; expected a number")
        fields[name] = float(value)
    for name, (dtype, ndim) in _EPISODE_ARRAYS.items():
        value = obj[name]
        if value is None and name == "images":
            fields[name] = None
            continue
        fields[name] = unpack_array(value, f"{where}'s {name}", dtype, ndim)
    return Episode(**fields)
