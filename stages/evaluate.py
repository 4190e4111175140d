"""Stage evaluate: transcribe the evaluation split with FP32 and INT8; write metrics, CSVs and charts.

The pipeline runs it twice: ``evaluate_fp32`` (``--baseline-only``) stores the FP32 evaluation, which
depends only on the FP32 model, the split and the decoding settings, so DVC keeps it while quantization
settings change; ``evaluate`` then transcribes with INT8 alone and compares. Without ``--baseline`` it
evaluates both.
"""

import logging
from pathlib import Path

import _preflight  # noqa: F401  (without the venv: one line saying how, not a traceback)

from whisper_int8.audio import AudioInputError, first_per_language, read_manifest
from whisper_int8.cli_common import run, stage_parser
from whisper_int8.cpu import host_summary
from whisper_int8.eval_report import BASELINE, CANDIDATE, write_report
from whisper_int8.evaluate import (
    clips_digest,
    device_summary,
    eval_split,
    evaluate_in_subprocess,
    model_dirs,
)
from whisper_int8.fsutil import atomic_write_json, check_dir_output, check_file_output, dir_digest
from whisper_int8.model_dir import activation_bits_of, resolve_device
from whisper_int8.model_sources import ModelSourceError
from whisper_int8.params import ParamError, load_params, null_or_count, reject_unknown_keys, section
from whisper_int8.quant.convert import QUANT_CONFIG
from whisper_int8.scoring import check_references, scorer_versions
from whisper_int8.stage_files import check_made_from, read_json
from whisper_int8.transcribe import decode_options

log = logging.getLogger("evaluate")
ACTIVATION_BITS = "int8_activation_bits"  # settings key: from the INT8 weights' bits, the CPU and the env
KEYS = {"split", "beam_size", "max_tokens", "warmup", "max_clips_per_language", "device", "models"}


def options(params: dict, where: str) -> dict:
    """Validate params ``evaluate``; every problem names the key."""
    ev = section(params, "evaluate", where)
    reject_unknown_keys(ev, "evaluate", KEYS, where)
    warmup = ev.get("warmup", 1)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ParamError(f"{where}: evaluate.warmup={warmup!r} must be an integer >= 0")
    per_language = null_or_count(
        ev.get("max_clips_per_language"), "evaluate.max_clips_per_language", "all clips", where
    )
    device = resolve_device(ev.get("device", "auto"), f"{where}: evaluate.device")
    return {
        "split": eval_split(ev, where),
        "decode": decode_options(ev, where),
        "warmup": warmup,
        "max_clips_per_language": per_language,
        "device": device,
        "models": model_dirs(ev, where),
    }


def settings(opt: dict, clips: list, int8: bool = True) -> dict:
    """What an evaluation depends on besides the models: stored with a baseline, checked on reuse.

    ``int8``: an INT8 model is evaluated, so the activation bits are read (FP32 alone: not recorded,
    and a WHISPER_INT8_ACTIVATION_BITS this CPU cannot run does not stop the FP32 baseline).
    """
    # fbgemm's activation bits: a CPU evaluation's only (torchao on CUDA runs 8-bit symmetric whatever
    # the env says, so a WHISPER_INT8_ACTIVATION_BITS this CPU cannot run must not stop it)
    cpu_int8 = int8 and opt["device"] == "cpu"
    bits = {ACTIVATION_BITS: activation_bits_of(opt["models"][CANDIDATE])} if cpu_int8 else {}
    # on CUDA the card sets the latencies (the speedup of a reused FP32 baseline) and its kernels the
    # transcripts; host names the CPU only, which cloud machines share across cards
    gpu = device_summary(opt["device"])
    return {
        "split": str(opt["split"]),
        "clips": clips_digest(clips),
        **opt["decode"],
        "device": opt["device"],
        "warmup": opt["warmup"],
        "max_clips_per_language": opt["max_clips_per_language"],
        "host": host_summary(),
        **({"gpu": gpu} if gpu else {}),
        # the rates' normalizers and scoring.py itself: a new num2words spells numbers anew, an edited
        # scoring.py counts other errors (a stored FP32 baseline would be compared by other rules)
        "scorer": scorer_versions(),
        # apart from host: they move INT8 transcripts only, so an FP32 baseline made with others is kept
        **bits,
    }


def without_idle_cap(opt: dict, split_clips: int, kept: int) -> dict:
    """``opt`` with no clip cap when ``evaluate.max_clips_per_language`` keeps every clip of the split.

    The gate refuses a capped evaluation as a quick look ("evaluated on the first N clip(s) of each
    language only"); a cap at or above every language's clip count evaluated the whole split, so it is
    recorded as none, and a baseline made with or without it (the same clips) is the same evaluation.
    """
    cap = opt["max_clips_per_language"]
    if cap is None or kept < split_clips:
        return opt
    log.info("evaluate.max_clips_per_language=%d keeps all %d clips of the split: no cap", cap, kept)
    return {**opt, "max_clips_per_language": None}


