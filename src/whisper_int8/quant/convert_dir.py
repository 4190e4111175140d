"""One conversion from directories to a directory: what the convert stage and the benchmarks share."""

from __future__ import annotations

from pathlib import Path

import torch

from ..calibrate import check_calibrated_on, load_calibration
from ..fsutil import atomic_dir, check_dir_output
from ..model_dir import check_fused_dir, load_fused_dir, model_bytes
from ..stage_files import CHECKPOINT, FP32_SHA256, check_fp32_file, check_made_from
from .config import QuantConfig
from .convert import INT8_DIR_FILES, check_layer_settings, quantize_model, save_int8_dir


def convert_dir(
    fused: Path | str, calibration: Path | str, fp32: Path | str, out: Path | str, cfg: QuantConfig
) -> dict:
    """``models/fused`` + ``models/calibration`` -> an INT8 directory at ``out`` (atomic); returns its card.

    ``fp32`` is measured, for the card's size ratio, and must hold the model ``fused`` was made from
    (its card's ``fp32_sha256``, passed on to the INT8 card; its model.pt hashed against its card, as
    every load of it is). It, ``fused`` and ``out`` are checked first, so a wrong path stops before the
    conversion's work, not after it.
    """
    if not (Path(fp32) / CHECKPOINT).is_file():
        raise FileNotFoundError(
            f"{fp32}: not the FP32 model directory (no model.pt; its size sets the card's ratio): give "
            "models/fp32"
        )
    check_dir_output(out, INT8_DIR_FILES)
    stats, sensitivity = load_calibration(Path(calibration))
    check_fused_dir(fused)
    check_calibrated_on(Path(calibration), Path(fused))
    check_fp32_file(fp32)
    source = check_made_from(fused, fp32, "the fused and FP32 model directories")
    check_layer_settings(stats, cfg, sensitivity)  # before the model is loaded
    fp32_bytes = model_bytes(fp32)
    model = load_fused_dir(fused)
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    with torch.no_grad():
        report = quantize_model(model, cfg, stats, sensitivity, str(calibration))
    with atomic_dir(out) as tmp:
        lineage = {FP32_SHA256: source} if source else {}
        return save_int8_dir(tmp, model, cfg, report, heads, fp32_bytes, lineage)
