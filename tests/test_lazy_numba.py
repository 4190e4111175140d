"""numba stays out of a process that imports whisper through this package, until word timestamps need it.

Each case runs in a fresh interpreter: pytest's own process imported whisper (and numba) already.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(script: str) -> str:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_whisper_imported_through_the_package_leaves_numba_out() -> None:
    out = _run(
        "import sys\n"
        "import whisper_int8.transcribe, whisper\n"
        "print('numba' in sys.modules, type(whisper.timing.dtw_cpu).__name__)\n"
    )
    assert out == "False _Deferred"


def test_word_timestamp_helpers_are_jitted_on_first_call() -> None:
    out = _run(
        "import sys, numpy as np\n"
        "import whisper_int8, whisper\n"
        "x = np.random.default_rng(0).random((7, 9))\n"
        "path = whisper.timing.dtw_cpu(x)\n"
        "import numba\n"
        "t = whisper.timing\n"
        "jitted = all(isinstance(f, numba.core.dispatcher.Dispatcher) for f in (t.dtw_cpu, t.backtrace))\n"
        "print(jitted, np.array_equal(path, t.dtw_cpu.py_func(x)), path.shape[0])\n"
    )
    assert out == "True True 2"


@pytest.mark.parametrize("before", ["import numba", "whisper_int8.lazy_numba.uninstall()"])
def test_stock_behaviour_when_numba_came_first_or_the_hook_is_removed(before: str) -> None:
    out = _run(
        "import sys\n"
        f"import whisper_int8.lazy_numba\n{before}\n"
        "import whisper, numba\n"
        "print(isinstance(whisper.timing.dtw_cpu, numba.core.dispatcher.Dispatcher))\n"
    )
    assert out == "True"
