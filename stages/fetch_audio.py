"""Stage fetch_audio: build the multilingual calibration and evaluation corpus (params.yaml ``audio``)."""

from pathlib import Path

import _preflight  # noqa: F401  (without the venv: one line saying how, not a traceback)

from whisper_int8.audio.build import build, parse_params
from whisper_int8.cli_common import run, stage_parser
from whisper_int8.params import load_params, section


def main(args) -> None:
    params = parse_params(section(load_params(args.params), "audio", args.params), args.params)
    summary = build(params, Path(args.calibration), Path(args.eval), Path(args.summary), args.params)
    for split, s in summary["splits"].items():
        print(f"{split}: {s['clips']} clips, {s['minutes']:.1f} min")
    if summary["skipped"]["count"]:
        print(f"skipped {summary['skipped']['count']} item(s); see {args.summary}")


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--calibration", default="data/calibration", help="calibration split directory")
    parser.add_argument("--eval", default="data/eval", help="evaluation split directory")
    parser.add_argument("--summary", default="data/audio_summary.json", help="per-language counts, minutes")
    run(main, parser)
