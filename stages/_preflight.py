"""Imported by every stage script before the project's modules: without its environment, one line.

DVC runs ``python stages/...`` with whichever ``python`` PATH finds first. Outside the project's venv
that Python lacks its packages, and the first import would end in a ModuleNotFoundError traceback
naming a module, not the fix. (Only looked up, not imported: no cost when they are there.) Found
as the script's neighbour: run the stages as ``python stages/<name>.py`` (``python -P`` or ``-I``
leave the script's folder off ``sys.path``).

It then puts this checkout's ``src/`` first on ``sys.path``: the venv's editable install names one
checkout, but ``dvc exp run --queue`` / ``--temp`` run the stages in a copy under ``.dvc/tmp/exps/``
whose ``src/`` is the code DVC hashes into that experiment's dvc.lock. Importing the workspace's copy
instead ran whatever the workspace held when the queue reached the experiment (an edit made after
queueing), under a lock recording other code.
"""

import importlib.util
import sys
from pathlib import Path

_missing = [name for name in ("whisper_int8", "whisper", "torch") if importlib.util.find_spec(name) is None]
if _missing:
    sys.stderr.write(
        f"error: {sys.executable} cannot import {', '.join(_missing)}: run the stages in the project's "
        "environment: `make repro`, or `make setup` then `PATH=$PWD/.venv/bin:$PATH dvc repro`\n"
    )
    sys.exit(2)

SRC = Path(__file__).resolve().parent.parent / "src"
if (SRC / "whisper_int8" / "__init__.py").is_file():
    sys.path.insert(1, str(SRC))  # after the script's folder (this module), before site-packages
