"""Imported by every stage script before the project's modules: without its environment, one line.

DVC runs ``python stages/...`` with whichever ``python`` PATH finds first. Outside the project's venv
that Python lacks its packages, and the first import would end in a ModuleNotFoundError traceback
naming a module, not the fix. (Only looked up, not imported: no cost when they are there.) Found
as the script's neighbour: run the stages as ``python stages/<name>.py`` (``python -P`` or ``-I``
leave the script's folder off ``sys.path``).
"""

import importlib.util
import sys

_missing = [name for name in ("whisper_int8", "whisper", "torch") if importlib.util.find_spec(name) is None]
if _missing:
    sys.stderr.write(
        f"error: {sys.executable} cannot import {', '.join(_missing)}: run the stages in the project's "
        "environment: `make repro`, or `make setup` then `PATH=$PWD/.venv/bin:$PATH dvc repro`\n"
    )
    sys.exit(2)
