"""Read the JSON and tensor files the stages write, with one-line errors that name what to rerun.

Every stage reads files an earlier stage (or ``pull``) wrote: model cards, the quant config, the
calibration statistics, the FP32 baseline. A truncated or foreign file must stop the reader with the
file's name and the command that writes it again, not a JSON or unpickling traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .model_sources import ModelSourceError, torch_load_checked

CARD = "model_card.json"  # every model directory's description: bytes, counts, where it came from

# What to rerun when a file of this pipeline is unreadable (``rerun`` of the readers below).
ANY_STAGE = "the stage that writes it"
FUSE_STAGE = "the fuse stage (dvc repro fuse)"
CONVERT_STAGE = "the convert stage (dvc repro convert), or pull the model again"


def read_json(path: Path, rerun: str = ANY_STAGE) -> Any:
    """The JSON in ``path``, written by a stage; unreadable or invalid: a one-line error naming ``rerun``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError (binary garbage)
        raise ModelSourceError(f"{path}: unreadable ({e}); rerun {rerun}") from None


def load_tensors(path: Path, rerun: str = ANY_STAGE, mapped: bool = False) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` file written by a stage with ``torch.save`` (``weights_only=True``).

    A missing, truncated or foreign file is a one-line error naming it and ``rerun``, not torch's
    traceback. ``mapped``: ``torch.load(mmap=True)``, the tensors read from the file on access.
    """
    if not path.is_file():
        raise ModelSourceError(f"{path}: weights file missing; rerun {rerun}")
    state = torch_load_checked(path, f"rerun {rerun}", mapped)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(f"{path}: not a mapping of names to tensors; rerun {rerun}")
    return state
