"""Stage convert: models/fused + models/calibration -> models/int8 (params.yaml quant:)."""

import logging
from pathlib import Path

import torch

from whisper_int8.calibrate import load_calibration
from whisper_int8.cli_common import run, stage_parser
from whisper_int8.fsutil import atomic_dir, dir_bytes
from whisper_int8.model_dir import load_model_dir
from whisper_int8.params import load_params
from whisper_int8.quant.config import parse_quant_config
from whisper_int8.quant.convert import quantize_model, save_int8_dir

log = logging.getLogger("convert")


def main(args) -> None:
    cfg = parse_quant_config(load_params(args.params).get("quant"), args.params)
    stats, sens = load_calibration(Path(args.calibration))
    model = load_model_dir(args.model)
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    with torch.no_grad():
        report = quantize_model(model, cfg, stats, sens)
    with atomic_dir(args.out) as tmp:
        card = save_int8_dir(tmp, model, cfg, report, heads, dir_bytes(args.fp32))
    log.info("%s: %d bytes, %.1f%% of FP32, %d int8 / %d float Linear layers", args.out, card["bytes"],
             100 * card["ratio_to_fp32"], card["int8_linear"], card["float_linear"])  # fmt: skip


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--model", default="models/fused", help="fused model directory (default: models/fused)"
    )
    parser.add_argument("--calibration", default="models/calibration", help="calibration directory")
    parser.add_argument("--fp32", default="models/fp32", help="FP32 model directory, for the size ratio")
    parser.add_argument("--out", default="models/int8", help="output directory (default: models/int8)")
    run(main, parser)
