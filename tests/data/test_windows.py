"""Chunk windows: known answers on tiny shapes."""

from __future__ import annotations

import numpy as np
import pytest

from lwd.data.windows import chunk_indices, chunk_windows


def test_known_answer_t3_h2():
    actions = np.array([[0.1, -1.0], [0.2, -2.0], [0.3, -3.0]], dtype=np.float32)
    chunks, valid = chunk_windows(actions, 2)
    expected = np.array(
        [
            [[0.1, -1.0], [0.2, -2.0]],
            [[0.2, -2.0], [0.3, -3.0]],
            [[0.3, -3.0], [0.3, -3.0]],  # past the end: the last action, marked invalid
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(chunks, expected)
    np.testing.assert_array_equal(valid, [[True, True], [True, True], [True, False]])
    assert chunks.dtype == np.float32 and valid.dtype == bool


def test_horizon_longer_than_episode():
    chunks, valid = chunk_windows(np.array([[1.0], [2.0]]), 4)
    np.testing.assert_array_equal(chunks[..., 0], [[1, 2, 2, 2], [2, 2, 2, 2]])
    np.testing.assert_array_equal(valid, [[1, 1, 0, 0], [1, 0, 0, 0]])


def test_horizon_one_is_the_actions():
    actions = np.arange(12.0).reshape(4, 3)
    chunks, valid = chunk_windows(actions, 1)
    np.testing.assert_array_equal(chunks[:, 0], actions)
    assert valid.all()


def test_empty_episode_and_bad_arguments():
    chunks, valid = chunk_windows(np.zeros((0, 5), np.float32), 3)
    assert chunks.shape == (0, 3, 5) and valid.shape == (0, 3)
    index, _ = chunk_indices(3, 2)
    np.testing.assert_array_equal(index, [[0, 1], [1, 2], [2, 2]])
    with pytest.raises(ValueError, match="H must be >= 1"):
        chunk_windows(np.zeros((3, 5)), 0)
    with pytest.raises(ValueError, match=r"\(T, A\)"):
        chunk_windows(np.zeros(3), 2)
