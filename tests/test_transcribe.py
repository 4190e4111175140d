"""transcribe_clip on the tiny random Whisper (mechanics) and read_manifest errors."""

from __future__ import annotations

import inspect
import json
import types

import numpy as np
import pytest
import torch
import whisper

from tests.test_audio_wavio import write_tone
from whisper_int8.audio import AudioInputError
from whisper_int8.fuse import fuse_model
from whisper_int8.quant.config import parse_quant_config
from whisper_int8.quant.convert import quantize_model
from whisper_int8.transcribe import (
    COMPRESSION_RATIO_MAX,
    LOGPROB_MIN,
    NO_SPEECH_MIN,
    TEMPERATURES,
    _cross_cache,
    _decode,
    _features,
    _fp16,
    _identify,
    load_audio,
    read_manifest,
    transcribe_clip,
)

from .conftest import TINY_V3_DIMS, make_tiny_whisper


def tone(seconds: int = 1, dtype: type = np.float32) -> np.ndarray:
    """``seconds`` of a 300 Hz tone at 16 kHz, amplitude 0.1: audio above the silence threshold."""
    return (0.1 * np.sin(2 * np.pi * 300 * np.arange(16000 * seconds) / 16000)).astype(dtype)


def test_result_shape_determinism_and_token_cap(tiny_model, tmp_path):
    path = write_tone(tmp_path / "a.wav", 440, 1.0, 8000)  # any format: converted on load
    first = transcribe_clip(tiny_model, path, "en")
    assert set(first) == {
        "text",
        "language",
        "detected_language",
        "lid_s",
        "tokens",
        "temperature",
        "segments",
    }
    assert first["detected_language"] is None and first["lid_s"] == 0.0  # not asked for
    assert first["language"] == "en" and isinstance(first["text"], str)
    # A random model babbles without repeating itself: past the length budget, up to the window's full
    # one, and on from there in windows with timestamps (below)
    assert first["tokens"] > 0 and first["segments"] >= 1
    again = [transcribe_clip(tiny_model, path, "en", max_tokens=6) for _ in range(2)]
    assert again[0] == again[1]  # temperature fallback samples, seeded


def test_the_callers_rng_is_restored(tiny_model):
    """The fallback's sampling is seeded for the call and the caller's sequence goes on after it."""
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    transcribe_clip(tiny_model, np.full(16000, 0.1, dtype=np.float32), "en", max_tokens=4)
    assert torch.equal(torch.rand(3), want)


def test_a_cpu_transcription_leaves_the_seed_queued_for_cuda(tiny_model):
    """Regression (a review): before CUDA starts, ``torch.manual_seed`` only queues its seed for the GPUs.
    The call's own ``manual_seed(0)`` replaced the one a caller had queued, which fork_rng cannot
    restore: the caller's first sampling on a GPU after a CPU transcription ran from seed 0."""
    if torch.cuda.is_initialized():
        pytest.skip("CUDA already started: nothing is queued")
    torch.manual_seed(123)  # the caller's; for CUDA, queued until it starts
    queued = torch.cuda._lazy_seed_tracker.manual_seed_all_cb
    assert queued is not None
    transcribe_clip(tiny_model, np.full(16000, 0.1, dtype=np.float32), "en", max_tokens=4)
    assert torch.cuda._lazy_seed_tracker.manual_seed_all_cb is queued


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_callers_cuda_rng_is_restored():
    """``torch.manual_seed`` reseeds every GPU too: their state is restored after the call as well."""
    model = make_tiny_whisper().cuda()  # (seeds the RNGs itself)
    torch.cuda.manual_seed(123)
    want = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(123)
    transcribe_clip(model, np.full(16000, 0.1, dtype=np.float32), "en", max_tokens=4)
    assert torch.equal(torch.rand(3, device="cuda"), want)


