"""Stage fetch_model: resolve params.yaml model.source into an FP32 openai-whisper checkpoint."""

import _preflight  # noqa: F401  (without the venv: one line saying how, not a traceback)

from whisper_int8.cli_common import run, stage_parser
from whisper_int8.fetch import FP32_DIR_FILES, fetch_model
from whisper_int8.fsutil import check_dir_output
from whisper_int8.model_sources import source_from_params
from whisper_int8.params import load_params, section


def main(args) -> None:
    model = section(load_params(args.params), "model", args.params)
    check_dir_output(args.out, FP32_DIR_FILES)  # before a conversion or download, not after it
    fetch_model(source_from_params(model, args.params), args.out)


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="models/fp32", help="output directory (default: models/fp32)")
    run(main, parser)
