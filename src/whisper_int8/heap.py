"""Give the heap pages glibc keeps after ``free`` back to the kernel, at the points where that pays.

glibc keeps freed memory for reuse; with the encoder's and decoder's multi-megabyte activations it
fragments, so a process's RSS holds tens of MB of freed buffers between calls and the cross-attention
keys and values of the next decoding come on top of them. ``malloc_trim(0)`` releases every free
page at once: after loading (the state dict and packing buffers), before the encoder (the previous
call's garbage) and after it (its activations, before the keys and values exist).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools


@functools.cache
def _malloc_trim():
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to release
        return ctypes.CDLL("libc.so.6").malloc_trim
    return None


def release_freed() -> None:
    """``malloc_trim(0)`` where glibc is the allocator (a no-op elsewhere; about 3 ms after a clip)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
