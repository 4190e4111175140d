"""The CLIs' shared runner: exits and messages."""

from __future__ import annotations

import subprocess
import sys

from .conftest import venv_env

PRINTS_A_LOT = """
from whisper_int8.cli_common import run, stage_parser

def main(args):
    for i in range(200_000):
        print("version", i)

run(main, stage_parser("a listing", params=False))
"""


def test_a_reader_that_stops_reading_ends_the_listing_quietly(tmp_path):
    """Regression (a review): `whisper-int8 alias | head -1` ended in a BrokenPipeError traceback (and
    Python's own "Exception ignored ... BrokenPipeError" at exit)."""
    script = tmp_path / "listing.py"
    script.write_text(PRINTS_A_LOT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=venv_env())  # fmt: skip
    assert proc.stdout.readline() == b"version 0\n"
    proc.stdout.close()  # what head does after its line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr


def test_a_broken_pipe_that_is_not_stdout_still_raises(tmp_path):
    """A worker's pipe that broke (the worker died) is a failure to report, not a reader gone."""
    script = tmp_path / "worker.py"
    script.write_text(PRINTS_A_LOT.replace('print("version", i)', "raise BrokenPipeError(32, 'worker pipe')"))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=venv_env())
    assert proc.returncode == 1 and "BrokenPipeError: [Errno 32] worker pipe" in proc.stderr, proc.stderr
