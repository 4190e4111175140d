"""Fusion: Q/K/V and cross K/V really fused, logits equal to FP32, same greedy transcripts, dir round trip."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from torch import nn

from whisper_int8.fsutil import atomic_dir
from whisper_int8.fuse import PART_FRAMES, FusedAttention, fuse_model, save_fused_dir
from whisper_int8.model_dir import load_model_dir

from .conftest import make_tiny_whisper

SOT = [50258, 50259, 50359, 50363]


def _speechlike(seconds: float = 4.0, seed: int = 0) -> np.ndarray:
    """A deterministic voiced signal (harmonics with a moving pitch and syllable envelope)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    sig = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    return (0.3 * sig / np.abs(sig).max() + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _inputs(real: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if real:
        mel = whisper.log_mel_spectrogram(torch.from_numpy(whisper.pad_or_trim(_speechlike())))[None]
    else:
        mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([SOT + [440, 1702, 3699, 13]])
    return mel, tokens


def test_fusion_counts_and_structure(tiny_model):
    counts = fuse_model(tiny_model)
    assert counts == {"self_attention_qkv": 4, "cross_attention_kv": 2}
    attns = [m for m in tiny_model.modules() if isinstance(m, FusedAttention)]
    assert len(attns) == 6
    for block in tiny_model.encoder.blocks:
        assert block.attn.qkv.out_features == 3 * 64 and not hasattr(block.attn, "kv")
    for block in tiny_model.decoder.blocks:
        assert block.cross_attn.kv.out_features == 2 * 64
    # whisper.model.Linear (a subclass) is gone: every Linear is the exact type quantizers match
    assert all(type(m) is nn.Linear for m in tiny_model.modules() if isinstance(m, nn.Linear))
    with pytest.raises(ValueError, match="already fused"):
        fuse_model(tiny_model)


@pytest.mark.parametrize("real", [False, True], ids=["random", "speechlike"])
def test_fused_logits_match_fp32(real):
    ref = make_tiny_whisper()
    fused = copy.deepcopy(ref)
    fuse_model(fused)
    mel, tokens = _inputs(real)
    with torch.no_grad():
        diff = (fused(mel, tokens) - ref(mel, tokens)).abs().max().item()
    assert diff <= 1e-4


def test_in_place_encoder_equals_openai_whisper_encoder_and_leaves_its_input_alone(tiny_model):
    from whisper.model import AudioEncoder

    fuse_model(tiny_model)
    fused = tiny_model
    mel = _inputs(real=True)[0]
    before = mel.clone()
    layouts = []  # whether each layer norm is handed a contiguous (frames x channels) input
    hooks = [
        ln.register_forward_pre_hook(lambda _, args: layouts.append(args[0].is_contiguous()))
        for block in fused.encoder.blocks
        for ln in (block.attn_ln, block.mlp_ln)
    ]
    parts = []  # frames per MLP call: PART_FRAMES at a time, the same values as all 1500 at once
    hooks += [
        b.mlp[0].register_forward_pre_hook(lambda _, a: parts.append(a[0].shape[1]))
        for b in fused.encoder.blocks
    ]
    with torch.inference_mode():
        got = fused.encoder(mel)
        assert layouts and all(layouts)  # openai-whisper's residual stream keeps the conv's strides
        assert parts == [PART_FRAMES] * (1500 // PART_FRAMES) * len(fused.encoder.blocks)
        want = AudioEncoder.forward(fused.encoder, mel)
    for hook in hooks:
        hook.remove()
    assert torch.equal(got, want)
    assert torch.equal(mel, before)
    with pytest.raises(ValueError, match="pad or trim to 30 s"):
        fused.encoder(mel[..., :2000])


def test_fused_greedy_transcript_identical_and_kv_cache_used():
    ref = make_tiny_whisper()
    fused = copy.deepcopy(ref)
    fuse_model(fused)
    audio = _speechlike(6.0, seed=3)
    opts = dict(language="en", temperature=0.0, fp16=False, condition_on_previous_text=False, sample_len=24)
    a = whisper.transcribe(ref, audio, **opts)
    b = whisper.transcribe(fused, audio, **opts)
    assert [s["tokens"] for s in a["segments"]] == [s["tokens"] for s in b["segments"]]
    cache, hooks = fused.install_kv_cache_hooks()
    try:
        fused.decoder(torch.tensor([SOT]), fused.embed_audio(_inputs(True)[0]), kv_cache=cache)
    finally:
        for h in hooks:
            h.remove()
    assert len(cache) == 4 * len(fused.decoder.blocks)  # self and cross K/V of every block cached


def test_fused_dir_round_trip(tmp_path: Path, tiny_model):
    ref = copy.deepcopy(tiny_model)
    counts = fuse_model(tiny_model)
    with atomic_dir(tmp_path / "fused") as tmp:
        save_fused_dir(tmp, tiny_model, [[1, 0]], counts, {})
    loaded = load_model_dir(tmp_path / "fused")
    mel, tokens = _inputs(False)
    with torch.no_grad():
        assert torch.equal(loaded(mel, tokens), tiny_model(mel, tokens))
        assert (loaded(mel, tokens) - ref(mel, tokens)).abs().max() <= 1e-4
    assert loaded.alignment_heads.to_dense().nonzero().tolist() == [[1, 0]]


EVAL = Path(__file__).resolve().parents[1] / "data" / "eval"
STAND_IN = [
    ("en", "please leave a message after the tone"),
    ("de", "guten morgen und willkommen zu hause"),
    ("fr", "merci de patienter quelques instants"),
    ("es", "por favor espere un momento"),
]


@pytest.mark.integration
def test_base_fused_same_greedy_transcripts_on_eval_clips(base_fp32, tmp_path):
    """Whisper base: fused and FP32 give the same greedy text on evaluation clips (one per language;
    espeak-ng stand-ins in four languages where data/eval is not built yet)."""
    from whisper_int8.transcribe import read_manifest, transcribe_clip

    from .eval_fixtures import speech_split

    split = EVAL if (EVAL / "manifest.jsonl").is_file() else speech_split(tmp_path / "eval", STAND_IN)
    clips = list({c.language: c for c in read_manifest(split)}.values())[:4]
    ref = load_model_dir(base_fp32)
    fused = copy.deepcopy(ref)
    fuse_model(fused)
    for clip in clips:
        with torch.inference_mode():
            a = transcribe_clip(ref, clip.audio, clip.language)
            b = transcribe_clip(fused, clip.audio, clip.language)
        assert a["text"] == b["text"], clip.id
