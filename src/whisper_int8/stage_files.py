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

from .fsutil import sha256_file
from .model_sources import LoadedModel, ModelSourceError, load_checkpoint, torch_load_checked

CHECKPOINT = "model.pt"  # models/fp32's weights: an openai-whisper checkpoint
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


# In the fused and INT8 model cards: the sha256 of the FP32 checkpoint they were made from, so that a
# conversion or an evaluation refuses an FP32 directory holding another model (`dvc repro -s`, a
# benchmark's --fp32) instead of measuring one model against another.
FP32_SHA256 = "fp32_sha256"


FP32_CHECKPOINT_SHA256 = "checkpoint_sha256"  # models/fp32's card: the sha256 of its model.pt


def _card(root: Path) -> dict:
    """``root``'s model card, {} when there is none (or it is no JSON object)."""
    card = read_json(root / CARD) if (root / CARD).is_file() else {}
    return card if isinstance(card, dict) else {}


def fp32_digest(root: Path | str) -> str | None:
    """The sha256 of the FP32 checkpoint ``root`` holds (models/fp32: as its card records it, else
    computed; :func:`load_fp32` checks the file against that record on every load) or was made from (a
    fused or INT8 card's :data:`FP32_SHA256`; None in a card older than it)."""
    root = Path(root)
    card = _card(root)
    if (root / CHECKPOINT).is_file():
        recorded = card.get(FP32_CHECKPOINT_SHA256)
        return recorded if isinstance(recorded, str) else sha256_file(root / CHECKPOINT)
    recorded = card.get(FP32_SHA256)
    return recorded if isinstance(recorded, str) else None


def check_made_from(made: Path | str, fp32: Path | str, what: str) -> str | None:
    """Raise unless the model in ``made`` came from the FP32 checkpoint of ``fp32`` (unknown for a card
    older than :data:`FP32_SHA256`: allowed); returns the sha256 ``made`` records, None when unknown:
    not ``fp32``'s, which a model made from it passes on as its own lineage, unchecked (a later
    evaluation against its true FP32 model was refused). ``what``: the params or options that named
    the two, for the message."""
    got, want = fp32_digest(made), fp32_digest(fp32)
    if got is not None and want is not None and got != want:
        raise ModelSourceError(
            f"{made} was made from another FP32 model than {fp32} holds (sha256 {got[:12]}..., not "
            f"{want[:12]}...): {what} must name one model's directories; run `dvc repro` to remake them"
        )
    return got


def check_fp32_file(root: Path | str, digest: str | None = None) -> str:
    """Raise unless ``root``'s model.pt is the checkpoint its card records (``digest``: its sha256, when
    the caller hashed it already); returns that sha256. The lineage checks take the record on trust
    (:func:`fp32_digest`), so a model.pt replaced under a kept card would pass them and be fused,
    measured or evaluated as the model the card names."""
    root = Path(root)
    digest = digest or sha256_file(root / CHECKPOINT)
    recorded = _card(root).get(FP32_CHECKPOINT_SHA256)
    if isinstance(recorded, str) and recorded != digest:
        raise ModelSourceError(
            f"{root / CHECKPOINT}: not the checkpoint {CARD} records (sha256 {digest[:12]}..., the card "
            f"{recorded[:12]}...): replaced or damaged; run `dvc repro fetch_model` (or `dvc checkout "
            f"{root}`)"
        )
    return digest


def load_fp32(root: Path | str) -> LoadedModel:
    """``root``'s model.pt, refused unless it is the checkpoint its card records (:func:`check_fp32_file`;
    free here: loading hashes the file anyway)."""
    loaded = load_checkpoint(Path(root) / CHECKPOINT)
    (digest,) = loaded.provenance["files"].values()
    check_fp32_file(root, digest)
    return loaded
