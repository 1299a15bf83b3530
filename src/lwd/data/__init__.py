"""lwd.data: episode schema and validation, the Parquet episode codec, the EpisodeStore,
action-chunk windows, and the RL replay buffer with its offline/online mixer."""

from lwd.data.parquet_codec import EpisodeFileError, read_episode, write_episode
from lwd.data.replay import EpisodeInfo, MixedReplay, ReplayBuffer
from lwd.data.schema import EpisodeValidationError, content_hash, validate_episode
from lwd.data.store import (
    EpisodeConflictError,
    EpisodeNotFoundError,
    EpisodeStore,
    SnapshotNotFoundError,
)
from lwd.data.windows import chunk_indices, chunk_windows

__all__ = [
    "EpisodeConflictError",
    "EpisodeFileError",
    "EpisodeNotFoundError",
    "EpisodeInfo",
    "EpisodeStore",
    "EpisodeValidationError",
    "MixedReplay",
    "ReplayBuffer",
    "SnapshotNotFoundError",
    "chunk_indices",
    "chunk_windows",
    "content_hash",
    "read_episode",
    "validate_episode",
    "write_episode",
]
