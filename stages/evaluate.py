"""Stage evaluate: transcribe the evaluation split with FP32 and INT8; write metrics, CSVs and charts."""

import logging
from pathlib import Path

import torch

from whisper_int8.cli_common import run, stage_parser
from whisper_int8.eval_report import BASELINE, CANDIDATE, write_report
from whisper_int8.evaluate import decode_options, evaluate_in_subprocess
from whisper_int8.params import ParamError, load_params, section

log = logging.getLogger("evaluate")


def options(params: dict, where: str) -> dict:
    """Validate params ``evaluate``; every problem names the key."""
    ev = section(params, "evaluate", where)
    warmup = ev.get("warmup", 1)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ParamError(f"{where}: evaluate.warmup={warmup!r} must be an integer >= 0")
    per_language = ev.get("max_clips_per_language")
    if per_language is not None and (
        isinstance(per_language, bool) or not isinstance(per_language, int) or per_language < 1
    ):
        raise ParamError(
            f"{where}: evaluate.max_clips_per_language={per_language!r} must be null (all) or >= 1"
        )
    device = ev.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ParamError(f"{where}: evaluate.device={device!r} must be auto, cpu or cuda[:N]")
    variants = ev.get("models", {})
    if not isinstance(variants, dict) or set(variants) != {BASELINE, CANDIDATE}:
        raise ParamError(f"{where}: evaluate.models must map {BASELINE} and {CANDIDATE} to model directories")
    return {
        "split": Path(ev.get("split", "data/eval")),
        "decode": decode_options(ev, where),
        "warmup": warmup,
        "max_clips_per_language": per_language,
        "device": device,
        "models": {k: Path(v) for k, v in variants.items()},
    }


def main(args) -> None:
    opt = options(load_params(args.params), args.params)
    results = {}
    for variant, model_dir in opt["models"].items():
        if not model_dir.is_dir():
            raise FileNotFoundError(
                f"{model_dir}: model directory for {variant} not found; run `dvc repro` first"
            )
        log.info("evaluating %s (%s) on %s, device %s", variant, model_dir, opt["split"], opt["device"])
        results[variant] = evaluate_in_subprocess(
            model_dir,
            opt["split"],
            opt["decode"],
            opt["device"],
            opt["warmup"],
            opt["max_clips_per_language"],
        )
    languages = sorted({c["language"] for c in results[BASELINE]["clips"]})
    config = {
        "split": str(opt["split"]),
        **opt["decode"],
        "device": opt["device"],
        "warmup": opt["warmup"],
        "max_clips_per_language": opt["max_clips_per_language"],
        "languages": languages,
    }
    report = write_report(args.out, results[BASELINE], results[CANDIDATE], config)
    log.info("wrote %s/eval.json: %s", args.out, report["comparison"])


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="metrics", help="output directory (default: metrics)")
    run(main, parser)
