"""Evaluate one model directory on the evaluation split: accuracy per language, latency, memory, size.

Each variant is measured in a fresh spawned process (:func:`evaluate_in_subprocess`) so peak RSS, load
time and the first (cold) call belong to that variant alone and not to whatever ran before it.
``peak_rss_mb`` is the peak while transcribing (reset after loading, :mod:`whisper_int8.memory`);
``load_peak_rss_mb`` the peak up to then (imports, checkpoint and model side by side).

Error rates are in percent; a language written without spaces gets CER (``cer/<lang>``), any other WER
(``wer/<lang>``), both after Whisper's normalizers (``whisper_int8.scoring``). Latency is the wall time of
``transcribe_clip`` on audio already decoded to 16 kHz, less the language identification that shares its
encoder pass (``lid_accuracy/<lang>``); ``warmup`` untimed calls come first, and the first of them is
reported on its own as ``first_call_s``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import whisper
from tqdm import tqdm

from . import memory
from .audio import AudioInputError, Clip, first_per_language, read_manifest
from .cpu import gpu_summary
from .eval_report import BASELINE, CANDIDATE
from .model_dir import check_languages, load_model_dir, model_bytes
from .params import ParamError
from .scoring import score, uses_cer
from .transcribe import load_audio, transcribe_clip

T = TypeVar("T")

MB = memory.MB


@dataclass
class ClipResult:
    id: str
    language: str
    reference: str
    hypothesis: str
    detected_language: str
    latency_s: float
    duration_s: float
    fallback_temperature: float  # 0.0 unless a window needed transcribe_clip's temperature fallback


def model_dirs(section: dict[str, Any], where: str = "params.yaml") -> dict[str, Path]:
    """params ``evaluate.models``: the FP32 and INT8 model directories (the evaluate and promote stages)."""
    variants = section.get("models", {})
    if (
        not isinstance(variants, dict)
        or set(variants) != {BASELINE, CANDIDATE}
        or not all(isinstance(v, str) and v for v in variants.values())
    ):
        raise ParamError(f"{where}: evaluate.models must map {BASELINE} and {CANDIDATE} to model directories")
    return {k: Path(v) for k, v in variants.items()}


def eval_split(section: dict[str, Any], where: str = "params.yaml") -> Path:
    """params ``evaluate.split`` (the evaluate and promote stages: promote run alone must not end in a
    traceback on a value the evaluate stage refuses)."""
    split = section.get("split", "data/eval")
    if not isinstance(split, str) or not split:
        raise ParamError(f"{where}: evaluate.split={split!r} must be the path of a split (e.g. data/eval)")
    return Path(split)


def clips_digest(clips: list[Clip]) -> str:
    """Which clips an evaluation covers (id, language, audio bytes, reference text): a stored FP32
    evaluation is reused only for the same clips, not for a split that fetch_audio has since rewritten."""
    rows = sorted((c.id, c.language, c.sha256, c.text) for c in clips)
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def error_metric(language: str) -> str:
    """``cer`` for languages written without spaces, else ``wer`` (the prefix of the metric key)."""
    return "cer" if uses_cer(language) else "wer"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def transcribe_split(
    model: torch.nn.Module,
    split_dir: Path,
    decode: dict[str, Any],
    warmup: int = 1,
    per_language: int | None = None,
    desc: str = "eval",
) -> tuple[list[ClipResult], float | None]:
    """Transcribe the clips with their reference language; returns results and the first (cold) call."""
    clips = first_per_language(read_manifest(split_dir), per_language)
    if not clips:
        raise ValueError(f"{split_dir}: the evaluation manifest lists no clips")
    check_languages(model, {c.language for c in clips}, split_dir)
    first = load_audio(clips[0].audio)
    first_call = None
    for i in range(warmup):
        start = time.perf_counter()
        out = transcribe_clip(model, first, clips[0].language, **decode, detect_language=True)
        if i == 0:  # as every latency: without the identification
            first_call = time.perf_counter() - start - out["lid_s"]
    results = []
    for clip in tqdm(clips, desc=desc, unit="clip"):
        audio = load_audio(clip.audio)  # one clip at a time: memory stays the model's, not the split's
        if not audio.size:  # scored, every reference word would count as deleted
            raise AudioInputError(
                f"{split_dir}: clip {clip.id}: {clip.audio} holds no audio; rerun fetch_audio"
            )
        start = time.perf_counter()
        out = transcribe_clip(model, audio, clip.language, **decode, detect_language=True)
        latency = time.perf_counter() - start - out["lid_s"]  # the identification is not transcription
        results.append(
            ClipResult(
                id=clip.id,
                language=clip.language,
                reference=clip.text,
                hypothesis=out["text"],
                detected_language=out["detected_language"],
                latency_s=latency,
                duration_s=len(audio) / whisper.audio.SAMPLE_RATE,
                fallback_temperature=out["temperature"],
            )
        )
    return results, first_call


def accuracy_metrics(results: list[ClipResult]) -> dict[str, float]:
    """Per-language ``wer/<l>`` or ``cer/<l>``, ``lid_accuracy/<l>``, ``clips/<l>``, and the macro mean.

    ``errors/<l>`` (substitutions + deletions + insertions) and ``ref_length/<l>`` (reference words, or
    characters for CER) say what a rate difference is made of: on a few hundred words one error is
    several tenths of a point, which is what the gate's limits are compared with.
    """
    metrics: dict[str, float] = {}
    rates = []
    for lang in sorted({r.language for r in results}):
        rows = [r for r in results if r.language == lang]
        counts = score([r.reference for r in rows], [r.hypothesis for r in rows], lang)
        rate = 100.0 * counts["error_rate"]
        rates.append(rate)
        metrics[f"{error_metric(lang)}/{lang}"] = rate
        metrics[f"errors/{lang}"] = counts["errors"]
        metrics[f"ref_length/{lang}"] = counts["reference_length"]
        metrics[f"lid_accuracy/{lang}"] = 100.0 * sum(r.detected_language == lang for r in rows) / len(rows)
        metrics[f"clips/{lang}"] = len(rows)
    metrics["error_rate/overall"] = statistics.fmean(rates)
    metrics["lid_accuracy/overall"] = (
        100.0 * sum(r.detected_language == r.language for r in results) / len(results)
    )
    metrics["clips"] = len(results)
    return metrics


def speed_metrics(results: list[ClipResult], first_call: float | None) -> dict[str, float]:
    latencies = [r.latency_s for r in results]
    out = {
        "latency_p50_s": percentile(latencies, 50),
        "latency_p90_s": percentile(latencies, 90),
        "rtf": sum(latencies) / sum(r.duration_s for r in results),
        "audio_s": sum(r.duration_s for r in results),
    }
    if first_call is not None:
        out["first_call_s"] = first_call
    return out


def evaluate_model_dir(
    model_dir: Path | str,
    split_dir: Path | str,
    decode: dict[str, Any],
    device: str = "cpu",
    warmup: int = 1,
    per_language: int | None = None,
) -> dict[str, Any]:
    """Load ``model_dir``, transcribe the split, and return ``{"metrics": {...}, "clips": [...]}``.

    ``decode``: ``transcribe_clip`` options, ``beam_size`` (None: greedy) and ``max_tokens`` (None: default).
    """
    model_dir = Path(model_dir)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = load_model_dir(model_dir, device=device)
    load_time = time.perf_counter() - start
    load_peak = {"load_peak_rss_mb": memory.peak_rss_mb()}  # imports + loading (checkpoint and model)
    if device.startswith("cuda"):  # this fresh process's peak so far: the loading's
        load_peak["load_vram_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
    result = evaluate_with_model(model, model_dir, split_dir, decode, device, warmup, per_language)
    result["metrics"].update(load_time_s=load_time, **load_peak)
    return result


def evaluate_with_model(
    model: torch.nn.Module,
    model_dir: Path,
    split_dir: Path | str,
    decode: dict[str, Any],
    device: str = "cpu",
    warmup: int = 1,
    per_language: int | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_model_dir` for a model already loaded (from ``model_dir``, whose size is reported)."""
    memory.reset_peak_rss()
    if device.startswith("cuda"):  # as for RSS: the peaks while transcribing, not the loading's
        torch.cuda.reset_peak_memory_stats(device)
    results, first_call = transcribe_split(
        model, Path(split_dir), decode, warmup, per_language, model_dir.name
    )
    # read before scoring: the normalizers' imports (cn2an, zhconv, num2words) and their work add
    # several MB to the RSS after the last clip, which is at its peak then
    peaks = {"peak_rss_mb": memory.peak_rss_mb()}  # while transcribing: warm-up and every clip
    if device.startswith("cuda"):
        peaks["vram_peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
        peaks["vram_reserved_mb"] = torch.cuda.max_memory_reserved(device) / MB
    metrics = {**accuracy_metrics(results), **speed_metrics(results, first_call)}
    metrics["model_size_mb"] = model_bytes(model_dir) / MB
    metrics.update(peaks)
    return {"metrics": metrics, "clips": [asdict(r) for r in results]}


def evaluate_in_subprocess(
    model_dir: Path | str,
    split_dir: Path | str,
    decode: dict[str, Any],
    device: str = "cpu",
    warmup: int = 1,
    per_language: int | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_model_dir` in a fresh spawned process, so memory and cold-start figures are its own."""
    args = (str(model_dir), str(split_dir), decode, device, warmup, per_language)
    return in_fresh_process(evaluate_model_dir, *args)


def device_summary(device: str) -> str | None:
    """:func:`whisper_int8.cpu.gpu_summary` of a CUDA ``device`` (None for the CPU: ``host`` names it),
    asked in a fresh process: a CUDA context in the caller would hold GPU memory while it evaluates."""
    return None if device == "cpu" else in_fresh_process(gpu_summary, device)


def in_fresh_process(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a freshly spawned process (its own memory, imports and cold start).

    Stopped (SIGTERM, a CI timeout, or any exception here) while the child works, the child is
    terminated too: the executor's own exit would wait for it to finish, minutes on.
    """
    ctx = multiprocessing.get_context("spawn")
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
    try:
        return pool.submit(func, *args).result()
    except BaseException:
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate_workers(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Stop ``pool``'s worker processes now (Python 3.14 has ``terminate_workers``; before, the
    executor keeps them in ``_processes``)."""
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        if process.is_alive():
            process.terminate()
