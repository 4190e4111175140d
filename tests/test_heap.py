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


def test_the_peak_rss_restarts_from_the_current_rss():
    """peak_rss_mb while transcribing relies on it: a freed 300 MB spike (as loading leaves) is out."""
    import numpy as np

    spike = np.ones(300 * 2**20, dtype=np.uint8)  # touched: resident
    del spike
    assert memory.peak_rss_mb() > memory.rss_mb() + 200
    if not memory.reset_peak_rss():
        pytest.skip("/proc/self/clear_refs cannot be written here")
    assert memory.peak_rss_mb() < memory.rss_mb() + 50


def test_the_memory_figures_survive_a_process_name_that_is_not_utf8(tmp_path, monkeypatch):
    """Regression: /proc/self/status was read as UTF-8 text, but its Name: is the program's name cut
    at 15 bytes, possibly inside a character (a script "aоценка-модели" run by its shebang): every
    rss_mb and peak_rss_mb then failed with a UnicodeDecodeError, after the whole evaluation."""
    status = tmp_path / "status"
    name = "aоценка-модели".encode()[:15]  # as the kernel cuts it: mid-character
    status.write_bytes(b"Name:\t" + name + b"\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n")
    monkeypatch.setattr(memory, "_STATUS", status)
    assert memory.peak_rss_mb() == 200.0 and memory.rss_mb() == 100.0
