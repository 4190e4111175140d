"""Standard output as a pipeline reader sees it; kept free of torch so the CLI starts fast."""

from __future__ import annotations

import os
import select
import signal
import sys


def exit_if_stdout_closed() -> None:
    """``whisper-int8 alias | head -1``: the reader stopped reading, which is no error of ours. Exit as
    a shell's pipeline expects (141, SIGPIPE) without a traceback; a pipe other than stdout (a worker
    that died) is left to raise."""
    poll = select.poll()
    poll.register(sys.stdout.fileno(), select.POLLOUT)
    if any(events & select.POLLERR for _, events in poll.poll(0)):  # a pipe with no reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush fails too
        sys.exit(128 + signal.SIGPIPE)


def printable(path: str) -> str:
    """``path`` as any UTF-8 stdout can print it: a file name that is not UTF-8 (Latin-1 ``café.wav``
    arrives as lone surrogates) gets its odd bytes as ``\\xe9`` escapes instead of failing the print,
    which in a UTF-8 locale other than C.UTF-8 stopped the batch after the files before it."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# What ends a line or a tab-separated field for some reader: C0 controls (tab, newline, carriage
# return, the \v \f \x1c-\x1e that str.splitlines breaks at), DEL, C1 controls (\x85), U+2028/2029.
_LINE_BREAKERS = {c: repr(chr(c))[1:-1] for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}


def tsv_field(text: str) -> str:
    """``text`` as one field of a tab-separated line: its tabs, newlines and other control characters
    as Python's escapes (``\\t``, ``\\n``, ``\\x1b``). A file name holding a tab or newline split its
    transcript's row in two, so a reader paired the wrong name and text; ``--json`` gives it whole."""
    return text.translate(_LINE_BREAKERS)