@pytest.mark.parametrize("max_tokens", [None, 224])
def test_a_window_whose_whole_budget_is_text_goes_on_with_timestamps(tiny_model, monkeypatch, max_tokens):
    """Regression (a review): a clip of 30 s or less whose text needs more than 224 tokens (dense
    speech; Japanese or Russian sped up) lost every token past them, often mid-word, where
    whisper.transcribe goes on from the last timestamp. A cap the caller set stays a hard one."""
    import types

    import whisper_int8.transcribe as tr

    def decode(model, features, cross, options):
        return types.SimpleNamespace(tokens=[1] * options.sample_len, text="cut", compression_ratio=1.6,
                                     avg_logprob=-0.2, no_speech_prob=0.01, temperature=0.0)  # fmt: skip

    calls = []

    def long(model, audio, language, **decode):
        calls.append((language, decode))
        return {
            "text": "the whole text",
            "language": language,
            "tokens": 300,
            "temperature": 0.0,
            "segments": 2,
        }

    monkeypatch.setattr(tr, "_decode", decode)
    monkeypatch.setattr(tr, "_transcribe_long", long)
    out = transcribe_clip(
        tiny_model, np.full(16000 * 29, 0.01, dtype=np.float32), "ja", max_tokens=max_tokens
    )
    if max_tokens:
        assert calls == [] and out["text"] == "cut" and out["tokens"] == 224
    else:
        assert calls == [("ja", {"beam_size": None, "cap": 224})]
        assert out["text"] == "the whole text" and out["segments"] == 2 and out["detected_language"] is None


def test_array_input_beam_search_explicit_cap_and_language_detection(tiny_model):
    audio = tone()
    out = transcribe_clip(tiny_model, audio, None, beam_size=2, max_tokens=3)
    assert out["tokens"] <= 3 * out["segments"]
    assert out["language"] and out["detected_language"] == out["language"]  # detected, since none given


def test_detection_alongside_a_given_language_matches_whisper(tiny_model):
    audio = tone()
    out = transcribe_clip(tiny_model, audio, "fr", max_tokens=3, detect_language=True)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), tiny_model.dims.n_mels)
    _, probs = tiny_model.detect_language(mel)  # the encoder runs inside: same answer from the mel
    assert out["language"] == "fr" and out["detected_language"] == max(probs, key=probs.get)
    assert out["lid_s"] > 0


@pytest.mark.parametrize("fused", [False, True])
def test_shared_cross_attention_cache_decodes_like_whisper(fused):
    """One cross-attention K/V projection serves LID and every decode: same tokens as whisper.decode."""
    model = make_tiny_whisper()
    if fused:
        fuse_model(model)
    audio = tone()
    with torch.inference_mode():
        features = _features(model, audio, fp16=False)
        cross = _cross_cache(model, features)
        for t, beam in ((0.0, None), (0.6, None), (0.0, 3)):
            opts = whisper.DecodingOptions(
                language="de",
                temperature=t,
                sample_len=8,
                beam_size=beam,
                without_timestamps=True,
                fp16=False,
            )
            torch.manual_seed(0)
            want = whisper.decode(model, features, opts)[0]
            torch.manual_seed(0)
            got = _decode(model, features, cross, opts)  # twice from the same cache: it is not consumed
            torch.manual_seed(0)
            again = _decode(model, features, cross, opts)
            assert got.tokens == want.tokens == again.tokens
            assert got.avg_logprob == pytest.approx(want.avg_logprob, abs=1e-5)
        _, probs = model.detect_language(features)
        assert _identify(model, features, cross) == max(probs[0], key=probs[0].get)
        # each head's keys and values contiguous (twice as fast to stream per step), same values
        block = model.decoder.blocks[0]
        k = cross[block.cross_attn.key]
        n_head, head_dim = block.cross_attn.n_head, model.dims.n_text_state // block.cross_attn.n_head
        assert k.shape == (1, model.dims.n_audio_ctx, n_head, head_dim)
        assert k.permute(0, 2, 1, 3).is_contiguous()
        want_k = (
            block.cross_attn.kv(features)[..., : model.dims.n_text_state]
            if fused
            else block.cross_attn.key(features)
        )
        assert torch.equal(k.flatten(2), want_k)


@pytest.mark.parametrize(
    ("kind", "half"),
    [("fp32", False), ("fused", False), ("int8", False), ("fp32", True), ("fused", True)],
)
def test_fp16_follows_the_weights_not_the_device(kind, half):
    """fp16 decoding only for half weights: fused and INT8 layers do not cast FP32 weights to fp16 input
    (on CUDA that was "mat1 and mat2 must have the same dtype")."""
    model = make_tiny_whisper()
    if kind != "fp32":
        fuse_model(model)
    if kind == "int8":
        quantize_model(model, parse_quant_config({}))
    if half:
        model.half()
    assert _fp16(model) is half


