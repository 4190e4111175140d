"""Stage convert: models/fused + models/calibration -> models/int8 (params.yaml quant:)."""

import logging

import _preflight  # noqa: F401  (without the venv: one line saying how, not a traceback)

from whisper_int8.cli_common import run, stage_parser
from whisper_int8.params import load_params, section
from whisper_int8.quant.config import parse_quant_config
from whisper_int8.quant.convert_dir import convert_dir

log = logging.getLogger("convert")


def main(args) -> None:
    cfg = parse_quant_config(section(load_params(args.params), "quant", args.params), args.params)
    card = convert_dir(args.model, args.calibration, args.fp32, args.out, cfg)
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
