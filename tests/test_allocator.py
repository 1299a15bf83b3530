"""The allocator setting is applied on glibc and reported honestly elsewhere."""

import platform

import pytest

from lwd.allocator import keep_freed_memory


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_keep_freed_memory_applies_on_glibc():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # idempotent (cached)