def test_long_audio_goes_through_sliding_windows(tiny_model):
    audio = tone(35)
    out = transcribe_clip(tiny_model, audio, "en", max_tokens=4, detect_language=True)
    assert out["segments"] >= 1 and out["language"] == "en"
    assert out["detected_language"] and out["lid_s"] > 0
    # no language: identified (and timed) once, on the first 30 s, and the windows decode in it
    auto = transcribe_clip(tiny_model, audio, None, max_tokens=4)
    assert auto["language"] == auto["detected_language"] == out["detected_language"] and auto["lid_s"] > 0
    assert transcribe_clip(tiny_model, audio, "en", max_tokens=4)["lid_s"] == 0.0


def test_long_audio_counts_text_tokens_not_timestamps(tiny_model, monkeypatch):
    tok = whisper.tokenizer.get_tokenizer(True, num_languages=tiny_model.num_languages)
    words = tok.encode(" hello there")
    ts = tok.timestamp_begin
    segments = [{"tokens": [ts, *words, ts + 50], "temperature": 0.0}] * 2
    monkeypatch.setattr(
        whisper,
        "transcribe",
        lambda *a, **k: {"text": " hello there", "language": "en", "segments": segments},
    )
    audio = np.full(16000 * 35, 0.01, dtype=np.float32)
    assert transcribe_clip(tiny_model, audio, "en")["tokens"] == 2 * len(words)  # as the one-window path


def test_read_manifest_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the fetch_audio stage"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.jsonl").write_text('{"id": "a", "language": "en"}\n')
    with pytest.raises(AudioInputError, match=r"manifest.jsonl:1: missing field\(s\) audio, text"):
        read_manifest(tmp_path)
    # A hand-edited manifest: each mistake names its line before any clip is transcribed or scored.
    write_tone(tmp_path / "audio" / "a.wav", 440, 0.5)
    good = {"id": "a", "language": "en", "audio": "audio/a.wav", "text": "hello", "duration": 0.5,
            "sha256": "0" * 64, "source": "test", "license": "MIT"}  # fmt: skip
    for rows, message in [
        ([good, {**good, "id": "b"}], None),
        ([good, good], "manifest.jsonl:2: id 'a' repeats line 1"),
        ([{**good, "text": None}], r"manifest.jsonl:1: field\(s\) text must be strings"),
        ([{**good, "text": " "}], "manifest.jsonl:1: empty transcript"),
        ([{**good, "duration": 0}], "manifest.jsonl:1: duration 0 must be a number of seconds > 0"),
        ([{**good, "audio": "audio"}], "manifest.jsonl:1: audio 'audio' not found"),
        ([{**good, "audio": "audio/nope.wav"}], "manifest.jsonl:1: audio 'audio/nope.wav' not found"),
        ([[good]], "manifest.jsonl:1: not a JSON object"),
    ]:
        (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if message is None:
            assert [c.id for c in read_manifest(tmp_path)] == ["a", "b"]
        else:
            with pytest.raises(AudioInputError, match=message):
                read_manifest(tmp_path)


def test_freed_heap_is_released_before_and_after_the_encoder(tiny_model, monkeypatch):
    """The encoder's activations must be gone before the cross-attention keys/values are allocated."""
    import whisper_int8.transcribe as tr

    events: list[str] = []
    monkeypatch.setattr(tr, "release_freed", lambda: events.append("release"))
    tiny_model.encoder.register_forward_hook(lambda *_: events.append("encoder"))
    tiny_model.decoder.blocks[0].cross_attn.register_forward_pre_hook(lambda *_: events.append("decoder"))
    tr.transcribe_clip(tiny_model, np.full(16000, 0.01, dtype=np.float32), "en", max_tokens=2)
    assert events[:4] == ["release", "encoder", "release", "decoder"]


def test_load_audio_reads_our_wavs_as_ffmpeg_does(tmp_path):
    """The calibrate stage decodes with load_audio now: the samples are the ones whisper.load_audio gave."""
    for rate, channels in ((16000, 1), (8000, 1), (16000, 2)):  # ours read directly, the rest by ffmpeg
        path = write_tone(tmp_path / f"{rate}-{channels}.wav", 440, 0.5, rate, channels)
        got, want = load_audio(path), whisper.load_audio(str(path))
        assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)


