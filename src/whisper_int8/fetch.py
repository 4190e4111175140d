"""The fetch_model stage's work: resolve a model source into ``models/fp32/``."""

from __future__ import annotations

import logging
import platform
from dataclasses import asdict
from pathlib import Path

import torch
import whisper

from . import __version__
from .fsutil import atomic_dir, atomic_write_json, sha256_file
from .memory import MB
from .model_sources import load_source, save_checkpoint
from .stage_files import CARD, CHECKPOINT, FP32_CHECKPOINT_SHA256

log = logging.getLogger(__name__)

FP32_DIR_FILES = (CHECKPOINT, CARD)  # what models/fp32 holds


def fetch_model(source: str, out_dir: Path | str) -> dict:
    """Load ``source`` as FP32 and write ``out_dir/model.pt`` and ``out_dir/model_card.json`` atomically."""
    log.info("resolving model source %s", source)
    loaded = load_source(source)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    log.info("loaded %s: %.1f M parameters, %s", source, n_params / 1e6, loaded.dims)
    with atomic_dir(out_dir) as tmp:
        save_checkpoint(tmp / CHECKPOINT, loaded)
        card = {
            **loaded.provenance,
            "dims": asdict(loaded.dims),
            "parameters": n_params,
            "multilingual": loaded.model.is_multilingual,
            "alignment_heads": loaded.alignment_heads,
            "checkpoint": CHECKPOINT,
            FP32_CHECKPOINT_SHA256: sha256_file(tmp / CHECKPOINT),
            "bytes": (tmp / CHECKPOINT).stat().st_size,
            "dtype": "float32",
            "versions": {
                "whisper_int8": __version__,
                "torch": torch.__version__,
                "openai-whisper": whisper.__version__,
                "python": platform.python_version(),
            },
        }
        atomic_write_json(tmp / CARD, card)
    log.info("wrote %s (%.1f MB)", Path(out_dir) / CHECKPOINT, card["bytes"] / MB)  # as evaluate reports it
    return card
