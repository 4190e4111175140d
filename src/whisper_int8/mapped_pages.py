"""Keep a file-mapped INT8 model's pages out of RSS: read once while packing, then only on lookups."""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _madvise():
    """libc's madvise, or None where there is none (not Linux): pages then simply stay resident."""
    if getattr(mmap, "MADV_DONTNEED", None) is None:
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def unmap_resident_pages(path: Path, state: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """Drop the resident pages of the mapping ``state`` was loaded from; they are re-read on access.

    An INT8 model is loaded with ``torch.load(mmap=True)``: fbgemm packs every int8 matrix into
    its own buffer, reading the whole file once, but afterwards the file is read only where the
    token embedding is looked up and for the small float tensors. Without this the pages read while
    packing stay counted in RSS (26 MB of embedding alone for Whisper base). Only the mapping holding
    ``state`` is advised, right after loading: a private page once written is anonymous and this
    would revert it, so another model mapped from the same file is left alone. The pages stay in the
    page cache (on tmpfs nothing is freed), and the model reads the file for its whole life: replace
    it atomically (as the stages and ``pull`` do), never in place. Returns the advised address ranges.
    """
    madvise = _madvise()
    if madvise is None:
        return []
    try:  # bytes: any file this process maps may have a name that is not UTF-8
        maps = Path("/proc/self/maps").read_bytes().splitlines()
    except OSError:
        return []
    target = os.fsencode(path.resolve())
    pointers = [t.untyped_storage().data_ptr() for t in state.values()]
    advised = []
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split(b"-"))
            if any(start <= p < end for p in pointers):
                if madvise(start, end - start, mmap.MADV_DONTNEED):
                    log.debug("madvise(%s): errno %d; its pages stay resident", path, ctypes.get_errno())
                else:
                    advised.append((start, end))
    return advised


def drop_table_pages_after_lookups(embedding: torch.nn.Module, mapped: list[tuple[int, int]]) -> None:
    """After every lookup, drop the pages of the file-mapped int8 table the lookup made resident.

    A lookup reads one 512-byte row per token, but the kernel maps every page around the fault
    that is in the page cache (fault-around, whole large folios): after a few clips 15 MB of the
    26 MB int8 embedding of Whisper base were counted in RSS, and a server's would creep to all of
    it. One ``madvise`` over the table after each lookup (tens of microseconds, next to milliseconds
    per decoding step) keeps it at zero. Only whole pages inside the table are advised, never a
    page it shares with a neighbouring tensor that someone may have written. The table must stay
    read-only: a written private page is anonymous and this would revert it, so the hook stops
    for good once the table is written in place (its version counter moves) or the module holds
    another tensor. Nothing is done unless the table lies inside one of the ``mapped`` file
    ranges: on anonymous memory ``MADV_DONTNEED`` would zero it.
    """
    madvise, page, table = _madvise(), mmap.PAGESIZE, embedding.weight_int8
    first, last = table.data_ptr(), table.data_ptr() + table.numel() * table.element_size()
    if madvise is None or not any(a <= first and last <= b for a, b in mapped):
        return
    begin, end = -(-first // page) * page, last // page * page  # whole pages inside the table
    if end <= begin:
        return

    version = table._version

    def drop(module, args, output) -> None:
        if module.weight_int8 is table and table._version == version:
            madvise(begin, end - begin, mmap.MADV_DONTNEED)
        else:
            handle.remove()

    handle = embedding.register_forward_hook(drop)
