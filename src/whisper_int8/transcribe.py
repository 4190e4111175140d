"""One transcription call shared by evaluation and benchmarks, with loop safety built in.

Greedy decoding by default (``beam_size`` for beam search). Whisper base can loop at temperature 0
(a 30 s phone call did), so a decode that repeats itself (gzip compression ratio > 2.4) or is unsure
(mean log-probability < -1) is retried at rising temperatures, as openai-whisper's CLI does, and each
30 s window is capped at a token budget proportional to its length. Sampling is seeded, so the same
model and audio give the same text. fp16 only on CUDA.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import torch
import whisper

from .audio.manifest import Clip, read_manifest
from .audio.wavio import read_wav

__all__ = ["Clip", "load_audio", "read_manifest", "transcribe_clip"]

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# Generous for every script (Chinese and Japanese run near 10 tokens/s of speech); a loop hits it fast.
TOKENS_PER_SECOND = 15
MIN_TOKENS = 32


def load_audio(path: Path | str) -> np.ndarray:
    """16 kHz mono float32: our WAVs are read directly, anything else goes through ffmpeg."""
    try:
        return read_wav(path)
    except (wave.Error, EOFError, ValueError):
        return whisper.load_audio(str(path))


def _device(model: torch.nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def transcribe_clip(
    model: torch.nn.Module,
    audio: Path | str | np.ndarray,
    language: str | None,
    beam_size: int | None = None,
    max_tokens: int | None = None,
) -> dict:
    """Transcribe ``audio`` (path or 16 kHz float32 array); ``language=None`` lets Whisper detect it.

    Returns ``{"text", "language", "tokens", "temperature", "segments"}``: ``tokens`` counts the decoded
    tokens, ``temperature`` is the highest fallback temperature a window needed (0.0: none).
    ``max_tokens`` overrides the per-window cap (default: ``MIN_TOKENS + TOKENS_PER_SECOND * seconds``).
    """
    if not isinstance(audio, np.ndarray):
        audio = load_audio(audio)
    audio = np.asarray(audio, dtype=np.float32)
    seconds = min(len(audio) / whisper.audio.SAMPLE_RATE, whisper.audio.CHUNK_LENGTH)
    cap = max_tokens or MIN_TOKENS + int(TOKENS_PER_SECOND * seconds)
    cap = min(cap, model.dims.n_text_ctx // 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        result = whisper.transcribe(
            model,
            audio,
            language=language,
            task="transcribe",
            temperature=TEMPERATURES,
            beam_size=beam_size,
            fp16=_device(model).type == "cuda",
            sample_len=cap,
            condition_on_previous_text=False,
            verbose=None,
        )
    segments = result["segments"]
    return {
        "text": result["text"].strip(),
        "language": result["language"],
        "tokens": sum(len(s["tokens"]) for s in segments),
        "temperature": max((s["temperature"] for s in segments), default=0.0),
        "segments": len(segments),
    }
