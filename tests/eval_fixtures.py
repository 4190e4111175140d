"""Helpers for the evaluate / tracking / gate / registry / serve tests: speech clips, model dirs, reports."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from whisper_int8.eval_report import compare
from whisper_int8.fsutil import sha256_file
from whisper_int8.model_sources import LoadedModel, save_checkpoint

from .conftest import make_tiny_whisper

# Decoding options for tiny random models: their garbage output triggers every temperature fallback, so
# a small token cap keeps each clip at a second or two.
FAST = {"beam_size": None, "max_tokens": 4}
ESPEAK_VOICES = {"en": "en-us", "de": "de", "es": "es", "fr": "fr", "zh": "cmn"}


def speak(text: str, language: str, dest: Path) -> float:
    """Synthesize ``text`` with espeak-ng, resampled to 16 kHz mono WAV; returns the duration in seconds."""
    raw = dest.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", ESPEAK_VOICES[language], "-w", str(raw), text], check=True)
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-i", str(raw), "-ac", "1", "-ar", "16000", str(dest)],
        check=True,
    )
    raw.unlink()
    return (dest.stat().st_size - 44) / 2 / 16000


def speech_split(split_dir: Path, clips: list[tuple[str, str]]) -> Path:
    """A split directory in the fetch_audio format: ``manifest.jsonl`` + ``audio/<id>.wav``."""
    (split_dir / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (language, text) in enumerate(clips):
        clip_id = f"{language}-{i:03d}"
        wav = split_dir / "audio" / f"{clip_id}.wav"
        duration = speak(text, language, wav)
        rows.append(
            {
                "id": clip_id,
                "language": language,
                "audio": f"audio/{clip_id}.wav",
                "text": text,
                "duration": duration,
                "sha256": sha256_file(wav),
                "source": "espeak-ng",
                "license": "GPL-3.0 (synthesized)",
            }
        )
    (split_dir / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return split_dir


def tiny_model_dir(dest: Path, seed: int = 0) -> Path:
    """An FP32 model directory (``model.pt`` + ``model_card.json``) holding the tiny random Whisper."""
    model = make_tiny_whisper(seed)
    dest.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest / "model.pt", LoadedModel(model, model.dims, None, {}))
    (dest / "model_card.json").write_text(
        json.dumps({"source": f"tiny-random-seed-{seed}"}), encoding="utf-8"
    )
    return dest


def variant_metrics(rates: dict[str, float], latency_p50_s: float, size_mb: float) -> dict[str, float]:
    """Metrics of one variant as :func:`whisper_int8.evaluate.evaluate_model_dir` reports them."""
    out: dict[str, float] = {}
    for lang, rate in rates.items():
        out[f"{'cer' if lang in ('zh', 'ja', 'th') else 'wer'}/{lang}"] = rate
        out[f"lid_accuracy/{lang}"] = 100.0
        out[f"clips/{lang}"] = 3
        out[f"errors/{lang}"], out[f"ref_length/{lang}"] = round(10 * rate), 1000
    out["error_rate/overall"] = sum(rates.values()) / len(rates)
    out.update(latency_p50_s=latency_p50_s, latency_p90_s=latency_p50_s * 1.2, rtf=0.1, model_size_mb=size_mb)
    out.update(peak_rss_mb=500.0, load_time_s=0.5, first_call_s=latency_p50_s * 3, clips=3 * len(rates))
    return out


def report(
    fp32: dict[str, float], int8: dict[str, float], speedup: float = 2.0, size_ratio: float = 0.3
) -> dict:
    """An eval.json-shaped report for two variants with the given per-language error rates (percent)."""
    base = variant_metrics(fp32, 1.0, 100.0)
    cand = variant_metrics(int8, 1.0 / speedup, 100.0 * size_ratio)
    return {
        "fp32": base,
        "int8": cand,
        "comparison": compare(base, cand),
        "config": {"languages": sorted(fp32)},
    }


def tiny_int8_dir(dest: Path, seed: int = 0) -> Path:
    """An INT8 model directory (``int8.pt`` + ``quant_config.json``) from the tiny random Whisper."""
    from whisper_int8.fuse import fuse_model
    from whisper_int8.quant.config import QuantConfig
    from whisper_int8.quant.convert import quantize_model, save_int8_dir

    model = make_tiny_whisper(seed)
    fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
    fuse_model(model)
    cfg = QuantConfig()
    layer_report = quantize_model(model, cfg)
    dest.mkdir(parents=True, exist_ok=True)
    save_int8_dir(dest, model, cfg, layer_report, None, fp32_bytes)
    return dest


@functools.cache
def _migrated_db() -> Path:
    """An empty MLflow sqlite store, created once per session (MLflow's schema migrations take seconds)."""
    root = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    atexit.register(shutil.rmtree, root, True)
    MlflowClient(f"sqlite:///{root}/mlflow.db").search_experiments()
    return root / "mlflow.db"


def fresh_tracking_uri(directory: Path) -> str:
    """A new, empty sqlite tracking store in ``directory`` (a copy of the migrated template)."""
    shutil.copy(_migrated_db(), directory / "mlflow.db")
    return f"sqlite:///{directory}/mlflow.db"


def client_for(uri: str) -> MlflowClient:
    """A client bound to ``uri`` for both runs and registry (MLflow's registry URI is process-global)."""
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
