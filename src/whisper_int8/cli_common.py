"""Shared command-line plumbing for the stage scripts: --help, logging, clean error exits."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable

from tqdm.contrib.logging import logging_redirect_tqdm

from .audio.errors import AudioInputError
from .cpu import ActivationBitsError
from .ct2 import CT2FormatError
from .fsutil import OutputConflictError
from .model_sources import ModelSourceError
from .params import ParamError
from .quant.cpu import BackendError
from .stdio import exit_if_stdout_closed
from .tracking_uri import RegistryError, TrackingError

# Errors whose message already says what went wrong and what to do: print it, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ParamError,
    ModelSourceError,
    CT2FormatError,
    FileNotFoundError,
    TrackingError,
    RegistryError,
    AudioInputError,
    OutputConflictError,
    ActivationBitsError,
    BackendError,
)


def stage_parser(description: str, params: bool = True) -> argparse.ArgumentParser:
    """The options every stage and benchmark shares; ``params``: it reads a parameter file."""
    parser = argparse.ArgumentParser(description=description)
    if params:
        parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a CI timeout) exit through ``finally`` blocks, as Ctrl+C does, so a
    killed stage removes its half-written temp output instead of leaving it beside the real one.
    Worker processes forked later keep the default: they are stopped, not unwound."""
    main_pid = os.getpid()

    def terminate(signum: int, _frame: object) -> None:
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def run(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser) -> None:
    """Parse arguments, set up logging, run ``main``; user errors exit 2 with one clear line, Ctrl+C
    130 with one line."""
    args = parser.parse_args()
    exit_on_sigterm()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        with logging_redirect_tqdm():  # a log line printed above the progress bar, not through it
            code = main(args)
        sys.exit(code or 0)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl+C: the finally blocks have removed the temp outputs by now
        print("interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except BrokenPipeError:
        exit_if_stdout_closed()
        raise
