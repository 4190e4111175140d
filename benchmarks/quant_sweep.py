"""Choose a ``quant`` setting on held-out calibration clips, never on the evaluation split.

For each value of one ``params.yaml`` ``quant`` key, convert ``models/fused`` with it and transcribe the
calibration clips that the calibrate stage did not use (those after the first N of each language, N as
``models/calibration/coverage.json`` records it: what calibrate read, whatever ``params.yaml`` says now)
with FP32 and every INT8 variant, each in its own process, decoding as the evaluate stage does
(``evaluate.beam_size``, ``evaluate.max_tokens``). Prints the INT8 - FP32 error rate per language and the
mean, in percentage points. The default corpus has no held-out clips (5 calibration clips per language,
all used); build a larger calibration split first:

    dvc exp run -S audio.calib_per_lang=20 -S calibrate.max_clips_per_language=10
    python benchmarks/quant_sweep.py --key smoothquant_alpha --values null 0.5 0.8
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import yaml
from _inputs import require_activation_bits, require_model_dir, require_out_file
from whisper.audio import CHUNK_LENGTH

from whisper_int8.audio import MANIFEST, AudioInputError, read_manifest
from whisper_int8.calibrate import CALIBRATE_STAGE
from whisper_int8.cli_common import run, stage_parser
from whisper_int8.evaluate import evaluate_in_subprocess
from whisper_int8.fsutil import atomic_write_json
from whisper_int8.model_sources import ModelSourceError
from whisper_int8.params import ParamError, load_params, section, yaml_value
from whisper_int8.quant.config import parse_quant_config
from whisper_int8.quant.convert_dir import convert_dir
from whisper_int8.scoring import check_references
from whisper_int8.stage_files import read_json
from whisper_int8.transcribe import decode_options

COVERAGE = "coverage.json"  # written by whisper_int8.calibrate.calibrate


def calibrated_clips(calibration: Path) -> dict[str, dict]:
    """Per language, what the calibrate stage read (``clips``, their summed ``seconds``), from
    ``calibration/coverage.json``: the record of the clips the INT8 variants are calibrated on."""
    path = Path(calibration) / COVERAGE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run {CALIBRATE_STAGE}")
    cov = read_json(path, CALIBRATE_STAGE)
    if not isinstance(cov, dict) or not all(
        isinstance(v, dict) and type(v.get("clips")) is int and v["clips"] >= 0 for v in cov.values()
    ):
        raise ModelSourceError(f"{path}: expected {{language: {{clips: N, ...}}}}; rerun {CALIBRATE_STAGE}")
    return cov


def held_out_split(split: Path, coverage: dict[str, dict], dest: Path) -> int:
    """Write ``dest/manifest.jsonl`` with the clips of ``split`` after the first ``coverage[lang]["clips"]``
    of each language (:func:`calibrated_clips`): the ones calibrate did not read.

    Calibrate reads the first clips of each language in manifest order; a split whose languages, clip
    counts or (where recorded) first clips' durations disagree with ``coverage`` is not the one it read,
    and is refused rather than let a calibration clip pass for a held-out one.
    """
    clips = read_manifest(split)  # audio paths come back absolute, so dest needs no audio/
    by_lang: dict[str, list] = {}
    for c in clips:
        by_lang.setdefault(c.language, []).append(c)
    redo = f"not the split calibrate read: rerun {CALIBRATE_STAGE} on it, or give --split the one it read"
    for lang in sorted(by_lang.keys() | coverage.keys()):
        have, cov = by_lang.get(lang, []), coverage.get(lang)
        if cov is None or len(have) < cov["clips"]:
            read = cov["clips"] if cov else 0
            raise AudioInputError(
                f"{split}: {len(have)} {lang} clip(s), calibrate read {read} ({COVERAGE}); {redo}"
            )
        seconds = cov.get("seconds")
        # calibrate's own sum, in its order: what the model heard, the first 30 s of a longer clip
        used = sum(min(float(c.duration), CHUNK_LENGTH) for c in have[: cov["clips"]])
        if isinstance(seconds, int | float) and abs(used - seconds) > 0.011:
            raise AudioInputError(
                f"{split}: its first {cov['clips']} {lang} clip(s) last {used:.2f} s, those calibrate read "
                f"{seconds} s ({COVERAGE}); {redo}"
            )
    skip = {c.id for lang, have in by_lang.items() for c in have[: coverage[lang]["clips"]]}
    held = [c for c in clips if c.id not in skip]
    check_references(held, split)  # before the conversions, not at the first score
    rows = [c.to_json() for c in held]
    if not rows:
        raise AudioInputError(
            f"{split}: calibrate read every clip ({COVERAGE}), none is held out; set "
            "calibrate.max_clips_per_language below audio.calib_per_lang (e.g. 10 of 20) and rerun "
            f"{CALIBRATE_STAGE} first"
        )
    (dest / MANIFEST).write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def value_configs(params: dict, where: str, key: str, values: list[str]) -> dict:
    """``params``' quant settings with ``key`` set to each of ``values`` (YAML), every one checked
    before the first conversion; a bad one is named by the option that gave it."""
    base = params.get("quant")
    parse_quant_config(base, where)  # the file's own settings, as the convert stage reads them
    cfgs = {}
    for raw in values:
        opt = f"--key {key} --values {raw}"
        try:
            value = yaml_value(raw)  # as the convert stage reads params.yaml: on/off are no booleans
        except yaml.YAMLError as e:
            raise ParamError(f"{opt}: not a YAML value ({getattr(e, 'problem', None) or e})") from None
        cfgs[raw] = parse_quant_config({**(base or {}), key: value}, opt)
    return cfgs


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    decode = decode_options(section(params, "evaluate", args.params), args.params)
    cfgs = value_configs(params, args.params, args.key, args.values)
    require_activation_bits(cfg.weight_bits for cfg in cfgs.values())  # not after the FP32 evaluation
    require_model_dir(args.fp32, "--fp32", "fp32")  # before the conversions, not after them
    require_model_dir(args.fused, "--fused", "fused")
    require_out_file(args.out, "--out")
    coverage = calibrated_clips(args.calibration)
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        held = Path(tmp) / "held_out"
        held.mkdir()
        n = held_out_split(args.split, coverage, held)
        used = ", ".join(f"{lang} {v['clips']}" for lang, v in sorted(coverage.items()))
        print(f"{n} held-out clips (calibration clips after the first ones calibrate read: {used})")
        variants = {"fp32": args.fp32}
        for i, (raw, cfg) in enumerate(cfgs.items()):
            # named for its progress bar; a YAML value need not be a file name
            value = re.sub(r"[^\w.-]+", "_", raw)[:40]
            out = Path(tmp) / f"{args.key}={value}-{i}"
            convert_dir(args.fused, args.calibration, args.fp32, out, cfg)
            variants[raw] = out
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
    for option, default, what in (
        ("--split", "data/calibration", "the split calibrate read; its later clips are the held-out set"),
        ("--fp32", "models/fp32", "FP32 model directory"),
        ("--fused", "models/fused", "fused model directory"),
        ("--calibration", "models/calibration", "calibration directory"),
    ):
        parser.add_argument(option, default=default, help=f"{what} (default: {default})")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    run(main, parser)
