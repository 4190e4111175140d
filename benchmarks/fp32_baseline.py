"""FP32 Whisper WER (CER for zh, ja...) per language on an evaluation split.

    python benchmarks/fp32_baseline.py --split data/eval --model models/fp32/model.pt

Transcribes and scores with the evaluate stage's own code (``whisper_int8.evaluate``) and decoding settings
(``params.yaml`` ``evaluate.beam_size``, ``evaluate.max_tokens``), so its figures are the FP32 side of that
stage's comparison. ``--per-language N`` takes the first N clips of each language (for a quick run).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from _inputs import require_model_dir, require_out_file, split_clips

from whisper_int8.cli_common import run, stage_parser
from whisper_int8.evaluate import accuracy_metrics, error_metric, transcribe_split
from whisper_int8.fsutil import atomic_write_json
from whisper_int8.model_sources import load_checkpoint
from whisper_int8.params import load_params, positive_int, section
from whisper_int8.stage_files import CHECKPOINT
from whisper_int8.transcribe import decode_options


def main(args: argparse.Namespace) -> None:
    decode = decode_options(section(load_params(args.params), "evaluate", args.params), args.params)
    split_clips(args.split, args.per_lang)  # a missing or empty split stops here, before the model loads
    require_out_file(args.json, "--out")
    checkpoint = Path(args.model)
    if checkpoint.is_dir():  # models/fp32 for models/fp32/model.pt
        checkpoint = require_model_dir(checkpoint, "--model", "fp32") / CHECKPOINT
    model = load_checkpoint(checkpoint).model.eval()
    start = time.perf_counter()
    results, _ = transcribe_split(model, Path(args.split), decode, 0, args.per_lang, desc="fp32")
    metrics = accuracy_metrics(results)
    print(f"{'lang':5} {'metric':6} {'rate %':>7} {'LID %':>6} {'clips':>6}")
    for lang in sorted({r.language for r in results}):
        metric = error_metric(lang)
        rate, lid, n = (metrics[f"{k}/{lang}"] for k in (metric, "lid_accuracy", "clips"))
        print(f"{lang:5} {metric:6} {rate:7.1f} {lid:6.0f} {n:6d}")
    seconds = time.perf_counter() - start
    print(f"mean {metrics['error_rate/overall']:.1f} %; {len(results)} clips in {seconds:.0f} s")
    if args.json:
        clips = [asdict(r) for r in results]
        atomic_write_json(args.json, {"decode": decode, "metrics": metrics, "clips": clips})


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the usage example's layout
    parser.add_argument("--split", default="data/eval", help="split directory with manifest.jsonl")
    parser.add_argument(
        "--model", default="models/fp32/model.pt", help="openai-whisper checkpoint (or its folder)"
    )
    # the names the other benchmarks use; --per-lang and --json as before
    parser.add_argument(
        "--per-language", "--per-lang", dest="per_lang", type=positive_int, default=None,
        help="at most N clips per language",
    )  # fmt: skip
    parser.add_argument(
        "--out", "--json", dest="json", default=None, help="also write the metrics and per-clip results here"
    )
    run(main, parser)
