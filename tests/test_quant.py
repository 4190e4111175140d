"""INT8 conversion: layers really converted (counts), bit-exact save/load, schemes, keep-float, CUDA path."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import whisper
from torch import nn

from whisper_int8.calibrate import StatsCollector
from whisper_int8.fsutil import dir_bytes
from whisper_int8.fuse import fuse_model
from whisper_int8.model_dir import load_model_dir
from whisper_int8.params import ParamError
from whisper_int8.quant.config import parse_quant_config
from whisper_int8.quant.convert import QuantError, count_layers, quantize_model, save_int8_dir, smooth
from whisper_int8.quant.cpu import (
    DynamicInt8Linear,
    Int8TiedEmbedding,
    StaticInt8Linear,
    WeightOnlyInt8Linear,
)

from .conftest import make_tiny_whisper

TOKENS = torch.tensor([[50258, 50259, 50359, 50363, 440, 1702, 3699, 13]])
N_LINEAR = 2 * 4 + 2 * 7  # tiny: encoder blocks x (qkv, out, fc1, fc2) + decoder x (+ cross q, kv, out)


def _mel(seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(seed))


def _fused() -> nn.Module:
    model = make_tiny_whisper()
    fuse_model(model)
    return model


@torch.no_grad()
def _stats(model: nn.Module) -> dict[str, torch.Tensor]:
    collector = StatsCollector(model)
    for seed in (1, 2):
        model(_mel(seed), TOKENS)
    collector.remove()
    return collector.tensors(99.99)


def _save(tmp_path: Path, model, cfg, report) -> Path:
    out = tmp_path / "int8"
    out.mkdir()
    save_int8_dir(
        out,
        model,
        cfg,
        report,
        [[1, 0]],
        fp32_bytes=4 * sum(p.numel() for p in make_tiny_whisper().parameters()),
    )
    return out


def test_dynamic_converts_every_linear_and_the_embedding():
    model = _fused()
    report = quantize_model(model, parse_quant_config({}))
    assert report["int8_linear"] == N_LINEAR and report["float_linear"] == 0
    assert report["int8_embedding"] == 1 and report["float_embedding"] == 0
    assert sum(isinstance(m, DynamicInt8Linear) for m in model.modules()) == N_LINEAR
    assert isinstance(model.decoder.token_embedding, Int8TiedEmbedding)
    assert not any(type(m) is nn.Linear for m in model.modules())


def test_unfused_model_fails_loudly():
    # openai-whisper's Linear subclass is not what the quantizer converts: refuse instead of a silent no-op
    with pytest.raises(QuantError, match="no nn.Linear"):
        quantize_model(make_tiny_whisper(), parse_quant_config({}))


def test_keep_float_patterns_and_auto_k():
    model = _fused()
    sens = {"encoder.blocks.0.mlp.2": 9.0, "decoder.blocks.1.attn.qkv": 5.0, "encoder.blocks.1.attn.out": 0.1}
    cfg = parse_quant_config({"keep_float": ["decoder.blocks.0.*"], "auto_keep_float_k": 2})
    report = quantize_model(model, cfg, sensitivity=sens)
    kept = sorted(n for n, k in report["layers"].items() if k == "float")
    block0 = ("attn.qkv", "attn.out", "cross_attn.query", "cross_attn.kv", "cross_attn.out", "mlp.0", "mlp.2")
    want = [f"decoder.blocks.0.{s}" for s in block0] + ["encoder.blocks.0.mlp.2", "decoder.blocks.1.attn.qkv"]
    assert kept == sorted(want)
    assert report["float_linear"] == 9 and report["int8_linear"] == N_LINEAR - 9
    assert type(model.encoder.blocks[0].mlp[2]) is nn.Linear


def test_keep_float_embedding_and_quantize_embedding_false():
    a = quantize_model(_fused(), parse_quant_config({"keep_float": ["decoder.token_embedding"]}))
    b = quantize_model(_fused(), parse_quant_config({"quantize_embedding": False}))
    for r in (a, b):
        assert r["int8_embedding"] == 0 and r["float_embedding"] == 1 and r["int8_linear"] == N_LINEAR


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"keep_float": ["decoder.nothing.*"]}, "matches no layer"),
        ({"auto_keep_float_k": 3}, "needs the calibration"),
        ({"scheme": "static"}, "need models/calibration"),
        ({"smoothquant_alpha": 0.5}, "need models/calibration"),
    ],
)
def test_config_needs_are_checked(raw, match):
    with pytest.raises(ParamError, match=match):
        quantize_model(_fused(), parse_quant_config(raw))


def test_auto_k_larger_than_layers():
    with pytest.raises(ParamError, match="only"):
        quantize_model(
            _fused(),
            parse_quant_config({"auto_keep_float_k": 99}),
            sensitivity={"encoder.blocks.0.mlp.2": 1.0},
        )


@pytest.mark.parametrize(
    ("raw", "cls"),
    [
        ({"scheme": "dynamic"}, DynamicInt8Linear),
        ({"scheme": "dynamic", "per_channel": False}, DynamicInt8Linear),
        ({"scheme": "static"}, StaticInt8Linear),
        ({"scheme": "weight_only"}, WeightOnlyInt8Linear),
        ({"scheme": "dynamic", "smoothquant_alpha": 0.5}, DynamicInt8Linear),
    ],
    ids=["dynamic", "per-tensor", "static", "weight_only", "smoothquant"],
)
def test_save_load_bit_exact(tmp_path, raw, cls):
    float_model = _fused()
    stats = _stats(float_model)
    model = copy.deepcopy(float_model)
    cfg = parse_quant_config(raw)
    report = quantize_model(model, cfg, stats)
    assert any(isinstance(m, cls) for m in model.modules())
    out = _save(tmp_path, model, cfg, report)
    loaded = load_model_dir(out)
    assert count_layers(loaded) == count_layers(model)
    mel = _mel(5)
    with torch.no_grad():
        got, want, ref = loaded(mel, TOKENS), model(mel, TOKENS), float_model(mel, TOKENS)
    assert torch.equal(got, want)  # bit-exact round trip
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # still the same function as FP32, approximately
    assert (got - ref).norm() / ref.norm() < 0.1
    # smaller than FP32 on disk: int8 weights (embedding included) are ~1/4 of the float bytes; the tiny
    # model's float positional embeddings (1500 x 64) add a few percent
    assert dir_bytes(out) < 0.35 * 4 * sum(p.numel() for p in float_model.parameters())


def test_static_uses_calibrated_scales_on_encoder_only():
    model = _fused()
    stats = _stats(model)
    report = quantize_model(model, parse_quant_config({"scheme": "static"}), stats)
    static = [n for n, k in report["layers"].items() if k == "static"]
    assert static and all(n.startswith("encoder.") for n in static)
    layer = model.encoder.blocks[0].attn.qkv
    assert float(layer.input_scale) == pytest.approx(
        float(stats["encoder.blocks.0.attn.qkv/in_absmax"].max()) / 63.5
    )


def test_smoothquant_keeps_the_float_function():
    model = _fused()
    stats = _stats(model)
    ref = copy.deepcopy(model)
    in_absmax = {k[: -len("/in_absmax")]: v for k, v in stats.items() if k.endswith("/in_absmax")}
    applied = smooth(model, in_absmax, 0.5)
    assert len(applied) == 2 * 2 + 2 * 3  # qkv + fc1 per block, + cross query in the decoder
    mel = _mel(7)
    with torch.no_grad():
        assert (model(mel, TOKENS) - ref(mel, TOKENS)).abs().max() < 1e-3


def test_int8_model_transcribes(tmp_path):
    model = _fused()
    cfg = parse_quant_config({})
    out = _save(tmp_path, model, cfg, quantize_model(model, cfg))
    loaded = load_model_dir(out)
    audio = torch.randn(16000 * 3, generator=torch.Generator().manual_seed(0)).numpy() * 0.1
    result = whisper.transcribe(loaded, audio, language="en", temperature=0.0, fp16=False, sample_len=16)
    assert isinstance(result["text"], str) and result["segments"]


def test_torchao_conversion_mechanics_on_cpu():
    """The CUDA backend's conversion (int8 modules -> torchao int8 Linear) checked on CPU tensors."""
    pytest.importorskip("torchao")
    from whisper_int8.quant.cuda import to_torchao

    model = _fused()
    quantize_model(model, parse_quant_config({}))
    mel = _mel(3)
    with torch.no_grad():
        want = model(mel, TOKENS)
        got = to_torchao(model, "weight_only", "cpu")(mel, TOKENS)
    assert not any(getattr(m, "kind", None) == "int8" for m in model.modules())
    assert (got - want).norm() / want.norm() < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("scheme", ["dynamic", "weight_only"])
def test_cuda_int8_via_torchao(tmp_path, scheme):
    model = _fused()
    cfg = parse_quant_config({"scheme": scheme})
    out = _save(tmp_path, model, cfg, quantize_model(model, cfg))
    cpu = load_model_dir(out)
    gpu = load_model_dir(out, device="cuda")
    assert next(gpu.parameters()).is_cuda
    mel = _mel(4)
    with torch.no_grad():
        want = cpu(mel, TOKENS)
        got = gpu(mel.cuda(), TOKENS.cuda()).cpu()
    assert (got - want).norm() / want.norm() < 0.05
    text = whisper.transcribe(gpu, torch.zeros(16000).numpy(), language="en", temperature=0.0, sample_len=8)[
        "text"
    ]
    assert isinstance(text, str)
