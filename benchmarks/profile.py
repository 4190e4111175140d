"""Where a clip's transcription time goes, per phase and per op, for one model directory.

    python benchmarks/profile.py --model models/int8 --split data/eval --per-language 2 \
        --out metrics/profile.json

One process, ``--threads`` threads (default 2), each clip's language given, greedy at temperature 0,
decoded the way ``transcribe_clip`` does for one 30 s window. Per clip: the mel spectrogram plus
encoder (the heap handed back before and after it, as there), the cross-attention keys/values of
every decoder block, the decoding (its steps: the prompt, then one per token), and the minor page
faults and system CPU time of the whole clip (what the heap costs). Prints medians and milliseconds
per decoding step and the peak RSS of each phase (where the process's peak is set), then the
torch profiler's top ops (self CPU time by op and input shape) over one
encoder pass and one decoding of the first clip. Figures of two models come from two runs: compare
ratios within a run, the machine's speed moves between runs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from _inputs import require_model_dir, require_out_file, split_clips
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from whisper_int8 import memory
from whisper_int8.cli_common import run
from whisper_int8.fsutil import atomic_write_json
from whisper_int8.model_dir import check_languages, load_model_dir
from whisper_int8.params import positive_int
from whisper_int8.transcribe import (
    _cross_cache,
    _decode,
    _encode,
    _features,
    load_audio,
    token_cap,
    window_options,
)

if TYPE_CHECKING:  # importing whisper before whisper_int8 would load numba (56 MB) into every peak
    import whisper


def _options(model: torch.nn.Module, audio: np.ndarray, language: str) -> whisper.DecodingOptions:
    """``transcribe_clip``'s first attempt at a window this long: greedy, temperature 0."""
    return window_options(language, 0.0, token_cap(model, len(audio)), None, fp16=False)


def _clip(model: torch.nn.Module, audio: np.ndarray, language: str) -> dict[str, float]:
    """Seconds and peak RSS (MB, the process's) per phase of one clip, its decoding steps, page faults
    and system CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    peaks = {}
    memory.reset_peak_rss()
    start = time.perf_counter()
    features = _encode(model, audio, fp16=False)  # the heap handed back around it, as in transcribe_clip
    encoded = time.perf_counter()
    peaks["encoder_peak_mb"] = memory.peak_rss_mb()
    memory.reset_peak_rss()
    cross = _cross_cache(model, features)
    projected = time.perf_counter()
    peaks["cross_kv_peak_mb"] = memory.peak_rss_mb()
    memory.reset_peak_rss()
    options = _options(model, audio, language)
    result = _decode(model, features, cross, options)
    done = time.perf_counter()
    peaks["decode_peak_mb"] = memory.peak_rss_mb()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "encoder_s": encoded - start,
        "cross_kv_s": projected - encoded,
        "decode_s": done - projected,
        # a pass per token, and one for the end of text, which a decode stopped at its cap never ran
        "steps": min(len(result.tokens) + 1, options.sample_len),
        "total_s": done - start,
        "page_faults": after.ru_minflt - before.ru_minflt,
        "system_s": after.ru_stime - before.ru_stime,
        **peaks,
    }


def _top_ops(fn, rows: int) -> str:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=rows)


def profile_model(model_dir: Path, split: Path, per_language: int, threads: int, ops: int) -> dict:
    """Per-clip phase timings and the profiler's op tables (strings) for ``model_dir`` on ``split``."""
    torch.set_num_threads(threads)
    require_model_dir(model_dir, "--model")
    clips = split_clips(split, per_language, scored=False)  # timed, not scored
    model = load_model_dir(model_dir)
    check_languages(model, {c.language for c in clips}, f"--split {split}")  # not whisper's obscure error
    audios = [(load_audio(c.audio), c.language) for c in clips]
    with torch.inference_mode():
        _clip(model, *audios[0])  # warm-up: first-call allocations, tokenizer, thread pools
        per_clip = [_clip(model, a, lang) for a, lang in tqdm(audios, desc="clips", unit="clip")]
        audio, language = audios[0]
        features = _features(model, audio, fp16=False)
        cross = _cross_cache(model, features)
        encoder_ops = _top_ops(lambda: _features(model, audio, fp16=False), ops)
        decode_ops = _top_ops(lambda: _decode(model, features, cross, _options(model, audio, language)), ops)
    medians = {k: statistics.median(c[k] for c in per_clip) for k in per_clip[0]}
    step_ms = [1000 * c["decode_s"] / c["steps"] for c in per_clip]
    return {
        "model": str(model_dir),
        "clips": len(per_clip),
        "threads": threads,
        "median": medians,
        "decode_ms_per_step": statistics.median(step_ms),
        "per_clip": per_clip,
        "encoder_ops": encoder_ops,
        "decode_ops": decode_ops,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="a model directory (models/fp32, fused, int8)")
    p.add_argument("--split", type=Path, default=Path("data/eval"), help="split with a manifest.jsonl")
    p.add_argument("--per-language", type=positive_int, default=2, help="first N clips of each language")
    p.add_argument("--threads", type=positive_int, default=2, help="torch intra-op threads")
    p.add_argument("--ops", type=positive_int, default=15, help="rows of each profiler table")
    p.add_argument("--out", type=Path, help="also write the figures as JSON here")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(args: argparse.Namespace) -> None:
    require_out_file(args.out, "--out")
    report = profile_model(args.model, args.split, args.per_language, args.threads, args.ops)
    m = report["median"]
    print(f"{report['model']}: {report['clips']} clips, {report['threads']} threads, medians per clip")
    print(
        # each a median of its own: the parts need not add up to the total
        f"total {m['total_s']:.3f} s; encoder {m['encoder_s']:.3f}, cross K/V {m['cross_kv_s']:.3f}, "
        f"decode {m['decode_s']:.3f} ({m['steps']:.0f} steps, {report['decode_ms_per_step']:.1f} ms/step); "
        f"{m['page_faults']:.0f} page faults, {m['system_s']:.3f} s system CPU"
    )
    print(
        f"peak RSS (MB, whole process): encoder {m['encoder_peak_mb']:.0f}, cross K/V "
        f"{m['cross_kv_peak_mb']:.0f}, decode {m['decode_peak_mb']:.0f}"
    )
    print("\nencoder, one pass:\n" + report["encoder_ops"])
    print("decoding, one clip:\n" + report["decode_ops"])
    if args.out:
        atomic_write_json(args.out, report)


if __name__ == "__main__":
    run(main, build_parser())  # a user error (no such model or split): one line, exit 2