def test_an_undecodable_file_names_it_and_ffmpegs_reason(tiny_model, tmp_path):
    """Not openai-whisper's RuntimeError with ffmpeg's banner and configuration (evaluate, calibrate)."""
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # a truncated header: wave and ffmpeg both give up
    expected = f"{bad}: unreadable or corrupt audio (Invalid data found when processing input)"
    with pytest.raises(AudioInputError) as info:
        load_audio(bad)
    assert str(info.value) == expected
    with pytest.raises(AudioInputError) as info:
        transcribe_clip(tiny_model, str(bad), "en")
    assert str(info.value) == expected


def test_an_english_only_model_refuses_another_language():
    """Its tokenizer has no language tokens: asked for Spanish it would decode English, silently."""
    from dataclasses import replace

    from .conftest import TINY_DIMS

    english = make_tiny_whisper(dims=replace(TINY_DIMS, n_vocab=51864))
    audio = np.full(16000, 0.01, dtype=np.float32)
    with pytest.raises(ValueError, match=r"^language 'es': the model is English-only"):
        transcribe_clip(english, audio, "es", max_tokens=2)
    for language in ("en", None):
        assert transcribe_clip(english, audio, language, max_tokens=2)["language"] == "en"


def test_concurrent_calls_give_the_sequential_transcripts(tiny_model):
    """MLflow's scoring server runs requests in threads on one model: whisper's kv-cache hooks live on
    that model and the fallback sampling reseeds the global RNG, so calls must not interleave."""
    import concurrent.futures

    fuse_model(tiny_model)
    gen = torch.Generator().manual_seed(3)
    clips = [(0.1 * torch.randn(16000 * (1 + i % 3), generator=gen)).numpy() for i in range(6)]
    alone = [transcribe_clip(tiny_model, clip, "en", max_tokens=24)["text"] for clip in clips]
    assert len(set(alone)) > 1  # distinct transcripts: a mix-up would show
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        for _ in range(3):
            together = list(
                pool.map(lambda c: transcribe_clip(tiny_model, c, "en", max_tokens=24)["text"], clips)
            )
            assert together == alone


def test_languages_by_name_or_capitals_and_only_those_the_model_has(tiny_model):
    """ "English"/"EN" are en (whisper.decode takes them); yue is refused by a 99-language model in one
    line, not whisper's "tuple.index(x): x not in tuple"."""
    from dataclasses import replace

    from whisper_int8.languages import check_language, language_code, model_languages

    from .conftest import TINY_DIMS, TINY_V3_DIMS

    english = make_tiny_whisper(dims=replace(TINY_DIMS, n_vocab=51864))
    assert [check_language(english, x) for x in ("EN", "english", "English", None)] == [
        "en",
        "en",
        "en",
        None,
    ]
    assert language_code("Spanish") == "es" and language_code("ES") == "es"
    with pytest.raises(ValueError, match=r"^language 'auto': not a language Whisper knows .* leave it out"):
        language_code("auto")
    assert len(model_languages(tiny_model)) == 99 and "yue" not in model_languages(tiny_model)
    assert model_languages(make_tiny_whisper(dims=TINY_V3_DIMS))[-1] == "yue"
    silence = np.zeros(16000, dtype=np.float32)
    with pytest.raises(ValueError, match=r"^language 'yue': not one of this model's 99 languages"):
        transcribe_clip(tiny_model, silence, "yue", max_tokens=2)
    assert transcribe_clip(tiny_model, silence, "Spanish", max_tokens=2)["language"] == "es"


def test_silence_is_an_empty_transcript_without_decoding(tiny_model):
    """Digital silence (below fetch_audio's -50 dBFS) decoded without timestamps reads as a confident "you"
    in Whisper base; nothing is decoded for it, and the result says so."""
    tiny_model.encoder.register_forward_hook(lambda *_: pytest.fail("silence was decoded"))
    for audio in (np.zeros(16000 * 5, dtype=np.float32), np.full(800, 0.002, dtype=np.float32), np.zeros(0)):
        out = transcribe_clip(tiny_model, audio, "en")
        assert out["text"] == "" and out["tokens"] == 0 and out["segments"] == 0 and out["language"] == "en"
        assert out["detected_language"] is None
    assert transcribe_clip(tiny_model, np.zeros(99), None)["detected_language"] is None  # nothing to identify
    from dataclasses import replace

    from .conftest import TINY_DIMS

    english = make_tiny_whisper(dims=replace(TINY_DIMS, n_vocab=51864))
    out = transcribe_clip(english, np.zeros(99), None)
    assert out["language"] == out["detected_language"] == "en"  # as identification gives it
    assert transcribe_clip(english, np.zeros(99), "en")["detected_language"] is None  # not asked for
    assert transcribe_clip(english, np.zeros(99), "en", detect_language=True)["detected_language"] == "en"


