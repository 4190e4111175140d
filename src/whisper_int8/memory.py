"""Peak resident memory of this process, resettable, so a figure covers one phase (transcription).

``ru_maxrss`` is the peak over the process's whole life, and a child started by ``spawn`` inherits its
parent's: it would report the model's load spike, or whatever the parent once held. Linux's VmHWM
starts fresh with each program and can be reset (``clear_refs``); elsewhere the lifetime peak is used.
"""

from __future__ import annotations

import logging
import resource
import sys
from pathlib import Path

log = logging.getLogger(__name__)
MB = 1024 * 1024
_STATUS = Path("/proc/self/status")


def _status_kb(field: str) -> int | None:
    """``field`` of /proc/self/status in kB; read as bytes, since its ``Name:`` is whatever the process
    was called, cut at 15 bytes (possibly inside a UTF-8 character)."""
    try:
        for line in _STATUS.read_bytes().splitlines():
            if line.startswith(field.encode() + b":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Resident memory now (MB); the lifetime peak where /proc is missing."""
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident memory (MB) since the program started or since :func:`reset_peak_rss`."""
    kb = _status_kb("VmHWM")
    if kb is None:  # no /proc: the lifetime peak, in bytes on macOS and KiB elsewhere
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / MB if sys.platform == "darwin" else peak / 1024
    return kb / 1024


def reset_peak_rss() -> bool:
    """Start a new peak from the current RSS (Linux: write 5 to clear_refs); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        log.warning("cannot reset the peak RSS here (/proc/self/clear_refs); reporting the process peak")
        return False
