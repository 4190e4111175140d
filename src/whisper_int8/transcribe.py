"""One transcription call shared by evaluation, benchmarks and the served model, with loop safety built in.

Greedy decoding by default (``beam_size`` for beam search). Whisper base can loop at temperature 0
(a 30 s phone call did), so a decode that repeats itself (gzip compression ratio > 2.4) or is unsure
(mean log-probability < -1) is retried at rising temperatures, as openai-whisper's ``transcribe`` does,
and each 30 s window is capped at a token budget proportional to its length. Sampling is seeded, so the
same model and audio give the same text. fp16 only on CUDA.

Audio of at most one 30 s window (every clip of the evaluation split) takes a direct path: ONE encoder
pass whose features serve the language identification and every fallback decode, without timestamp
tokens. ``whisper.transcribe`` would run the encoder again for each of these. Longer audio goes through
``whisper.transcribe`` (sliding 30 s windows, timestamps to place the cuts).
"""

from __future__ import annotations

import itertools
import time
import wave
from pathlib import Path

import numpy as np
import torch
import whisper
from whisper.audio import CHUNK_LENGTH, N_SAMPLES, SAMPLE_RATE

from .audio.manifest import Clip, read_manifest
from .audio.wavio import read_wav

__all__ = ["Clip", "load_audio", "read_manifest", "transcribe_clip"]

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# Generous for every script (Chinese and Japanese run near 10 tokens/s of speech); a loop hits it fast.
TOKENS_PER_SECOND = 15
MIN_TOKENS = 32
# openai-whisper's transcribe defaults: a retry when repetitive or unsure, unless it is silence.
COMPRESSION_RATIO_MAX = 2.4
LOGPROB_MIN = -1.0
NO_SPEECH_MIN = 0.6


def load_audio(path: Path | str) -> np.ndarray:
    """16 kHz mono float32: our WAVs are read directly, anything else goes through ffmpeg."""
    try:
        return read_wav(path)
    except (wave.Error, EOFError, ValueError):
        return whisper.load_audio(str(path))


def _device(model: torch.nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _silent(result: whisper.DecodingResult) -> bool:
    return result.no_speech_prob > NO_SPEECH_MIN and result.avg_logprob < LOGPROB_MIN


def _needs_fallback(result: whisper.DecodingResult) -> bool:
    if _silent(result):
        return False  # silence: a retry would only hallucinate
    return result.compression_ratio > COMPRESSION_RATIO_MAX or result.avg_logprob < LOGPROB_MIN


def _features(model: torch.nn.Module, audio: np.ndarray) -> torch.Tensor:
    """Encoder output for the first 30 s of ``audio`` (zero-padded), shape (1, n_audio_ctx, n_audio_state)."""
    device = _device(model)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), model.dims.n_mels)
    mel = mel.to(device, torch.float16 if device.type == "cuda" else torch.float32)
    return model.embed_audio(mel[None])


def _identify(model: torch.nn.Module, features: torch.Tensor) -> str:
    """Whisper's language identification (one decoder step) on encoder features; English-only: ``en``."""
    if not model.is_multilingual:
        return "en"
    # Features, not mel: detect_language sees the (n_audio_ctx, n_audio_state) shape and skips the encoder.
    _, probs = model.detect_language(features)
    return max(probs[0], key=probs[0].get)


@torch.inference_mode()
def _transcribe_window(
    model: torch.nn.Module,
    audio: np.ndarray,
    language: str | None,
    detect: bool,
    beam_size: int | None,
    cap: int,
) -> dict:
    fp16 = _device(model).type == "cuda"
    features = _features(model, audio)
    detected, lid_s = None, 0.0
    if language is None or detect:
        start = time.perf_counter()
        detected = _identify(model, features)
        lid_s = time.perf_counter() - start
    for t in TEMPERATURES:
        options = whisper.DecodingOptions(
            task="transcribe",
            language=language or detected,
            temperature=t,
            sample_len=cap,
            beam_size=beam_size if t == 0 else None,
            fp16=fp16,
            without_timestamps=True,
        )
        result = whisper.decode(model, features, options)[0]
        if not _needs_fallback(result):
            break
    silent = _silent(result)
    return {
        "text": "" if silent else result.text.strip(),
        "language": language or detected,
        "detected_language": detected,
        "lid_s": lid_s,
        "tokens": 0 if silent else len(result.tokens),
        "temperature": result.temperature,
        "segments": 1,
    }


def _transcribe_long(model: torch.nn.Module, audio: np.ndarray, language: str | None, **decode) -> dict:
    """Sliding 30 s windows through ``whisper.transcribe``; ``decode``: ``beam_size`` and ``cap``."""
    result = whisper.transcribe(
        model,
        audio,
        language=language,
        task="transcribe",
        temperature=TEMPERATURES,
        beam_size=decode["beam_size"],
        fp16=_device(model).type == "cuda",
        sample_len=decode["cap"],
        condition_on_previous_text=False,
        verbose=None,
    )
    segments = result["segments"]
    return {
        "text": result["text"].strip(),
        "language": result["language"],
        "detected_language": result["language"] if language is None else None,
        "lid_s": 0.0,
        "tokens": sum(len(s["tokens"]) for s in segments),
        "temperature": max((s["temperature"] for s in segments), default=0.0),
        "segments": len(segments),
    }


def transcribe_clip(
    model: torch.nn.Module,
    audio: Path | str | np.ndarray,
    language: str | None,
    beam_size: int | None = None,
    max_tokens: int | None = None,
    detect_language: bool = False,
) -> dict:
    """Transcribe ``audio`` (path or 16 kHz float32 array); ``language=None`` lets Whisper detect it.

    Returns ``{"text", "language", "detected_language", "lid_s", "tokens", "temperature", "segments"}``:
    ``tokens`` counts the decoded tokens, ``temperature`` is the highest fallback temperature a window
    needed (0.0: none). With ``detect_language`` (or no ``language``), ``detected_language`` is Whisper's
    own identification of the first 30 s and ``lid_s`` the seconds it added; otherwise they are None and 0.
    ``max_tokens`` overrides the per-window cap (default: ``MIN_TOKENS + TOKENS_PER_SECOND * seconds``).
    """
    if not isinstance(audio, np.ndarray):
        audio = load_audio(audio)
    audio = np.asarray(audio, dtype=np.float32)
    seconds = min(len(audio) / SAMPLE_RATE, CHUNK_LENGTH)
    cap = max_tokens or MIN_TOKENS + int(TOKENS_PER_SECOND * seconds)
    cap = min(cap, model.dims.n_text_ctx // 2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if len(audio) <= N_SAMPLES:
            return _transcribe_window(model, audio, language, detect_language, beam_size, cap)
        out = _transcribe_long(model, audio, language, beam_size=beam_size, cap=cap)
    if detect_language and language is not None:  # its own encoder pass over the first 30 s
        start = time.perf_counter()
        with torch.inference_mode():
            out["detected_language"] = _identify(model, _features(model, audio))
        out["lid_s"] = time.perf_counter() - start
    return out
