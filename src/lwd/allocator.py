"""Keep freed tensor memory in the process heap instead of handing it back to the OS.

glibc serves allocations above its mmap threshold (128 KiB by default, raised on the fly to at
most the largest block freed so far) with fresh ``mmap`` pages and unmaps them on free, so a
learner update that allocates the same few-MiB activations every step page-faults on every
one of them: about 15,000 minor faults per update at width 512. Raising the thresholds once
makes those blocks come back from the heap already mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit
_TRIM_THRESHOLD = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no glibc.

    The heap then keeps up to the process's peak working set mapped (it does not grow the
    peak). Call it once, early, in processes that run many large tensor operations.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
