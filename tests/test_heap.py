"""release_freed: the free pages glibc keeps inside a fragmented heap go back to the kernel."""

from __future__ import annotations

import ctypes

import pytest

from whisper_int8 import memory
from whisper_int8.heap import _malloc_trim, release_freed


@pytest.mark.skipif(_malloc_trim() is None, reason="needs glibc")
def test_release_freed_returns_the_free_pages_of_a_fragmented_heap():
    blocks = [ctypes.create_string_buffer(64 * 1024) for _ in range(800)]  # 50 MB, zeroed: resident
    kept = blocks[::8]  # every 8th stays: the heap cannot shrink from its top
    del blocks
    before = memory.rss_mb()
    release_freed()
    assert memory.rss_mb() < before - 25
    assert all(len(b) == 64 * 1024 for b in kept)