@pytest.mark.parametrize(
    ("ratio", "max_tokens", "tokens"),
    [(1.6, None, 180), (3.1, None, 47), (1.6, 47, 47)],
    ids=["fluent-extended", "loop-kept-at-the-budget", "explicit-cap-is-hard"],
)
def test_a_fluent_decode_at_the_length_budget_gets_the_full_one(
    tiny_model, monkeypatch, ratio, max_tokens, tokens
):
    """The budget (32 + 15 tokens/s) stops loops; Malayalam speech needs about 38 tokens/s, so a decode
    that reaches it without repeating itself (compression ratio <= 2.4) is decoded again with the full
    budget. A loop is not, nor is a cap the caller set."""
    import types

    import whisper_int8.transcribe as tr

    def decode(model, features, cross, options):
        n = 180 if options.sample_len > 47 else 47  # the fluent text is 180 tokens long
        return types.SimpleNamespace(tokens=[1] * n, text="x", compression_ratio=ratio, avg_logprob=-0.2,
                                     no_speech_prob=0.01, temperature=options.temperature)  # fmt: skip

    monkeypatch.setattr(tr, "_decode", decode)
    out = transcribe_clip(tiny_model, np.full(16000, 0.01, dtype=np.float32), "ml", max_tokens=max_tokens)
    assert out["tokens"] == tokens


def test_one_window_is_padded_as_whisper_decode_pads_it_not_whisper_transcribe(tiny_model):
    """The direct path's input is whisper.decode's (zero samples to 30 s, then the log-Mel), not
    whisper.transcribe's (the clip's log-Mel padded with zeros): a third of the default split's
    transcripts differ between the two, which README and the module docstring now say. Pinned so that a
    change of front end changes the documentation with it."""
    from whisper.audio import N_FRAMES, N_SAMPLES

    audio = tone(4)
    samples = torch.from_numpy(audio)
    padded_samples = whisper.log_mel_spectrogram(whisper.pad_or_trim(samples), tiny_model.dims.n_mels)
    mel = whisper.log_mel_spectrogram(samples, tiny_model.dims.n_mels, padding=N_SAMPLES)
    padded_mel = whisper.pad_or_trim(mel[:, : mel.shape[-1] - N_FRAMES], N_FRAMES)  # whisper.transcribe's
    with torch.inference_mode():
        got = _features(tiny_model, audio, fp16=False)
        as_decode = tiny_model.embed_audio(padded_samples[None])
        as_transcribe = tiny_model.embed_audio(padded_mel[None])
    assert torch.allclose(got, as_decode, atol=1e-5)
    assert not torch.allclose(got, as_transcribe, atol=1e-2)


def test_long_audio_on_an_english_only_model_is_not_encoded_to_identify_english(monkeypatch):
    """Regression (a review): over 30 s with no language (the CLI's and the served model's default), an
    English-only model (tiny.en) ran a whole encoder pass on the first 30 s only for the identification
    to answer "en" without looking at it (whisper.transcribe runs none), and reported it as ``lid_s``."""
    from dataclasses import replace

    import whisper_int8.transcribe as tr

    from .conftest import TINY_DIMS

    english = make_tiny_whisper(dims=replace(TINY_DIMS, n_vocab=51864))
    monkeypatch.setattr(tr, "_features", lambda *a: pytest.fail("encoded for the identification"))
    audio = tone(35)
    for language, detect in ((None, False), ("en", True)):
        out = transcribe_clip(english, audio, language, max_tokens=2, detect_language=detect)
        assert out["language"] == out["detected_language"] == "en" and out["lid_s"] == 0.0


def _attempt(tokens: int, text: str, ratio: float, logprob: float, no_speech: float, temperature: float):
    """A ``whisper.DecodingResult`` stand-in: what the fallback and length rules read of a decode."""
    return types.SimpleNamespace(tokens=[1] * tokens, text=text, compression_ratio=ratio, avg_logprob=logprob,
                                 no_speech_prob=no_speech, temperature=temperature)  # fmt: skip


