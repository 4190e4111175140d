"""Choose a ``quant`` setting on held-out calibration clips, never on the evaluation split.

For each value of one ``params.yaml`` ``quant`` key, convert ``models/fused`` with it and transcribe the
calibration clips that the calibrate stage did not use (those after the first
``calibrate.max_clips_per_language`` of each language) with FP32 and every INT8 variant, each in its own
process, decoding as the evaluate stage does (``evaluate.beam_size``, ``evaluate.max_tokens``). Prints the
INT8 - FP32 error rate per language and the mean, in percentage points. The default corpus has no
held-out clips (5 calibration clips per language, all used); build a larger calibration split first:

    dvc exp run -S audio.calib_per_lang=20 -S calibrate.max_clips_per_language=10
    python benchmarks/quant_sweep.py --key smoothquant_alpha --values null 0.5 0.8
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from whisper_int8.audio import MANIFEST, first_per_language, read_manifest
from whisper_int8.calibrate import calibrate_settings
from whisper_int8.cli_common import run, stage_parser
from whisper_int8.evaluate import decode_options, evaluate_in_subprocess
from whisper_int8.fsutil import atomic_write_json
from whisper_int8.params import load_params, section
from whisper_int8.quant.config import parse_quant_config
from whisper_int8.quant.convert_dir import convert_dir


def held_out_split(split: Path, skip_per_language: int, dest: Path) -> int:
    """Write ``dest/manifest.jsonl`` with the clips after the first ``skip_per_language`` of each language."""
    clips = read_manifest(split)  # audio paths come back absolute, so dest needs no audio/
    used = {c.id for c in first_per_language(clips, skip_per_language)}
    rows = [c.to_json() for c in clips if c.id not in used]
    if not rows:
        raise SystemExit(f"{split}: no clip left after the first {skip_per_language} per language")
    (dest / MANIFEST).write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    used = calibrate_settings(params, args.params)[2]  # the calibrate stage's own reading of the key
    if used is None:
        raise SystemExit(
            "calibrate.max_clips_per_language is null: every calibration clip was used, none is held out; "
            "set it below audio.calib_per_lang (e.g. 10 of 20) and re-run dvc repro calibrate first"
        )
    decode = decode_options(section(params, "evaluate", args.params), args.params)
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        held = Path(tmp) / "held_out"
        held.mkdir()
        n = held_out_split(args.split, used, held)
        print(f"{n} held-out clips (calibration clips after the first {used} per language)")
        variants = {"fp32": args.fp32}
        for raw in args.values:
            cfg = parse_quant_config({**(params.get("quant") or {}), args.key: yaml.safe_load(raw)})
            convert_dir(args.fused, args.calibration, args.fp32, Path(tmp) / raw, cfg)
            variants[raw] = Path(tmp) / raw
        rates = {}
        for name, path in variants.items():
            metrics = evaluate_in_subprocess(path, held, decode)["metrics"]
            rates[name] = {k: v for k, v in metrics.items() if k.startswith(("wer/", "cer/"))}
            rates[name]["mean"] = metrics["error_rate/overall"]
    keys = sorted(k for k in rates["fp32"] if k != "mean") + ["mean"]
    print(f"\n| {args.key} | " + " | ".join(k.replace("/", " ") for k in keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    print("| FP32 (%) | " + " | ".join(f"{rates['fp32'][k]:.2f}" for k in keys) + " |")
    for raw in args.values:
        print(
            f"| {raw} (pp) | " + " | ".join(f"{rates[raw][k] - rates['fp32'][k]:+.2f}" for k in keys) + " |"
        )
    if args.out:
        atomic_write_json(args.out, {"key": args.key, "held_out_clips": n, "error_rates": rates})


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the usage example's layout
    parser.add_argument("--key", required=True, help="a params.yaml quant key, e.g. smoothquant_alpha")
    parser.add_argument("--values", nargs="+", required=True, help="YAML values to try, e.g. null 0.5 0.8")
    parser.add_argument("--split", default="data/calibration", type=Path)
    parser.add_argument("--fp32", default="models/fp32")
    parser.add_argument("--fused", default="models/fused")
    parser.add_argument("--calibration", default="models/calibration")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    run(main, parser)
