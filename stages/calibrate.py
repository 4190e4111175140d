"""Stage calibrate: activation statistics and per-layer INT8 sensitivity of models/fused."""

from whisper_int8.audio import read_manifest
from whisper_int8.calibrate import calibrate
from whisper_int8.cli_common import run, stage_parser
from whisper_int8.fsutil import atomic_dir
from whisper_int8.model_dir import load_model_dir
from whisper_int8.params import ParamError, load_params, section


def _settings(params: dict, where: str) -> tuple[int, float, int | None]:
    cfg = section(params, "calibrate", where)
    unknown = sorted(set(cfg) - {"sensitivity_clips", "percentile", "max_clips"})
    if unknown:
        raise ParamError(f"{where}: unknown calibrate key(s) {unknown}")
    n = cfg.get("sensitivity_clips", 3)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ParamError(f"{where}: calibrate.sensitivity_clips={n!r}: expected an integer >= 1")
    p = cfg.get("percentile", 99.99)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 50 <= p <= 100:
        raise ParamError(f"{where}: calibrate.percentile={p!r}: expected a number in [50, 100]")
    m = cfg.get("max_clips")
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
        raise ParamError(f"{where}: calibrate.max_clips={m!r}: expected null (all clips) or an integer >= 1")
    return n, float(p), m


def main(args) -> None:
    n, percentile, max_clips = _settings(load_params(args.params), args.params)
    clips = read_manifest(args.split)[:max_clips]
    model = load_model_dir(args.model)
    with atomic_dir(args.out) as tmp:
        calibrate(model, clips, tmp, n, percentile)


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