def test_the_fallback_thresholds_are_whisper_transcribes_defaults():
    """The module docstring and README say the retries are openai-whisper's: pinned to its signature."""
    defaults = {k: p.default for k, p in inspect.signature(whisper.transcribe).parameters.items()}
    assert defaults["temperature"] == TEMPERATURES
    assert defaults["compression_ratio_threshold"] == COMPRESSION_RATIO_MAX
    assert defaults["logprob_threshold"] == LOGPROB_MIN
    assert defaults["no_speech_threshold"] == NO_SPEECH_MIN


@pytest.mark.parametrize(
    ("attempts", "text", "temperature"),
    [
        ([(0.01, -0.2, 1.6)], "x", 0.0),
        ([(0.9, -1.5, 1.6)], "", 0.0),  # not retried: a retry would only hallucinate
        ([(0.9, -0.2, 1.6)], "x", 0.0),
        ([(0.6, -1.5, 1.6), (0.01, -0.2, 1.6)], "x", 0.2),  # silent only above the threshold
        ([(0.01, -0.2, 2.45), (0.01, -0.2, 1.6)], "x", 0.2),
        ([(0.01, -0.2, 2.4)], "x", 0.0),
        ([(0.01, -1.5, 1.6)] * 6, "x", 1.0),  # the last attempt, as whisper.transcribe keeps it
        ([(0.01, -1.0, 1.6)], "x", 0.0),
    ],
    ids=[
        "fluent",
        "silence",
        "confident-text",
        "no-speech-at-threshold",
        "loop",
        "ratio-at-threshold",
        "unsure-at-every-temperature",
        "logprob-at-threshold",
    ],
)
def test_retries_and_silence_follow_whisper_transcribe(tiny_model, monkeypatch, attempts, text, temperature):
    """A repetitive (ratio > 2.4) or unsure (mean log-probability < -1) decode is retried at the next
    temperature, unless it is silence (no-speech probability > 0.6 and unsure): that one gives no text
    and no tokens. Each attempt decodes the window once."""
    import whisper_int8.transcribe as tr

    temperatures = []

    def decode(model, features, cross, options):
        no_speech, logprob, ratio = attempts[len(temperatures)]
        temperatures.append(options.temperature)
        return _attempt(5, " x ", ratio, logprob, no_speech, options.temperature)

    monkeypatch.setattr(tr, "_decode", decode)
    out = transcribe_clip(tiny_model, np.full(16000, 0.01, dtype=np.float32), "en")
    assert temperatures == list(TEMPERATURES[: len(attempts)])
    assert (out["text"], out["temperature"], out["tokens"]) == (text, temperature, 5 if text else 0)


@pytest.mark.parametrize(("language", "beam_size"), [("de", None), ("de", 3), (None, 2)])
def test_each_attempt_transcribes_in_the_language_without_timestamps(
    tiny_model, monkeypatch, language, beam_size
):
    """task transcribe (not translate) in the given or identified language, the window's length budget,
    no timestamp tokens, and the beam at temperature 0 only: a beam search ignores the temperature, so a
    retry with it would decode the same text again."""
    import whisper_int8.transcribe as tr

    seen = []

    def decode(model, features, cross, options):
        seen.append(options)
        return _attempt(5, "x", 1.6, -1.5, 0.01, options.temperature)  # unsure: every temperature

    monkeypatch.setattr(tr, "_decode", decode)
    monkeypatch.setattr(tr, "_identify", lambda *a: "sv")
    out = transcribe_clip(tiny_model, np.full(16000, 0.01, dtype=np.float32), language, beam_size=beam_size)
    assert [o.temperature for o in seen] == list(TEMPERATURES)
    assert {(o.task, o.language, o.sample_len, o.without_timestamps, o.fp16) for o in seen} == {
        ("transcribe", language or "sv", 32 + 15, True, False)
    }
    assert [o.beam_size for o in seen] == [beam_size] + [None] * 5
    assert out["language"] == (language or "sv")