def check_model_dir(opt: dict, variant: str, where: str) -> None:
    """``evaluate.models.<variant>`` exists and is of its kind: the candidate is what promote registers
    as the INT8 model, the baseline what it is measured against. Checked before any transcription."""
    model_dir = opt["models"][variant]
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{model_dir}: model directory for {variant} not found; run `dvc repro` first"
        )
    int8 = (model_dir / QUANT_CONFIG).is_file()
    if int8 != (variant == CANDIDATE):
        found = "an INT8 model directory" if int8 else f"not an INT8 model directory (no {QUANT_CONFIG})"
        wanted = "the convert stage's output (models/int8)" if not int8 else "an FP32 one (models/fp32)"
        raise ParamError(f"{where}: evaluate.models.{variant}: {model_dir} is {found}; give {wanted}")


def evaluate_variant(opt: dict, variant: str) -> dict:
    model_dir = opt["models"][variant]
    log.info("evaluating %s (%s) on %s, device %s", variant, model_dir, opt["split"], opt["device"])
    return evaluate_in_subprocess(
        model_dir, opt["split"], opt["decode"], opt["device"], opt["warmup"], opt["max_clips_per_language"]
    )


def read_baseline(path: Path, config: dict, model_dir: Path) -> dict:
    """The stored FP32 evaluation, refused when it was made with other settings or another model
    (another directory, or other weights in it: ``model_weights``, :func:`fsutil.dir_digest`)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FP32 evaluation missing; run `dvc repro evaluate_fp32`")
    rerun = "the evaluate_fp32 stage (dvc repro evaluate_fp32)"
    stored = read_json(path, rerun)
    if (
        not isinstance(stored, dict)
        or not isinstance(stored.get("config", {}), dict)
        or not isinstance(stored.get("metrics"), dict)
        or not isinstance(stored.get("clips"), list)
    ):
        raise ModelSourceError(
            f"{path}: not an FP32 evaluation (expected a JSON object with config, metrics and clips); "
            f"rerun {rerun}"
        )
    made_with = {
        **stored.get("config", {}),
        "model_dir": stored.get("model_dir"),
        "model_weights": stored.get("model_weights"),
    }
    wanted = {**config, "model_dir": str(model_dir), "model_weights": dir_digest(model_dir)}
    for fp32_agnostic in (made_with, wanted):  # FP32 has no int8 activations
        fp32_agnostic.pop(ACTIVATION_BITS, None)
    if made_with != wanted:
        changed = sorted(k for k in wanted.keys() | made_with.keys() if wanted.get(k) != made_with.get(k))
        # --force: DVC sees `device: auto`, not the device it resolved to, so it may think nothing changed.
        raise ParamError(
            f"{path}: FP32 evaluation made with other settings ({', '.join(changed)}); "
            "run `dvc repro --force -s evaluate_fp32`"
        )
    return {"metrics": stored["metrics"], "clips": stored["clips"]}


def main(args) -> None:
    opt = options(load_params(args.params), args.params)
    # where the results go, checked before minutes of transcription
    if args.baseline_only:
        if args.baseline is None:
            raise ParamError("--baseline-only needs --baseline PATH (where to write the FP32 evaluation)")
        check_file_output(args.baseline)
    else:
        check_dir_output(args.out)
    every = read_manifest(opt["split"])
    clips = first_per_language(every, opt["max_clips_per_language"])
    if not clips:
        raise AudioInputError(f"{opt['split']}: the evaluation manifest lists no clips; run fetch_audio")
    opt = without_idle_cap(opt, len(every), len(clips))
    check_references(clips, opt["split"])
    # the model directories this run transcribes with, all checked before the first transcription
    if args.baseline_only:
        evaluated = [BASELINE]
    else:
        evaluated = [CANDIDATE] if args.baseline is not None else [BASELINE, CANDIDATE]
    for variant in dict.fromkeys([*evaluated, BASELINE]):  # a stored baseline: its weights are compared
        check_model_dir(opt, variant, args.params)
    if not args.baseline_only:  # INT8 measured against the FP32 model it was converted from, no other
        check_made_from(opt["models"][CANDIDATE], opt["models"][BASELINE], f"{args.params} evaluate.models")
    config = settings(opt, clips, int8=not args.baseline_only)
    if args.baseline_only:
        model_dir = opt["models"][BASELINE]
        weights = dir_digest(model_dir)  # before: what the evaluation loads
        result = evaluate_variant(opt, BASELINE)
        stored = {"config": config, "model_dir": str(model_dir), "model_weights": weights, **result}
        atomic_write_json(args.baseline, stored)
        log.info("wrote %s: %s", args.baseline, {k: round(v, 3) for k, v in result["metrics"].items()})
        return
    if args.baseline is not None:
        base = read_baseline(args.baseline, config, opt["models"][BASELINE])
    else:
        base = evaluate_variant(opt, BASELINE)
    cand = evaluate_variant(opt, CANDIDATE)
    languages = sorted({c["language"] for c in base["clips"]})
    report = write_report(args.out, base, cand, {**config, "languages": languages})
    log.info("wrote %s/eval.json: %s", args.out, report["comparison"])


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument("--out", default="metrics", help="output directory (default: metrics)")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="FP32 evaluation file: read it instead of evaluating FP32 again (checked against params)",
    )
    parser.add_argument(
        "--baseline-only",
        action="store_true",
        help="evaluate FP32 only and write it to --baseline (the evaluate_fp32 stage)",
    )
    run(main, parser)
