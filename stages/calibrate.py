"""Stage calibrate: activation statistics and per-layer INT8 sensitivity of models/fused."""

import _preflight  # noqa: F401  (without the venv: one line saying how, not a traceback)

from whisper_int8.audio import first_per_language, read_manifest
from whisper_int8.calibrate import CALIBRATION_FILES, calibrate, calibrate_settings
from whisper_int8.cli_common import run, stage_parser
from whisper_int8.fsutil import atomic_dir, check_dir_output
from whisper_int8.model_dir import fused_digest, load_fused_dir
from whisper_int8.params import load_params


def main(args) -> None:
    n, percentile, per_language = calibrate_settings(load_params(args.params), args.params)
    check_dir_output(args.out, CALIBRATION_FILES)  # before the work, not after it
    clips = first_per_language(read_manifest(args.split), per_language)
    model = load_fused_dir(args.model)
    digest = fused_digest(args.model)  # the one load_fused_dir checked the file against
    with atomic_dir(args.out) as tmp:
        calibrate(model, clips, tmp, n, percentile, model_sha256=digest)


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--model", default="models/fused", help="fused model directory (default: models/fused)"
    )
    parser.add_argument(
        "--split", default="data/calibration", help="calibration split (default: data/calibration)"
    )
    parser.add_argument(
        "--out", default="models/calibration", help="output directory (default: models/calibration)"
    )
    run(main, parser)