@pytest.mark.parametrize(
    ("seconds", "max_tokens", "lengths", "long_cap"),
    [(1, None, [47, 224], 224), (1, 47, [47], None), (29, None, [224], 224), (30, None, [224], 224)],
)
def test_a_window_is_decoded_again_only_for_a_larger_budget(
    tiny_model, monkeypatch, seconds, max_tokens, lengths, long_cap
):
    """A fluent decode that fills its budget is decoded again only when the window's full budget is
    larger (at an explicit cap, or a clip long enough that the two are equal, the retry would redo the
    same work); one that fills the full budget goes on with timestamps at that budget. 30 s exactly is
    still one window."""
    import whisper_int8.transcribe as tr

    seen, caps = [], []

    def decode(model, features, cross, options):
        seen.append(options.sample_len)
        # a ratio of 2.4 is text to the fallback rule (a loop is above it), so to the length rule too
        return _attempt(options.sample_len, "x", COMPRESSION_RATIO_MAX, -0.2, 0.01, 0.0)

    monkeypatch.setattr(tr, "_decode", decode)
    monkeypatch.setattr(tr, "_transcribe_long", lambda *a, **k: caps.append(k["cap"]) or {})
    transcribe_clip(tiny_model, np.full(16000 * seconds, 0.01, dtype=np.float32), "ml", max_tokens=max_tokens)
    assert seen == lengths
    assert caps == ([long_cap] if long_cap else [])


@pytest.mark.parametrize(
    ("language", "detect", "decoded_in", "detected"),
    [("en", False, "en", None), ("en", True, "en", "sv"), (None, False, "sv", "sv")],
)
def test_long_audio_decodes_through_whisper_transcribe_with_our_options(
    tiny_model, monkeypatch, language, detect, decoded_in, detected
):
    """Over 30 s: whisper.transcribe with the fallback temperatures, the window's cap and no conditioning
    on the previous window, in the given language (the identified one only without it); the result
    reports the highest temperature a window needed and the identification, timed apart."""
    import whisper_int8.transcribe as tr

    calls = []
    segments = [{"tokens": [1, 2], "temperature": 0.4}, {"tokens": [3], "temperature": 0.2}]

    def transcribe(model, audio, **kwargs):
        calls.append(kwargs)
        return {"text": " hello there ", "language": kwargs["language"], "segments": segments}

    monkeypatch.setattr(whisper, "transcribe", transcribe)
    monkeypatch.setattr(tr, "_identify", lambda *a: "sv")
    out = transcribe_clip(tiny_model, np.full(16000 * 35, 0.01, dtype=np.float32), language,
                          beam_size=2, max_tokens=40, detect_language=detect)  # fmt: skip
    (kwargs,) = calls
    assert kwargs["temperature"] == TEMPERATURES and kwargs["sample_len"] == 40
    assert kwargs["condition_on_previous_text"] is False and kwargs["task"] == "transcribe"
    assert kwargs["beam_size"] == 2 and kwargs["fp16"] is False and kwargs["language"] == decoded_in
    assert out == {"text": "hello there", "language": decoded_in, "tokens": 3, "temperature": 0.4,
                   "segments": 2, "detected_language": detected, "lid_s": out["lid_s"]}  # fmt: skip
    assert (out["lid_s"] > 0) is (detected is not None)


def test_long_audio_with_no_segment_is_an_empty_transcript(tiny_model, monkeypatch):
    """whisper.transcribe skips the windows it judges silent: none left is an empty text, not a crash."""
    monkeypatch.setattr(whisper, "transcribe", lambda *a, **k: {"text": "", "language": "en", "segments": []})
    out = transcribe_clip(tiny_model, np.full(16000 * 35, 0.01, dtype=np.float32), "en")
    assert (out["text"], out["tokens"], out["temperature"], out["segments"]) == ("", 0, 0.0, 0)


def test_the_fallback_sampling_does_not_depend_on_the_callers_seed(tiny_model):
    """The random model is unsure at every temperature, so each call samples: the same transcript
    whatever the caller's RNG state (evaluate and the served model must not depend on it)."""
    audio = tone()
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outs.append(transcribe_clip(tiny_model, audio, "en", max_tokens=4))
    assert outs[0]["temperature"] > 0  # sampled
    assert outs[0] == {**outs[1], "lid_s": outs[0]["lid_s"]}


def test_fp16_needs_every_weight_half():
    """A half decoder on a float encoder is no fp16 model: fp16 input to a float layer fails."""
    model = make_tiny_whisper()
    model.decoder.half()
    assert _fp16(model) is False


