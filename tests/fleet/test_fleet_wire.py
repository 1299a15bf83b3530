"""The msgpack wire codec: exact round trips and a clear WireError for every bad payload."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from conftest import assert_same_episode

from lwd.fleet.wire import (
    EPISODE_FORMAT,
    WireError,
    decode_arrays,
    decode_episode,
    encode_arrays,
    encode_episode,
    pack_array,
    unpack_array,
)
from lwd.types import Episode, Source


def _body(ep: Episode) -> dict:
    return msgpack.unpackb(encode_episode(ep), raw=False)


def _pack(body: dict) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def test_episode_round_trip_is_exact(make_episode):
    ep = make_episode(9, success=True, source=Source.DEMO)
    ep = dataclasses.replace(ep, states=ep.states * np.float32(1e-30))  # subnormals survive
    out = decode_episode(encode_episode(ep))
    assert_same_episode(out, ep)
    assert out.images is None


def test_images_round_trip_as_uint8(make_episode):
    ep = make_episode(5, images=(6, 7))
    out = decode_episode(encode_episode(ep))
    assert_same_episode(out, ep)
    assert out.images.dtype == np.uint8 and out.images.shape == (6, 6, 7, 3)


def test_decoded_arrays_are_read_only(make_episode):
    out = decode_episode(encode_episode(make_episode(3)))
    with pytest.raises(ValueError, match="read-only"):
        out.actions[0, 0] = 0.0


def test_encoding_does_not_validate(make_episode):
    # The codec carries what it is given; the store's validation rejects it later.
    ep = make_episode(4)
    bad = dataclasses.replace(ep, actions=np.full_like(ep.actions, np.nan), progress=7.0)
    out = decode_episode(encode_episode(bad))
    assert np.isnan(out.actions).all() and out.progress == 7.0


def test_numpy_scalars_are_encoded_as_plain_values(make_episode):
    ep = make_episode(3)
    ep = dataclasses.replace(ep, success=np.bool_(False), progress=np.float32(0.5))
    out = decode_episode(encode_episode(ep))
    assert out.success is False and out.progress == 0.5


@pytest.mark.parametrize("cut", [1, 10, 0.5, -1])
def test_truncated_payload_is_a_wire_error(make_episode, cut):
    payload = encode_episode(make_episode(4))
    n = int(len(payload) * cut) if isinstance(cut, float) else cut
    with pytest.raises(WireError, match="not valid msgpack.*truncated"):
        decode_episode(payload[:n])


def test_garbage_empty_and_trailing_bytes(make_episode):
    with pytest.raises(WireError, match="empty"):
        decode_episode(b"")
    with pytest.raises(WireError, match="not valid msgpack"):
        decode_episode(b"\xc1\xc1\xc1")
    with pytest.raises(WireError, match="trailing"):
        decode_episode(encode_episode(make_episode(2)) + b"\x00")
    with pytest.raises(WireError, match="expected a map"):
        decode_episode(msgpack.packb([1, 2, 3]))
    with pytest.raises(WireError, match="must be bytes"):
        decode_episode("not bytes")  # type: ignore[arg-type]


def test_missing_extra_and_wrong_format_fields(make_episode):
    body = _body(make_episode(3))
    del body["rewards"]
    with pytest.raises(WireError, match=r"missing field\(s\) \['rewards'\]"):
        decode_episode(_pack(body))
    body = _body(make_episode(3))
    body["reward_model"] = "x"
    with pytest.raises(WireError, match=r"unexpected field\(s\) \['reward_model'\]"):
        decode_episode(_pack(body))
    body = _body(make_episode(3))
    body["format"] = "lwd.episode.v0"
    with pytest.raises(WireError, match="format 'lwd.episode.v0'.*" + EPISODE_FORMAT):
        decode_episode(_pack(body))


def test_wrong_dtype_rank_and_byte_count(make_episode):
    ep = make_episode(3)
    with pytest.raises(WireError, match="actions has dtype float64; expected float32"):
        decode_episode(encode_episode(dataclasses.replace(ep, actions=ep.actions.astype("f8"))))
    with pytest.raises(WireError, match="rewards has 2 dimension"):
        decode_episode(encode_episode(dataclasses.replace(ep, rewards=ep.rewards[:, None])))
    body = _body(ep)
    body["states"]["data"] = body["states"]["data"][:-4]
    with pytest.raises(WireError, match="states has .* data bytes; shape"):
        decode_episode(_pack(body))
    body = _body(ep)
    body["states"]["shape"] = [-1, 78]
    with pytest.raises(WireError, match="non-negative ints"):
        decode_episode(_pack(body))
    body = _body(ep)
    body["sources"]["dtype"] = "|O"
    with pytest.raises(WireError, match="sources has dtype '|O'"):
        decode_episode(_pack(body))
    body = _body(ep)
    body["sources"]["dtype"] = "no-such-dtype"
    with pytest.raises(WireError, match="unknown dtype"):
        decode_episode(_pack(body))


def test_wrong_scalar_types(make_episode):
    for name, value, match in [
        ("success", 1, "success of type int; expected a bool"),
        ("progress", "0.5", "progress of type str; expected a number"),
        ("progress", True, "progress of type bool"),
        ("task", None, "task of type NoneType; expected a str"),
        ("images", "none", "images is a str; expected an array map"),
    ]:
        body = _body(make_episode(3))
        body[name] = value
        with pytest.raises(WireError, match=match):
            decode_episode(_pack(body))


def test_integer_floats_are_accepted(make_episode):
    body = _body(make_episode(3))
    body["created_at"] = 0
    assert decode_episode(_pack(body)).created_at == 0.0


def test_ext_types_and_non_str_keys_are_refused(make_episode):
    body = _body(make_episode(3))
    body["task"] = msgpack.ExtType(5, b"x")
    with pytest.raises(WireError, match="extension type 5"):
        decode_episode(_pack(body))
    body = _body(make_episode(3))
    body["created_at"] = msgpack.Timestamp(1, 0)  # ext type -1, decoded by msgpack itself
    with pytest.raises(WireError, match="created_at of type Timestamp"):
        decode_episode(_pack(body))
    with pytest.raises(WireError, match="not valid msgpack"):
        decode_episode(msgpack.packb({1: 2}))
    body = _body(make_episode(3))
    body[b"bin-key"] = 1
    with pytest.raises(WireError, match="non-string key"):
        decode_episode(_pack(body))


def test_arrays_round_trip_with_meta():
    arrays = {
        "state": np.arange(6, dtype=np.float32).reshape(2, 3),
        "image": np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 4), np.int64),
        "strided": np.arange(10, dtype=np.int32)[::2],
        "big_endian": np.arange(3, dtype=">f4"),
    }
    out, meta = decode_arrays(encode_arrays(arrays, meta={"instruction": "go", "k": [1, 2]}))
    assert meta == {"instruction": "go", "k": [1, 2]}
    assert set(out) == set(arrays)
    for k, v in arrays.items():
        assert out[k].shape == v.shape and np.array_equal(out[k], v), k
    assert out["big_endian"].dtype == np.dtype("<f4")


def test_pack_array_refuses_objects_and_unpack_checks_expectations():
    with pytest.raises(TypeError, match="dtype object"):
        pack_array(np.array([{}, None], dtype=object))
    packed = pack_array(np.zeros((2, 3), np.float32))
    with pytest.raises(WireError, match="x has dtype float32; expected uint8"):
        unpack_array(packed, "x", dtype=np.uint8)
    with pytest.raises(WireError, match=r"x has 2 dimension\(s\) \(2, 3\); expected 1"):
        unpack_array(packed, "x", ndim=1)
    with pytest.raises(WireError, match="expected exactly"):
        unpack_array({**packed, "order": "F"}, "x")
