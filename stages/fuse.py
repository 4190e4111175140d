"""Stage fuse: models/fp32 -> models/fused (self-attention Q/K/V and cross-attention K/V fused)."""

import _preflight  # noqa: F401  (without the venv: one line saying how, not a traceback)

from whisper_int8.cli_common import run, stage_parser
from whisper_int8.fsutil import atomic_dir, check_dir_output
from whisper_int8.fuse import FUSED_DIR_FILES, fuse_model, save_fused_dir
from whisper_int8.stage_files import FP32_SHA256, fp32_digest, load_fp32


def main(args) -> None:
    check_dir_output(args.out, FUSED_DIR_FILES)  # before the work, not after it
    loaded = load_fp32(args.model)  # the checkpoint its card records: fp32_digest trusts the card
    counts = fuse_model(loaded.model)
    source = {"source_dir": str(args.model), FP32_SHA256: fp32_digest(args.model)}
    with atomic_dir(args.out) as tmp:
        save_fused_dir(tmp, loaded.model, loaded.alignment_heads, counts, source)


if __name__ == "__main__":
    parser = stage_parser(__doc__, params=False)  # fuse has no settings
    parser.add_argument("--model", default="models/fp32", help="FP32 model directory (default: models/fp32)")
    parser.add_argument("--out", default="models/fused", help="output directory (default: models/fused)")
    run(main, parser)