def test_a_100_language_model_identifies_cantonese(monkeypatch):
    """large-v3 and turbo have a 100th language token (yue): the identification must consider it."""
    model = make_tiny_whisper(dims=TINY_V3_DIMS)
    yue = whisper.tokenizer.get_tokenizer(True, num_languages=100).to_language_token("yue")
    decoder = model.decoder.forward

    def forward(x, xa, kv_cache=None):
        logits = decoder(x, xa, kv_cache=kv_cache)
        logits[..., yue] = 1e4
        return logits

    monkeypatch.setattr(model.decoder, "forward", forward)
    audio = tone()
    with torch.inference_mode():
        features = _features(model, audio, fp16=False)
        assert _identify(model, features, _cross_cache(model, features)) == "yue"


@pytest.mark.parametrize("fused", [False, True])
def test_decoding_does_not_project_the_features_again(tiny_model, fused):
    """The cross-attention keys/values are projected once a window (the costliest step of a short
    decode) and serve the identification and every attempt: no decoding step projects them again."""
    if fused:
        fuse_model(tiny_model)
    audio = tone()
    with torch.inference_mode():
        features = _features(tiny_model, audio, fp16=False)
        cross = _cross_cache(tiny_model, features)
        for block in tiny_model.decoder.blocks:
            for name in ("kv",) if fused else ("key", "value"):
                getattr(block.cross_attn, name).register_forward_hook(lambda *_: pytest.fail("projected"))
        for beam in (None, 2):
            options = whisper.DecodingOptions(language="de", sample_len=4, beam_size=beam,
                                              without_timestamps=True, fp16=False)  # fmt: skip
            _decode(tiny_model, features, cross, options)
        _identify(tiny_model, features, cross)


def test_float64_samples_transcribe_as_float32(tiny_model):
    """numpy's default dtype (np.sin, soundfile's default read) is not a dtype error in the log-Mel."""
    audio = tone(dtype=np.float64)
    got = transcribe_clip(tiny_model, audio, "en", max_tokens=3)
    want = transcribe_clip(tiny_model, audio.astype(np.float32), "en", max_tokens=3)
    assert (got["text"], got["tokens"]) == (want["text"], want["tokens"])


def test_no_encoder_pass_records_an_autograd_graph(tiny_model, monkeypatch):
    """Long audio's identification runs outside the window's inference mode and needs its own: a graph
    would hold every activation of a 30 s encoder pass until the call returns (peak RSS)."""
    monkeypatch.setattr(whisper, "transcribe", lambda *a, **k: {"text": "", "language": "en", "segments": []})
    grad = []
    tiny_model.encoder.register_forward_hook(lambda *_: grad.append(torch.is_grad_enabled()))
    for seconds in (1, 35):
        transcribe_clip(tiny_model, np.full(16000 * seconds, 0.01, dtype=np.float32), None, max_tokens=2)
    assert grad == [False, False]


@pytest.mark.parametrize("half", [False, True])
def test_long_audio_decodes_in_the_weights_dtype(tiny_model, monkeypatch, half):
    """As one window does (:func:`_fp16`): a half model in fp16, anything else in FP32."""
    calls = []
    monkeypatch.setattr(
        whisper,
        "transcribe",
        lambda *a, **k: calls.append(k) or {"text": "", "language": "en", "segments": []},
    )
    if half:
        tiny_model.half()
    transcribe_clip(tiny_model, np.full(16000 * 35, 0.01, dtype=np.float32), "en")
    assert [k["fp16"] for k in calls] == [half]


@pytest.mark.parametrize("seconds", [1, 29])
def test_a_silent_window_at_its_budget_is_not_decoded_again(tiny_model, monkeypatch, seconds):
    """Regression (a review): a window judged silent (no-speech probability > 0.6 and unsure) whose decode
    filled its budget without repeating itself was taken for dense speech: decoded again with the full
    budget, then transcribed again through whisper.transcribe, whose text replaced the empty one."""
    import whisper_int8.transcribe as tr

    lengths, long = [], []

    def decode(model, features, cross, options):
        lengths.append(options.sample_len)
        return _attempt(options.sample_len, "hallucinated", 1.6, -1.5, 0.9, options.temperature)

    monkeypatch.setattr(tr, "_decode", decode)
    monkeypatch.setattr(
        tr, "_transcribe_long", lambda *a, **k: long.append(k) or {"text": "thanks", "tokens": 1}
    )
    out = transcribe_clip(tiny_model, np.full(16000 * seconds, 0.01, dtype=np.float32), "en")
    assert (out["text"], out["tokens"], lengths, long) == ("", 0, [lengths[0]], [])
