"""One transcription call shared by evaluation, benchmarks and the served model, with loop safety built in.

Greedy decoding by default (``beam_size`` for beam search). Whisper base can loop at temperature 0
(a 30 s phone call did), so a decode that repeats itself (gzip compression ratio > 2.4) or is unsure
(mean log-probability < -1) is retried at rising temperatures, as openai-whisper's ``transcribe`` does,
and each 30 s window is capped at a token budget proportional to its length. Sampling is seeded, so the
same model and audio give the same text. fp16 only for a model whose weights are half (:func:`_fp16`).

Audio of at most one 30 s window (every clip of the evaluation split) takes a direct path: ONE encoder
pass, and ONE projection of its features into every decoder block's cross-attention keys and values
(a 1500 x n_state GEMM per block, the costliest step of a short decode), which serve the language
identification and every fallback decode, without timestamp tokens. ``whisper.transcribe`` would run
the encoder again for each of these, and ``whisper.decode`` the projections. Longer audio goes through
``whisper.transcribe`` (sliding 30 s windows, timestamps to place the cuts), its windows not conditioned
on the previous window's text (whisper's default is): a loop in one window is not carried into the next.

The window's input is ``whisper.decode``'s and ``whisper.detect_language``'s, the clip padded with zero
samples to 30 s and then transformed (:mod:`.mel`), not ``whisper.transcribe``'s, which pads the clip's
log-Mel with zeros (a value the encoder hears differently from the log-Mel of silence). The language
identification is whisper.transcribe's either way, but not every transcript: on the default evaluation
split (2026-12-07) 66 of 180 FP32 transcripts and 63 of 180 INT8 ones differ from
``whisper.transcribe(..., without_timestamps=True, condition_on_previous_text=False)`` for that reason
alone, 256 and 251 errors against its 269 and 261. Audio over 30 s, and a window whose text fills the
full budget, go through ``whisper.transcribe`` and get its padding.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
from torch import Tensor, nn
from whisper.audio import CHUNK_LENGTH, N_SAMPLES, SAMPLE_RATE
from whisper.decoding import DecodingTask, PyTorchInference
from whisper.tokenizer import get_tokenizer

from .audio.manifest import Clip, read_manifest
from .audio.wavio import SILENCE_PEAK, load_audio
from .fuse import FusedAttention, head_major
from .heap import release_freed
from .languages import check_language
from .mel import log_mel_window
from .params import WINDOW_TOKENS, ParamError, null_or_count

log = logging.getLogger(__name__)

__all__ = ["Clip", "decode_options", "load_audio", "read_manifest", "transcribe_clip"]

TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# A loop hits this budget fast; the default split's transcripts use at most 30 % of it. Fluent text that
# reaches it (Malayalam needs about 38 tokens/s) is decoded again with the window's full budget.
TOKENS_PER_SECOND = 15
MIN_TOKENS = 32
# openai-whisper's transcribe defaults: a retry when repetitive or unsure, unless it is silence.
COMPRESSION_RATIO_MAX = 2.4
LOGPROB_MIN = -1.0
NO_SPEECH_MIN = 0.6
# One transcription at a time in a process: whisper's decoding installs its kv-cache hooks on the
# (shared) model and the fallback sampling reseeds torch's global RNG, so two threads at once (MLflow's
# scoring server runs each request in one) would read each other's keys and values.
_ONE_AT_A_TIME = threading.Lock()


def _device(model: torch.nn.Module) -> torch.device:
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _rng_devices(device: torch.device) -> list[int]:
    """The GPU whose RNG the fallback samples from (the model's), forked and seeded for the call; none
    for a model on the CPU. Not every GPU (``torch.manual_seed``): before CUDA starts, that only queues
    the seed for its start, replacing the one a caller queued, who would then sample from 0."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _seed(cuda_devices: list[int]) -> None:
    """Seed the CPU's RNG and those of ``cuda_devices`` (each forked by the caller) with 0."""
    torch.random.default_generator.manual_seed(0)
    for index in cuda_devices:
        torch.cuda.default_generators[index].manual_seed(0)


def _fp16(model: torch.nn.Module) -> bool:
    """Decode in fp16 only when every floating-point weight is half, whatever the device.

    openai-whisper's ``Linear`` casts an FP32 weight to an fp16 input; the plain ``nn.Linear`` of the
    fused model, a layer INT8 keeps in float and the tied logits projection do not, so FP32 weights
    (fp32, fused and INT8 models on CUDA alike) need FP32 activations. torchao's int8 weights report
    the float dtype they were made for (float32 here).
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return dtypes == {torch.float16}


def _silent(result: whisper.DecodingResult) -> bool:
    return result.no_speech_prob > NO_SPEECH_MIN and result.avg_logprob < LOGPROB_MIN


def _cut_short(result: whisper.DecodingResult, cap: int) -> bool:
    """The decode stopped at ``cap`` tokens in text that does not repeat itself (not a loop), nor is
    silence: a silent window's text is dropped, so more budget or a timestamped pass would only redo it."""
    return (
        len(result.tokens) >= cap
        and result.compression_ratio <= COMPRESSION_RATIO_MAX
        and not _silent(result)
    )


def _needs_fallback(result: whisper.DecodingResult) -> bool:
    if _silent(result):
        return False  # silence: a retry would only hallucinate
    return result.compression_ratio > COMPRESSION_RATIO_MAX or result.avg_logprob < LOGPROB_MIN


def _features(model: torch.nn.Module, audio: np.ndarray, fp16: bool) -> torch.Tensor:
    """Encoder output for the first 30 s of ``audio`` (zero-padded), shape (1, n_audio_ctx, n_audio_state)."""
    device = _device(model)
    mel = log_mel_window(torch.from_numpy(audio[:N_SAMPLES]), model.dims.n_mels).to(
        device, torch.float16 if fp16 else torch.float32
    )
    return model.embed_audio(mel[None])


def _encode(model: torch.nn.Module, audio: np.ndarray, fp16: bool) -> Tensor:
    """:func:`_features`, glibc's freed heap handed back before (the previous call's activations and
    keys/values) and after (the encoder's activations, before the keys/values are allocated)."""
    release_freed()
    features = _features(model, audio, fp16)
    release_freed()
    return features


def window_options(
    language: str, temperature: float, cap: int, beam_size: int | None, fp16: bool
) -> whisper.DecodingOptions:
    """The decoding options of one 30 s window's attempt at ``temperature``: no timestamp tokens."""
    return whisper.DecodingOptions(
        task="transcribe",
        language=language,
        temperature=temperature,
        sample_len=cap,
        beam_size=beam_size,
        fp16=fp16,
        without_timestamps=True,
    )


def _cross_cache(model: torch.nn.Module, features: Tensor) -> dict[nn.Module, Tensor]:
    """Every decoder block's cross-attention keys/values for ``features``, as a whisper kv-cache.

    Its first entry is an empty self-attention key: openai-whisper's decoder reads the position of the
    next token from the first entry of the cache, and the kv-cache hook appends to it.
    """
    blocks = model.decoder.blocks
    cache = {blocks[0].attn.key: features.new_zeros(features.shape[0], 0, model.dims.n_text_state)}
    attns = [block.cross_attn for block in blocks]
    if all(isinstance(attn, FusedAttention) for attn in attns):
        # one buffer for all blocks: allocated and freed at once, it leaves no holes in the heap
        for attn, out in zip(attns, attns[0].new_cross_kv(features, len(attns)), strict=True):
            cache[attn.key], cache[attn.value] = attn.cross_kv(features, out)
        return cache
    for attn in attns:
        k, v = head_major(attn.key(features), attn.n_head), head_major(attn.value(features), attn.n_head)
        cache[attn.key], cache[attn.value] = k, v
    return cache


class _CachedCrossInference(PyTorchInference):
    """openai-whisper's kv-cached decoder inference, starting from precomputed cross-attention K/V."""

    def __init__(self, model: torch.nn.Module, initial_token_length: int, cross: dict) -> None:
        super().__init__(model, initial_token_length)
        self.cross = cross

    def logits(self, tokens: Tensor, audio_features: Tensor) -> Tensor:
        if not self.kv_cache:
            self.kv_cache, self.hooks = self.model.install_kv_cache_hooks(self.cross)
        return super().logits(tokens, audio_features)


def _decode(
    model: torch.nn.Module, features: Tensor, cross: dict, options: whisper.DecodingOptions
) -> whisper.DecodingResult:
    """``whisper.decode`` reusing ``cross``, greedy, sampled or beam search.

    A beam decodes ``beam_size`` sequences against the one window: the cross-attention K/V (batch 1)
    broadcast over them, and only the empty self-attention key that opens the cache needs the beam's
    batch, for the kv-cache hooks to append to.
    """
    task = DecodingTask(model, options)
    first = model.decoder.blocks[0].attn.key
    cross = {**cross, first: cross[first].expand(task.n_group, -1, -1)}
    task.inference = _CachedCrossInference(model, len(task.initial_tokens), cross)
    if hasattr(task.decoder, "inference"):  # the beam decoder reorders the cache through it
        task.decoder.inference = task.inference
    return task.run(features)[0]


def _identify(model: torch.nn.Module, features: Tensor, cross: dict) -> str:
    """Whisper's language identification (``whisper.detect_language``: one decoder step from SOT)."""
    if not model.is_multilingual:
        return "en"
    tok = get_tokenizer(True, num_languages=model.num_languages)
    sot = torch.tensor([[tok.sot]], device=features.device)
    # no hooks: the self-attention of the single SOT step needs no cache; cross-attention reads `cross`
    logits = model.decoder(sot, features, kv_cache=dict(cross))[0, 0]
    languages = list(tok.all_language_tokens)
    return tok.all_language_codes[int(logits[languages].argmax())]


@torch.inference_mode()
def _transcribe_window(
    model: torch.nn.Module,
    audio: np.ndarray,
    language: str | None,
    detect: bool,
    beam_size: int | None,
    cap: int,
    full_cap: int,
) -> dict:
    fp16 = _fp16(model)
    features = _encode(model, audio, fp16)
    cross = _cross_cache(model, features)
    detected, lid_s = None, 0.0
    if language is None or detect:
        if features.is_cuda:  # the encoder's queued kernels are transcription, not identification
            torch.cuda.synchronize(features.device)
        start = time.perf_counter()
        detected = _identify(model, features, cross)
        lid_s = time.perf_counter() - start
    for t in TEMPERATURES:
        options = window_options(language or detected, t, cap, beam_size if t == 0 else None, fp16)
        result = _decode(model, features, cross, options)
        if full_cap > cap and _cut_short(result, cap):
            # the length budget is there to stop loops; text that reaches it without repeating itself is
            # a script with more tokens per second (Malayalam about 38, Telugu 33): the full budget then
            result = _decode(model, features, cross, replace(options, sample_len=full_cap))
        if not _needs_fallback(result):
            break
    silent = _silent(result)
    return {
        # the window's whole budget was text, not a loop: more may follow
        "cut": _cut_short(result, full_cap),
        "text": "" if silent else result.text.strip(),
        "language": language or detected,
        "detected_language": detected,
        "lid_s": lid_s,
        "tokens": 0 if silent else len(result.tokens),
        "temperature": result.temperature,
        "segments": 1,
    }


def _transcribe_long(model: torch.nn.Module, audio: np.ndarray, language: str, **decode) -> dict:
    """Sliding 30 s windows through ``whisper.transcribe``; ``decode``: ``beam_size`` and ``cap``."""
    result = whisper.transcribe(
        model,
        audio,
        language=language,
        task="transcribe",
        temperature=TEMPERATURES,
        beam_size=decode["beam_size"],
        fp16=_fp16(model),
        sample_len=decode["cap"],
        condition_on_previous_text=False,
        verbose=None,
    )
    segments = result["segments"]
    # text tokens, as the one-window path counts them: not the timestamps whisper.transcribe adds
    eot = get_tokenizer(model.is_multilingual, num_languages=model.num_languages).eot
    return {
        "text": result["text"].strip(),
        "language": result["language"],
        "tokens": sum(t < eot for s in segments for t in s["tokens"]),
        "temperature": max((s["temperature"] for s in segments), default=0.0),
        "segments": len(segments),
    }


def _identify_first_window(model: torch.nn.Module, audio: np.ndarray) -> tuple[str, float]:
    """The language of audio over 30 s, from its first 30 s, and the seconds that took. Here, not inside
    whisper.transcribe (which identifies the same 30 s, but in a log-Mel floored at the whole recording's
    maximum - 8, not the window's: a start 40 dB quieter than the rest can identify otherwise), so that
    it is timed apart from transcription as in one window; an encoder pass of its own, which an
    English-only model does not need (its answer is "en" whatever it hears; whisper.transcribe runs none)."""
    if not model.is_multilingual:
        return "en", 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        features = _features(model, audio, _fp16(model))
        detected = _identify(model, features, _cross_cache(model, features))
    return detected, time.perf_counter() - start


def token_cap(model: torch.nn.Module, samples: int, max_tokens: int | None = None) -> int:
    """Tokens one 30 s window of ``samples`` (16 kHz) may decode: ``max_tokens``, or a budget by length."""
    seconds = min(samples / SAMPLE_RATE, CHUNK_LENGTH)
    return min(max_tokens or MIN_TOKENS + int(TOKENS_PER_SECOND * seconds), model.dims.n_text_ctx // 2)


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
    Silence (below -50 dBFS) is not decoded: an empty text, and no identification (None) but "en" for
    an English-only model.
    ``max_tokens`` overrides the per-window cap (default: ``MIN_TOKENS + TOKENS_PER_SECOND * seconds``,
    which a fluent decode that reaches it may exceed up to the window's full budget, ``n_text_ctx // 2``).
    """
    language = check_language(model, language)
    if not isinstance(audio, np.ndarray):
        audio = load_audio(audio)
    audio = np.asarray(audio, dtype=np.float32)
    if not audio.size or float(np.abs(audio).max()) < SILENCE_PEAK:
        # Nothing to hear (fetch_audio's silence rule, -50 dBFS). Decoded, 30 s of padding without
        # timestamps reads as a confident "you" that the no-speech rule below lets through.
        detected = None if model.is_multilingual else "en"  # no speech to identify, unless English-only
        return {"text": "", "language": language or detected, "lid_s": 0.0, "tokens": 0, "temperature": 0.0,
                "detected_language": detected if language is None or detect_language else None,
                "segments": 0}  # fmt: skip
    cap = token_cap(model, len(audio), max_tokens)
    full_cap = cap if max_tokens else token_cap(model, N_SAMPLES)  # an explicit cap is a hard one
    cuda_devices = _rng_devices(_device(model))
    with _ONE_AT_A_TIME, torch.random.fork_rng(devices=cuda_devices):
        _seed(cuda_devices)
        if len(audio) <= N_SAMPLES:
            out = _transcribe_window(model, audio, language, detect_language, beam_size, cap, full_cap)
            if not out.pop("cut") or max_tokens:  # a cap the caller set is a hard one
                return out
            # as whisper.transcribe does with such a window: with timestamps, on from the last one
            # (dense speech, or a script of many tokens a second, over 224 tokens in 30 s)
            long = _transcribe_long(model, audio, out["language"], beam_size=beam_size, cap=full_cap)
            return {**out, **long}
        detected, lid_s = None, 0.0
        if language is None or detect_language:
            detected, lid_s = _identify_first_window(model, audio)
        out = _transcribe_long(model, audio, language or detected, beam_size=beam_size, cap=cap)
    return {**out, "detected_language": detected, "lid_s": lid_s}


def decode_options(
    section: dict[str, Any], where: str = "params.yaml", prefix: str = "evaluate."
) -> dict[str, Any]:
    """``transcribe_clip`` options from params ``evaluate`` (also what the registered pyfunc decodes with,
    its ``model_config``: no ``prefix``)."""
    options = {
        key: null_or_count(section.get(key), f"{prefix}{key}", meaning, where)
        for key, meaning in (("beam_size", "greedy"), ("max_tokens", "the default cap per window"))
    }
    if (options["max_tokens"] or 0) > WINDOW_TOKENS:  # capped there anyway: a larger value would mislead
        if prefix:
            raise ParamError(
                f"{where}: {prefix}max_tokens={options['max_tokens']}: at most {WINDOW_TOKENS}, the most a "
                "30 s window decodes (half of Whisper's 448-token text context)"
            )
        # a registered model's config (versions registered before the bound) decodes as it always did
        log.warning(
            "%s: max_tokens=%d decodes as %d, a window's most", where, options["max_tokens"], WINDOW_TOKENS
        )
        options["max_tokens"] = WINDOW_TOKENS
    return options
