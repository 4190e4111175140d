"""INT8 conversion: layers really converted (counts), bit-exact save/load, schemes, keep-float, CUDA path."""

from __future__ import annotations

import copy
import importlib
import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
import whisper
from torch import nn

from whisper_int8.calibrate import StatsCollector
from whisper_int8.fsutil import OutputConflictError
from whisper_int8.fuse import fuse_model
from whisper_int8.model_dir import load_model_dir, model_bytes
from whisper_int8.params import ParamError
from whisper_int8.quant.config import parse_quant_config
from whisper_int8.quant.convert import (
    EMBEDDING,
    QuantError,
    count_layers,
    linear_names,
    quantize_model,
    save_int8_dir,
    smooth,
)
from whisper_int8.quant.cpu import (
    BackendError,
    DynamicInt8Linear,
    Int8TiedEmbedding,
    OutlierInt8Linear,
    StaticInt8Linear,
    WeightOnlyInt8Linear,
)
from whisper_int8.transcribe import _cross_cache

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
        ({"keep_float": ["decoder.nothing.*"]}, r"^p.yaml: quant.keep_float: pattern .* matches no layer"),
        ({"auto_keep_float_k": 3}, r"^p.yaml: quant.auto_keep_float_k > 0 needs the calibration"),
        ({"scheme": "static"}, r"^p.yaml: quant.scheme=static needs the calibration statistics"),
        ({"smoothquant_alpha": 0.5}, r"^p.yaml: quant.smoothquant_alpha=0.5 needs the calibration"),
        ({"outlier_channels": 4}, r"^p.yaml: quant.outlier_channels=4 needs the calibration"),
        (
            {"scheme": "static", "smoothquant_alpha": 0.5},
            r"^p.yaml: quant.scheme=static and quant.smoothquant_alpha=0.5 need the calibration",
        ),
        (  # (a review) an "INT8" model with no INT8 layer was written, caught only by the gate's size
            {"keep_float": ["*"], "quantize_embedding": False},
            r"^p.yaml: every Linear layer is kept in float .*: nothing would be INT8; keep fewer in float$",
        ),
        (
            {"keep_float": ["*", "decoder.token_embedding"]},
            r"^p.yaml: every Linear layer is kept in float .*: nothing would be INT8",
        ),
    ],
)
def test_config_needs_are_checked(raw, match):
    """Every error names the parameter file the setting came from, as parse_quant_config's do."""
    with pytest.raises(ParamError, match=match):
        quantize_model(_fused(), parse_quant_config(raw, "p.yaml"))


@pytest.mark.parametrize("quantize_embedding", [True, False])
def test_auto_k_keeps_linear_layers_never_the_embedding(quantize_embedding):
    """The token embedding ranked first (per token it does on base) took a slot, and in float it is
    36 % of the weights: the file went from 0.29 to 0.57 of FP32. quantize_embedding decides it."""
    sens = {"decoder.token_embedding": 9.0, "encoder.blocks.0.mlp.2": 5.0, "decoder.blocks.1.attn.qkv": 1.0}
    cfg = parse_quant_config({"auto_keep_float_k": 1, "quantize_embedding": quantize_embedding})
    report = quantize_model(_fused(), cfg, sensitivity=sens)
    assert report["float_linear"] == 1 and report["layers"]["encoder.blocks.0.mlp.2"] == "float"
    assert report["int8_embedding"] == quantize_embedding
    kept = parse_quant_config({"keep_float": ["decoder.token_embedding"]})  # by name: still float
    assert quantize_model(_fused(), kept)["layers"]["decoder.token_embedding"] == "float"


def test_auto_k_keeps_k_more_layers_than_keep_float():
    sens = {"encoder.blocks.0.mlp.2": 9.0, "decoder.blocks.1.attn.qkv": 5.0, "encoder.blocks.1.mlp.0": 1.0}
    cfg = parse_quant_config({"auto_keep_float_k": 1, "keep_float": ["encoder.blocks.0.mlp.2"]})
    report = quantize_model(_fused(), cfg, sensitivity=sens)
    floats = sorted(n for n, kind in report["layers"].items() if kind == "float")
    assert floats == ["decoder.blocks.1.attn.qkv", "encoder.blocks.0.mlp.2"] and report["float_linear"] == 2


def test_calibration_of_another_model_is_refused():
    from dataclasses import replace

    from .conftest import TINY_DIMS

    wider = make_tiny_whisper(dims=replace(TINY_DIMS, n_audio_state=128, n_text_state=128))
    fuse_model(wider)
    deeper = make_tiny_whisper(dims=replace(TINY_DIMS, n_audio_layer=3))
    fuse_model(deeper)
    static = parse_quant_config({"scheme": "static"})
    with pytest.raises(
        ParamError,
        match=r"^cal: statistics from another model \(.*: \(128,\) maxima, 64 inputs\); rerun calib",
    ):
        quantize_model(_fused(), static, stats=_stats(wider), origin="cal")
    with pytest.raises(
        ParamError, match=r"statistics from another model \(layers differ, e.g. \['encoder.blocks.2"
    ):
        quantize_model(_fused(), static, stats=_stats(deeper))
    with pytest.raises(
        ParamError, match=r"sensitivity.json from another model \(it ranks \['encoder.blocks.2"
    ):
        quantize_model(
            _fused(), parse_quant_config({"auto_keep_float_k": 1}), sensitivity={"encoder.blocks.2.mlp.2": 1}
        )
    model = _fused()
    assert quantize_model(model, static, stats=_stats(model))["int8_linear"] == N_LINEAR  # its own: fine


def test_convert_dir_checks_the_fp32_path_before_converting(tmp_path):
    from whisper_int8.model_sources import ModelSourceError
    from whisper_int8.quant.convert_dir import convert_dir

    def convert(fused: str, fp32: str) -> None:
        convert_dir(
            tmp_path / fused, tmp_path / "cal", tmp_path / fp32, tmp_path / "int8", parse_quant_config({})
        )

    with pytest.raises(FileNotFoundError, match="fp32-typo: not the FP32 model directory"):
        convert("fused", "fp32-typo")
    # Regression: any non-empty folder passed (an INT8 one gave "100 % of FP32" in the model card)
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "quant_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="fp32: not the FP32 model directory .no model.pt"):
        convert("fused", "fp32")
    (tmp_path / "fp32" / "model.pt").write_bytes(b"only its size is read")
    from .test_calibrate import _calibration_dir

    _calibration_dir(tmp_path / "cal")
    # Regression: a wrong --model was "[Errno 2] No such file or directory: '/nope/fused.pt'"
    with pytest.raises(ModelSourceError, match="nope: model directory not found; give the fuse stage's"):
        convert("nope", "fp32")
    with pytest.raises(ModelSourceError, match=r"fp32: not a fused model directory \(an INT8 model\)"):
        convert("fp32", "fp32")
    assert not (tmp_path / "int8").exists()
    # Regression: an --out holding other files was refused only after the conversion
    (tmp_path / "int8").mkdir()
    (tmp_path / "int8" / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflictError, match="int8: holds notes.txt, which this output does not"):
        convert("nope", "fp32")


def test_an_unknown_lineage_is_not_recorded_as_the_fp32_directory_given(tmp_path):
    """Regression (a review): a fused model whose card predates ``fp32_sha256`` (lineage unknown) was
    converted beside whatever FP32 directory was named, and the INT8 card recorded that one's sha256 as
    its source, unchecked: evaluated later against its true FP32 model, it was refused as "made from
    another FP32 model" (and against the wrong one, taken)."""
    from whisper_int8.fuse import save_fused_dir
    from whisper_int8.model_sources import LoadedModel, ModelSourceError, save_checkpoint
    from whisper_int8.quant.convert_dir import convert_dir
    from whisper_int8.stage_files import FP32_SHA256, check_made_from

    for seed in (0, 1):  # fp32-0 the fused model's source, fp32-1 another model
        model = make_tiny_whisper(seed)
        (tmp_path / f"fp32-{seed}").mkdir()
        save_checkpoint(tmp_path / f"fp32-{seed}" / "model.pt", LoadedModel(model, model.dims, None))
    (tmp_path / "fused").mkdir()
    model = make_tiny_whisper(0)
    save_fused_dir(tmp_path / "fused", model, None, fuse_model(model), {})  # no fp32_sha256: older
    cal = tmp_path / "cal"
    cal.mkdir()
    torch.save(_stats(model), cal / "stats.pt")
    (cal / "sensitivity.json").write_text(json.dumps({"layers": {}}))
    cfg = parse_quant_config({})

    def convert(fp32: str) -> dict:
        return convert_dir(tmp_path / "fused", cal, tmp_path / fp32, tmp_path / "int8", cfg)

    card = convert("fp32-1")
    assert FP32_SHA256 not in card  # unknown, not fp32-1's
    assert check_made_from(tmp_path / "int8", tmp_path / "fp32-0", "x") is None
    # a known lineage is passed on, and checked
    recorded = json.loads((tmp_path / "fused" / "model_card.json").read_text())
    (tmp_path / "fused" / "model_card.json").write_text(json.dumps({**recorded, FP32_SHA256: "0" * 64}))
    with pytest.raises(ModelSourceError, match="fused was made from another FP32 model than .*fp32-1 holds"):
        convert("fp32-1")


def test_convert_dir_measures_the_fp32_directory_and_refuses_another_models_calibration(tmp_path):
    """The card's fp32_bytes are the FP32 directory's (the gate's size ratio), and statistics recorded
    for another fused model of the same shapes (another seed, base.en against base) are refused before
    they set the scales and the float layers silently."""
    from whisper_int8.fuse import save_fused_dir
    from whisper_int8.model_sources import LoadedModel, save_checkpoint
    from whisper_int8.quant.convert_dir import convert_dir

    model = make_tiny_whisper()
    (tmp_path / "fp32").mkdir()
    save_checkpoint(tmp_path / "fp32" / "model.pt", LoadedModel(model, model.dims, None))
    (tmp_path / "fused").mkdir()
    save_fused_dir(tmp_path / "fused", model, None, fuse_model(model), {})
    cal = tmp_path / "cal"
    cal.mkdir()
    torch.save(_stats(model), cal / "stats.pt")
    (cal / "sensitivity.json").write_text(json.dumps({"layers": {}}))
    cfg = parse_quant_config({})
    card = convert_dir(tmp_path / "fused", cal, tmp_path / "fp32", tmp_path / "int8", cfg)
    assert card["fp32_bytes"] == model_bytes(tmp_path / "fp32") != model_bytes(tmp_path / "fused")
    (cal / "sensitivity.json").write_text(json.dumps({"layers": {}, "model_sha256": "0" * 64}))
    with pytest.raises(ParamError, match=r"cal: calibrated on another fused model than .*fused"):
        convert_dir(tmp_path / "fused", cal, tmp_path / "fp32", tmp_path / "int8-2", cfg)
    assert not (tmp_path / "int8-2").exists()


def test_convert_refuses_an_fp32_checkpoint_replaced_under_its_card(tmp_path):
    """Regression: convert took models/fp32's card's checkpoint_sha256 on trust for the lineage check
    and the card's size ratio: another model.pt under the kept card was converted as the card's model
    (evaluate refused it only later)."""
    from whisper_int8.fetch import fetch_model
    from whisper_int8.fuse import save_fused_dir
    from whisper_int8.model_sources import ModelSourceError
    from whisper_int8.quant.convert_dir import convert_dir
    from whisper_int8.stage_files import FP32_SHA256, fp32_digest

    for seed in (0, 1):
        model = make_tiny_whisper(seed)
        torch.save(
            {"dims": dict(model.dims.__dict__), "model_state_dict": model.state_dict()}, tmp_path / "m.pt"
        )
        fetch_model(f"file:{tmp_path / 'm.pt'}", tmp_path / f"fp32-{seed}")
    model = make_tiny_whisper(0)
    (tmp_path / "fused").mkdir()
    lineage = {FP32_SHA256: fp32_digest(tmp_path / "fp32-0")}
    save_fused_dir(tmp_path / "fused", model, None, fuse_model(model), lineage)
    cal = tmp_path / "cal"
    cal.mkdir()
    torch.save(_stats(model), cal / "stats.pt")
    (cal / "sensitivity.json").write_text(json.dumps({"layers": {}}))
    shutil.copy(tmp_path / "fp32-1" / "model.pt", tmp_path / "fp32-0" / "model.pt")  # the card kept
    message = r"fp32-0/model.pt: not the checkpoint model_card.json records .*replaced or damaged"
    with pytest.raises(ModelSourceError, match=message):
        convert_dir(tmp_path / "fused", cal, tmp_path / "fp32-0", tmp_path / "int8", parse_quant_config({}))
    assert not (tmp_path / "int8").exists()


def test_layer_patterns_are_checked_before_the_fused_model_is_loaded(tmp_path, monkeypatch):
    """(a review) a mistyped keep_float / outlier_layers pattern or too large auto_keep_float_k was found
    only once quantize_model had the loaded model: seconds for base, far more for large-v3."""
    import whisper_int8.quant.convert_dir as cd

    from .test_calibrate import _calibration_dir

    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.pt").write_bytes(b"only its size is read")
    (tmp_path / "fused").mkdir()
    (tmp_path / "fused" / "fused.pt").write_bytes(b"never loaded")
    cal = _calibration_dir(tmp_path / "cal")
    monkeypatch.setattr(cd, "check_calibrated_on", lambda *_: None)
    monkeypatch.setattr(cd, "load_fused_dir", lambda _: pytest.fail("the model was loaded"))
    for raw, match in (
        (
            {"keep_float": ["encoder.blocks.9.*"]},
            r"quant.keep_float: pattern 'encoder.blocks.9.\*' matches no",
        ),
        ({"outlier_layers": ["*.mlp.9"]}, r"quant.outlier_layers: pattern '\*.mlp.9' matches no layer"),
        ({"auto_keep_float_k": 999}, r"quant.auto_keep_float_k=999: only \d+ more layers"),
    ):
        with pytest.raises(ParamError, match=match):
            cd.convert_dir(
                tmp_path / "fused", cal, tmp_path / "fp32", tmp_path / "int8", parse_quant_config(raw)
            )


def test_auto_k_larger_than_layers():
    message = (
        r"^p.yaml: quant.auto_keep_float_k=99: only 1 more layers can be kept in float \(ranked in "
        r"sensitivity.json, not in keep_float, one left INT8\); choose an integer from 0 to 1$"
    )
    with pytest.raises(ParamError, match=message):
        quantize_model(
            _fused(),
            parse_quant_config({"auto_keep_float_k": 99}, "p.yaml"),
            sensitivity={"encoder.blocks.0.mlp.2": 1.0},
        )


@pytest.mark.parametrize("keep", [[], ["encoder.*"]])
def test_the_largest_auto_k_offered_converts(keep):
    """Regression (a review): with every layer ranked, the error offered "0 to N", N the layers it
    ranks, and N itself was then refused: every layer float, nothing INT8."""
    model = _fused()
    ranked = [*linear_names(model), EMBEDDING]
    sens = {n: float(i) for i, n in enumerate(ranked)}

    def convert(k: int) -> dict:
        cfg = parse_quant_config({"auto_keep_float_k": k, "keep_float": keep})
        return quantize_model(model, cfg, None, sens)

    with pytest.raises(ParamError, match=r"choose an integer from 0 to (\d+)$") as refused:
        convert(99)
    report = convert(int(re.search(r"from 0 to (\d+)$", str(refused.value)).group(1)))
    assert report["int8_linear"] == 1 and report["int8_embedding"] == 1  # the embedding takes no slot


def test_static_inputs_over_the_calibrated_maximum_are_clamped_to_7_bits():
    """Above its calibrated maximum an input took codes 128-255: saturated by fbgemm's AVX2 kernel,
    not by its VNNI one, so a model evaluated on one CPU answered otherwise on the other."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 8)
    scale = torch.tensor(1 / 63.5)  # calibrated absmax 1.0
    mod = StaticInt8Linear.from_float(lin, True, input_scale=scale, output_scale=torch.tensor(0.05))
    top = torch.full((1, 64), 63 * float(scale))  # the largest 7-bit code
    with torch.no_grad():
        assert torch.equal(mod(torch.full((1, 64), 2.0)), mod(top))
        assert torch.equal(mod(torch.full((1, 64), -2.0)), mod(torch.full((1, 64), -64 * float(scale))))
    # a layer whose output resolves one input code (64 weights of 1, output step 1.0 = 64 x scale): the
    # clamp is to the code 63, not 64, and the dequantized output is that code's, not one step off
    ones = nn.Linear(64, 1, bias=False)
    nn.init.ones_(ones.weight)
    fine = StaticInt8Linear.from_float(ones, True, input_scale=scale, output_scale=torch.tensor(1.0))
    with torch.no_grad():
        assert float(fine(torch.full((1, 64), 2.0))) == float(fine(top)) == 63.0
        assert float(fine(torch.full((1, 64), 62 * float(scale)))) == 62.0


@pytest.mark.parametrize(
    ("raw", "cls"),
    [
        ({"scheme": "dynamic"}, DynamicInt8Linear),
        ({"scheme": "dynamic", "per_channel": False}, DynamicInt8Linear),
        ({"scheme": "dynamic", "per_token": False}, DynamicInt8Linear),
        ({"scheme": "static"}, StaticInt8Linear),
        ({"scheme": "weight_only"}, WeightOnlyInt8Linear),
        ({"scheme": "weight_only", "per_channel": False}, WeightOnlyInt8Linear),
        ({"scheme": "dynamic", "smoothquant_alpha": 0.5}, DynamicInt8Linear),
        ({"scheme": "dynamic", "outlier_channels": 4}, OutlierInt8Linear),
        ({"scheme": "static", "outlier_channels": 4}, OutlierInt8Linear),
    ],
    ids=[
        *("dynamic", "per-tensor", "per-call", "static", "weight_only", "weight_only-per-tensor"),
        *("smoothquant", "outliers", "static-outliers"),
    ],
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
    assert model_bytes(out) < 0.35 * 4 * sum(p.numel() for p in float_model.parameters())


def test_weight_bits_reach_the_layers_with_per_call_activations_and_survive_a_load(tmp_path):
    """quant.weight_bits 7: the dynamic, outlier and logits weights keep within +-64 (8-bit activations
    on every CPU); static and weight_only layers, whose inputs it does not concern, keep 8 bits."""
    float_model = _fused()
    stats = _stats(float_model)

    def codes(m: nn.Module) -> int:
        q = m.int8_weight()[0] if hasattr(m, "int8_weight") else m.weight_int8
        return int(q.abs().amax())

    for raw, expect in [
        ({}, {DynamicInt8Linear: 64, Int8TiedEmbedding: 64}),
        ({"weight_bits": 8}, {DynamicInt8Linear: 127, Int8TiedEmbedding: 127}),
        ({"outlier_channels": 4}, {OutlierInt8Linear: 64, DynamicInt8Linear: 64}),
        ({"scheme": "static"}, {StaticInt8Linear: 127, DynamicInt8Linear: 64}),
        ({"scheme": "weight_only"}, {WeightOnlyInt8Linear: 127, Int8TiedEmbedding: 64}),
    ]:
        model = copy.deepcopy(float_model)
        cfg = parse_quant_config(raw)
        report = quantize_model(model, cfg, stats)
        found = {
            cls: {codes(m) for m in model.modules() if type(m) is cls} for cls in expect
        }  # exact types: OutlierInt8Linear is a DynamicInt8Linear
        assert found == {cls: {levels} for cls, levels in expect.items()}, raw
        if raw == {}:
            out = _save(tmp_path, model, cfg, report)
            assert json.loads((out / "quant_config.json").read_text())["config"]["weight_bits"] == 7
            loaded = load_model_dir(out)
            assert {m.weight_bits for m in loaded.modules() if hasattr(m, "weight_bits")} == {7}


def test_cross_kv_dtype_is_saved_applied_and_close_to_float32(tmp_path):
    """quant.cross_kv_dtype reaches the loaded model: its decoding keeps the cross-attention keys/values
    in float16 (half the bytes), within float16 rounding of float32 ones; older directories, written
    before the key existed, load with float32."""
    float_model = _fused()
    logits, keys = {}, {}
    for dtype in ("float16", "float32"):
        # one activation range per call: per-token ranges turn float16's rounding into other int8 levels
        cfg = parse_quant_config({"cross_kv_dtype": dtype, "per_token": False})
        model = copy.deepcopy(float_model)
        (tmp_path / dtype).mkdir()
        out = _save(tmp_path / dtype, model, cfg, quantize_model(model, cfg))
        loaded = load_model_dir(out)
        with torch.inference_mode():
            features = loaded.embed_audio(_mel(5))
            cross = _cross_cache(loaded, features)
            stored = [cross[b.cross_attn.key] for b in loaded.decoder.blocks]
            assert {t.dtype for t in stored} == {getattr(torch, dtype)}
            keys[dtype] = torch.cat([t.float().flatten() for t in stored])
            logits[dtype] = loaded.decoder(TOKENS, features, kv_cache=dict(cross))
    rounding = (keys["float16"] - keys["float32"]).norm() / keys["float32"].norm()
    assert 0 < rounding < 1e-3  # float16 rounding, nothing more
    # the logits move less (the int8 layers after the attention may absorb it entirely)
    assert (logits["float16"] - logits["float32"]).norm() / logits["float32"].norm() < 1e-3
    config = json.loads((out / "quant_config.json").read_text())
    del config["config"]["cross_kv_dtype"]
    (out / "quant_config.json").write_text(json.dumps(config))
    assert {b.cross_attn.cache_dtype for b in load_model_dir(out).decoder.blocks} == {torch.float32}


def test_outlier_layers_follow_the_patterns_and_calibration():
    model = _fused()
    stats = _stats(model)
    report = quantize_model(model, parse_quant_config({"outlier_channels": 4}), stats)
    split = sorted(n for n, k in report["layers"].items() if k == "dynamic_outliers")
    assert split == [f"{part}.blocks.{i}.mlp.2" for part in ("decoder", "encoder") for i in (0, 1)]
    assert report["int8_linear"] == N_LINEAR  # still INT8 layers, counted as such
    layer = model.encoder.blocks[1].mlp[2]
    want = torch.topk(stats["encoder.blocks.1.mlp.2/in_absmax"], 4).indices.sort().values
    assert torch.equal(layer.outlier_index, want)
    for raw, match in (
        ({"outlier_channels": 4, "outlier_layers": ["*.nothing"]}, "outlier_layers: pattern '\\*.nothing'"),
        ({"outlier_channels": 256}, "has only 256 input channels; choose an integer from 0 to 255$"),
        ({"outlier_channels": 4, "outlier_layers": []}, "no layer matching quant.outlier_layers"),
        ({"outlier_channels": 4, "keep_float": ["*.mlp.2"]}, "no layer matching quant.outlier_layers"),
    ):
        with pytest.raises(ParamError, match=f"^p.yaml: quant.*{match}"):
            quantize_model(_fused(), parse_quant_config(raw, "p.yaml"), stats)


def test_an_outlier_pattern_matching_nothing_is_an_error_even_while_outliers_are_off():
    """As for keep_float (README: a pattern matching no Linear is an error): the typo is reported on the
    run where it was made, not on a later one that sets outlier_channels."""
    cfg = parse_quant_config({"outlier_layers": ["*.mlp.2", "zzz"]}, "p.yaml")
    with pytest.raises(ParamError, match=r"^p.yaml: quant.outlier_layers: pattern 'zzz' matches no layer"):
        quantize_model(_fused(), cfg)
    report = quantize_model(_fused(), parse_quant_config({"outlier_layers": ["*.mlp.2"]}))
    assert "dynamic_outliers" not in report["layers"].values()  # matched, and off


def test_per_token_ranges_keep_quiet_frames_precise():
    """One range per call gives quiet frames the few levels a loud frame leaves; per token, each frame
    is quantized over its own range. A single row (a decoding step) is the same either way."""
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(256, 64)
    x = torch.randn(40, 256, generator=gen)
    x[:4] *= 50.0  # a few loud frames, as in a 30 s window with a click
    per_call = DynamicInt8Linear.from_float(lin, per_channel=True, per_token=False)
    per_token = DynamicInt8Linear.from_float(lin, per_channel=True, per_token=True)
    with torch.no_grad():
        ref, got_call, got_token = lin(x), per_call(x), per_token(x)

        def err(y):
            return ((y - ref)[4:].norm() / ref[4:].norm()).item()

        assert err(got_token) < 0.02 < 0.2 < err(got_call)
        one = x[5:6]
        torch.testing.assert_close(per_token(one), per_call(one), rtol=0, atol=1e-5)


def test_per_token_is_saved_and_applied(tmp_path):
    """quant.per_token reaches every dynamic layer and the logits projection of the loaded model; a
    directory written before the key loads with one range per call, as it was measured."""
    model, cfg = _fused(), parse_quant_config({})
    assert cfg.per_token
    out = _save(tmp_path, model, cfg, quantize_model(model, cfg))

    def flags(m):
        return {x.per_token for x in m.modules() if isinstance(x, DynamicInt8Linear | Int8TiedEmbedding)}

    assert flags(load_model_dir(out)) == {True}
    config = json.loads((out / "quant_config.json").read_text())
    del config["config"]["per_token"]
    (out / "quant_config.json").write_text(json.dumps(config))
    assert flags(load_model_dir(out)) == {False}


def test_outlier_channels_in_float_recover_the_precision():
    """A few huge input channels ruin one per-call range; computed in float, the layer is accurate again,
    and the input it was given comes back unchanged (it is zeroed in place during the call)."""
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(256, 64)
    x = torch.randn(50, 256, generator=gen)
    x[:, [3, 77, 200]] *= 60.0  # the post-GELU outliers of a Whisper MLP, in miniature
    absmax = x.abs().amax(0)
    plain = DynamicInt8Linear.from_float(lin, per_channel=True)
    split = OutlierInt8Linear.from_float(lin, per_channel=True, index=torch.topk(absmax, 4).indices)
    before = x.clone()
    with torch.no_grad():
        ref, got_plain, got_split = lin(x), plain(x), split(x)
    assert torch.equal(x, before)

    def err(y):
        return ((y - ref).norm() / ref.norm()).item()

    # plain: about 0.07 with 8-bit activations (VNNI), 0.13 with 7
    assert err(got_split) < 0.02 < 0.05 < err(got_plain)
    # where zeroing the input in place is not allowed, the same result from a masked copy
    leaf = x.clone().requires_grad_()
    with torch.inference_mode():
        frozen = x.clone()  # an inference tensor...
    with torch.no_grad():
        assert torch.equal(split(frozen), got_split)  # ...used outside inference mode
    assert torch.equal(split(leaf).detach(), got_split) and torch.equal(leaf.detach(), before)


def test_static_with_every_static_layer_kept_float_is_refused():
    """Regression (a review): it converted into a model of dynamic layers labelled static, which a
    CUDA host then refused to load (static runs on CPU only)."""
    model = _fused()
    cfg = parse_quant_config({"scheme": "static", "keep_float": ["encoder.*"]}, "p.yaml")
    with pytest.raises(
        ParamError, match=r"^p.yaml: quant.scheme=static: the encoder Linears .* use scheme dyn"
    ):
        quantize_model(model, cfg, _stats(model))


def test_static_uses_calibrated_scales_on_encoder_only():
    model = _fused()
    stats = _stats(model)
    report = quantize_model(model, parse_quant_config({"scheme": "static"}), stats)
    static = [n for n, k in report["layers"].items() if k == "static"]
    assert static and all(n.startswith("encoder.") for n in static)
    # the encoder's post-GELU mlp.2 keeps per-call ranges (STATIC_DYNAMIC_SUFFIX), as does the decoder
    encoder_dynamic = {n for n, k in report["layers"].items() if k == "dynamic" and n.startswith("encoder.")}
    assert encoder_dynamic == {"encoder.blocks.0.mlp.2", "encoder.blocks.1.mlp.2"}
    assert isinstance(model.encoder.blocks[0].mlp[2], DynamicInt8Linear)
    layer = model.encoder.blocks[0].attn.qkv
    assert float(layer.input_scale) == pytest.approx(
        float(stats["encoder.blocks.0.attn.qkv/in_absmax"].max()) / 63.5
    )
    # the output over quint8's 255 levels around 128: the calibrated absmax is the code 127.5 from zero
    assert float(layer.output_scale) == pytest.approx(
        float(stats["encoder.blocks.0.attn.qkv/out_absmax"].max()) / 127.5
    )


def test_smoothquant_keeps_the_float_function():
    model = _fused()
    stats = _stats(model)
    ref = copy.deepcopy(model)
    in_absmax = {k[: -len("/in_absmax")]: v for k, v in stats.items() if k.endswith("/in_absmax")}
    applied = smooth(model, in_absmax, 0.5)
    assert len(applied) == 2 * 2 + 2 * 3  # qkv + fc1 per block, + cross query in the decoder
    # s = max|x|^alpha / max|w|^(1 - alpha) per input channel (at alpha 0.5 a swap would not show)
    name, lin = "encoder.blocks.0.attn.qkv", copy.deepcopy(ref).encoder.blocks[0].attn.qkv
    s = smooth(copy.deepcopy(ref), {name: in_absmax[name]}, 0.8)[name]
    w_max = lin.weight.detach().abs().amax(dim=0)
    torch.testing.assert_close(s, in_absmax[name].clamp_min(1e-5) ** 0.8 / w_max**0.2, rtol=1e-5, atol=0)
    mel = _mel(7)
    with torch.no_grad():
        assert (model(mel, TOKENS) - ref(mel, TOKENS)).abs().max() < 1e-3
    # and it does move the outliers: each smoothed layer's inputs are the measured ones over s
    assert all(not torch.allclose(s, torch.ones_like(s)) for s in applied.values())
    after = _stats(model)
    for name, s in applied.items():
        torch.testing.assert_close(after[f"{name}/in_absmax"], in_absmax[name] / s, rtol=1e-4, atol=1e-6)


def test_a_refused_config_leaves_the_model_unchanged():
    """Regression: outlier_channels wider than a layer was refused after SmoothQuant had rescaled the
    model and some layers were INT8 already."""
    model = _fused()
    before = copy.deepcopy(model.state_dict())
    cfg = parse_quant_config({"outlier_channels": 256, "smoothquant_alpha": 0.5})
    with pytest.raises(ParamError, match="quant.outlier_channels=256: .* has only 256 input channels"):
        quantize_model(model, cfg, _stats(model))
    assert count_layers(model)["int8_linear"] == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_static_smoothquant_scales_the_smoothed_inputs():
    """The static input scale of a smoothed layer comes from its maxima over s, not the raw ones."""
    model = _fused()
    stats = _stats(model)
    name = "encoder.blocks.0.attn.qkv"
    s = smooth(copy.deepcopy(model), {name: stats[f"{name}/in_absmax"]}, 0.5)[name]
    quantize_model(model, parse_quant_config({"scheme": "static", "smoothquant_alpha": 0.5}), stats)
    want = float((stats[f"{name}/in_absmax"] / s).max()) / 63.5
    assert float(model.get_submodule(name).input_scale) == pytest.approx(want, rel=1e-6)
    assert want != pytest.approx(float(stats[f"{name}/in_absmax"].max()) / 63.5, rel=1e-3)


def test_int8_model_transcribes(tmp_path):
    model = _fused()
    cfg = parse_quant_config({})
    out = _save(tmp_path, model, cfg, quantize_model(model, cfg))
    loaded = load_model_dir(out)
    audio = torch.randn(16000 * 3, generator=torch.Generator().manual_seed(0)).numpy() * 0.1
    result = whisper.transcribe(loaded, audio, language="en", temperature=0.0, fp16=False, sample_len=16)
    assert isinstance(result["text"], str) and result["segments"]


def test_per_token_ranges_divide_each_row_by_its_absmax():
    """A row whose largest magnitude is negative (all of it, here) is scaled by |min|, not by its max:
    the latter made it -1e12 times the input and left every other row no levels at all."""
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(256, 64)
    x = torch.randn(20, 256, generator=gen)
    x[::2] = -x[::2].abs()  # rows with no positive value
    x[1::4] = x[1::4].abs() * 0.5 - x[1::4].abs().amax(-1, keepdim=True)  # negative peak, some positives
    layer = DynamicInt8Linear.from_float(lin, per_channel=True, per_token=True)
    with torch.no_grad():
        ref, got = lin(x), layer(x)
    assert ((got - ref).norm() / ref.norm()).item() < 0.02


def test_outlier_columns_are_zero_in_the_int8_weight_and_set_no_scale():
    """The int8 GEMM sees the outlier channels zeroed, so their weight columns are zero there and leave
    the other columns' scale alone: a large weight in an outlier column coarsened every other one."""
    gen = torch.Generator().manual_seed(0)
    lin = nn.Linear(64, 16)
    with torch.no_grad():
        lin.weight[:, 5] = 10.0  # a column far larger than the rest (init: |w| <= 1/8)
    layer = OutlierInt8Linear.from_float(lin, per_channel=True, index=torch.tensor([5, 9]), bits=8)
    q, scale, _ = layer.int8_weight()
    assert not q[:, [5, 9]].any()
    others = lin.weight.detach()[:, [i for i in range(64) if i not in (5, 9)]]
    torch.testing.assert_close(scale, others.abs().amax(1) / 127, rtol=0, atol=0)
    x = torch.randn(8, 64, generator=gen)
    with torch.no_grad():
        assert ((layer(x) - lin(x)).norm() / lin(x).norm()).item() < 0.02


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.pop("weight_int8"), r"Missing key\(s\) in state_dict: \"weight_int8\""),
        (
            lambda s: s.update(weight_scale=s["weight_scale"][:1]),
            r"\(16, 64\)/torch.int8, 1 scales do not fit",
        ),
        (
            lambda s: s.update(weight_int8=s["weight_int8"].short()),
            r"\(16, 64\)/torch.int16, 16 scales do not",
        ),
    ],
    ids=["missing", "scales", "dtype"],
)
def test_int8_state_that_does_not_fit_the_layer_is_refused_when_loaded(change, match):
    """A strict load names what is missing or does not fit (another conversion's tensors, an edited
    file) instead of leaving a layer unpacked or packed with other scales than its config says."""
    lin = nn.Linear(64, 16)
    state = DynamicInt8Linear.from_float(lin, per_channel=True).state_dict()
    change(state)
    with pytest.raises(RuntimeError, match=match):
        DynamicInt8Linear(64, 16, True, per_channel=True).load_state_dict(state)


def test_the_logits_projection_takes_per_token_ranges():
    """quant.per_token reaches the tied logits GEMM (x · Eᵀ), not only the Linear layers: there a loud
    position of a teacher-forced sequence left the others the few levels of one per-call range."""
    gen = torch.Generator().manual_seed(0)
    emb = nn.Embedding(512, 64)
    x = torch.randn(40, 64, generator=gen)
    x[:4] *= 50.0
    ref = x @ emb.weight.detach().T
    with torch.no_grad():
        per_token = Int8TiedEmbedding.from_float(emb, per_token=True).project(x)
        per_call = Int8TiedEmbedding.from_float(emb, per_token=False).project(x)

    def err(y):
        return ((y - ref)[4:].norm() / ref[4:].norm()).item()

    assert err(per_token) < 0.05 < 0.2 < err(per_call)


def test_static_layers_matching_outlier_layers_stay_static():
    """quant.outlier_channels splits dynamic layers only: a static encoder layer that an outlier pattern
    also names keeps its calibrated scales, not the per-call ranges of the outlier kind."""
    model = _fused()
    raw = {"scheme": "static", "outlier_channels": 4, "outlier_layers": ["*.mlp.2", "encoder.*.attn.qkv"]}
    report = quantize_model(model, parse_quant_config(raw), _stats(model))
    assert report["layers"]["encoder.blocks.0.attn.qkv"] == "static"
    assert report["layers"]["encoder.blocks.0.mlp.2"] == "dynamic_outliers"
    assert type(model.encoder.blocks[0].attn.qkv) is StaticInt8Linear


def test_a_layer_left_unconverted_fails_the_count(monkeypatch):
    """The conversion counts what the model really holds: a Linear the layer map calls INT8 but that
    stayed float (a replacement that missed) is a QuantError, not a model quietly part float."""
    import whisper_int8.quant.convert as convert

    real_set = convert._set

    def skip_one(model, name, module):
        if name != "decoder.blocks.1.mlp.2":
            real_set(model, name, module)

    monkeypatch.setattr(convert, "_set", skip_one)
    with pytest.raises(QuantError, match=r"'int8_linear': 21, 'float_linear': 1.* expects 22 int8 Linear"):
        quantize_model(_fused(), parse_quant_config({}))


def _int8_weights(model: nn.Module) -> dict[str, tuple]:
    """The int8 weight and scales of every int8 module, by the name its torchao Linear will have."""
    return {
        f"{n}.logits" if isinstance(m, Int8TiedEmbedding) else n: m.int8_weight()
        for n, m in model.named_modules()
        if getattr(m, "kind", None) == "int8"
    }


@pytest.mark.parametrize(
    "raw",
    [
        {"scheme": "dynamic"},
        {"scheme": "weight_only"},
        {"scheme": "dynamic", "per_channel": False},
        {"scheme": "weight_only", "per_channel": False},
    ],
    ids=["dynamic", "weight_only", "dynamic-per-tensor", "weight_only-per-tensor"],
)
def test_torchao_conversion_mechanics_on_cpu(raw):
    """The CUDA backend's conversion (int8 modules -> torchao int8 Linear) checked on CPU tensors: the
    saved int8 weights and scales carry over bit-exact, kept-float layers stay float."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8Tensor

    from whisper_int8.quant.cuda import to_torchao
    from whisper_int8.transcribe import _fp16

    model = _fused()
    kept = "decoder.blocks.0.mlp.0"
    quantize_model(model, parse_quant_config({**raw, "keep_float": [kept]}))
    saved = _int8_weights(model)
    layer = "encoder.blocks.0.mlp.2"
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    mel = _mel(3)
    with torch.no_grad():
        want, want_layer = model(mel, TOKENS), model.get_submodule(layer)(x)
        model = to_torchao(model, raw["scheme"], "cpu")
        got, got_layer = model(mel, TOKENS), model.get_submodule(layer)(x)
    assert not any(getattr(m, "kind", None) == "int8" for m in model.modules())
    assert len(saved) == N_LINEAR  # every Linear but the kept one, plus the logits
    for name, (q, scale, bias) in saved.items():
        linear = model.get_submodule(name)
        weight = linear.weight
        assert isinstance(weight, Int8Tensor), name
        # cuBLAS int8 GEMMs need N % 8 == 0: the 51865 logits rows are padded with zero rows (scale 1)
        assert weight.qdata.shape[0] % 8 == 0 and weight.qdata.shape[0] - len(q) < 8, name
        pad = weight.qdata.shape[0] - len(q)
        assert torch.equal(weight.qdata[: len(q)], q) and not weight.qdata[len(q) :].any(), name
        got_scale = weight.scale.flatten()
        if scale.numel() > 1:
            assert torch.equal(got_scale[len(q) :], torch.ones(pad)), name
            got_scale = got_scale[: len(q)]
        assert torch.equal(got_scale, scale), name
        assert (linear.bias is None) if bias is None else torch.equal(linear.bias, bias), name
        assert (weight.act_quant_kwargs is not None) == (raw["scheme"] == "dynamic"), name
    assert type(model.get_submodule(kept).weight) is nn.Parameter  # float, not torchao
    assert got.shape == want.shape  # the padded logits cut back to the vocabulary
    assert not _fp16(model)  # torchao weights report float32: transcribe feeds FP32 activations
    if raw["scheme"] == "weight_only":  # the same int8 weight times float activations as on CPU
        torch.testing.assert_close(got_layer, want_layer, rtol=1e-5, atol=1e-5)
    if raw["scheme"] == "dynamic" and not _torchao_cpu_int_mm_is_exact():
        return  # its CPU kernel saturates on this host (oneDNN u8s8 without VNNI); cuBLAS does not
    assert (got - want).norm() / want.norm() < 0.05


@pytest.mark.parametrize("scheme", ["dynamic", "weight_only"])
def test_torchao_embedding_lookup_reads_the_int8_rows(scheme):
    """Regression (a review): on CUDA the token embedding kept a float32 lookup table beside its int8
    logits weight (101 MB more in base, the INT8 model's tensors 183 MB instead of 81), where the README
    says one int8 copy serves both. The lookup now reads the int8 rows: the same values, bit for bit."""
    pytest.importorskip("torchao")
    from whisper_int8.quant.cuda import to_torchao

    model = _fused()
    quantize_model(model, parse_quant_config({"scheme": scheme}))
    cpu_embedding = model.decoder.token_embedding
    with torch.no_grad():
        want = cpu_embedding(TOKENS)
    emb = to_torchao(model, scheme, "cpu").decoder.token_embedding
    floats = [n for n, t in emb.state_dict().items() if t.dtype == torch.float32 and t.dim() == 2]
    assert floats == ["logits.weight"]  # the torchao int8 weight (reports float32), no float table
    assert emb.logits.weight.qdata.dtype == torch.int8
    with torch.no_grad():
        assert torch.equal(emb(TOKENS), want)


def test_torchao_dynamic_pads_a_decoding_step_to_int_mm_rows(monkeypatch):
    """torch's CUDA ``_int_mm`` refuses 16 rows or fewer and torchao then multiplies in float32: a decoding
    step's rows (1 a beam) are padded with zero rows up to INT_MM_MIN_ROWS, the result the unpadded one's
    (each row is quantized alone). Checked on CPU tensors, recording the rows the int8 GEMM gets."""
    pytest.importorskip("torchao")
    # (``torchao.quantization.quantize_`` is also a function's name: import the module by its full name)
    int8_tensor = importlib.import_module("torchao.quantization.quantize_.workflows.int8.int8_tensor")
    from whisper_int8.quant.cuda import INT_MM_MIN_ROWS, RowPaddedLinear, to_torchao

    model = _fused()
    quantize_model(model, parse_quant_config({"scheme": "dynamic"}))
    model = to_torchao(model, "dynamic", "cpu")
    layer = model.get_submodule("decoder.blocks.0.mlp.0")
    assert isinstance(layer, RowPaddedLinear)
    assert isinstance(model.decoder.token_embedding.logits, RowPaddedLinear)
    rows: list[int] = []
    matmul = int8_tensor.int_scaled_matmul
    monkeypatch.setattr(int8_tensor, "int_scaled_matmul", lambda a, *r: rows.append(len(a)) or matmul(a, *r))
    x = torch.randn(INT_MM_MIN_ROWS + 6, layer.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        step = layer(x[:3].reshape(1, 3, -1))  # a first step: 3 prompt tokens
        many = layer(x)  # more rows than the minimum: not padded
    assert rows == [INT_MM_MIN_ROWS, len(x)]
    assert step.shape == (1, 3, layer.out_features)
    torch.testing.assert_close(step[0], many[:3], rtol=0, atol=0)
    with torch.no_grad():
        logits = model.decoder(TOKENS[:1, :1], model.encoder(_mel(1)))  # greedy: one row
    assert rows[-1] == INT_MM_MIN_ROWS and logits.shape[-1] == model.dims.n_vocab and logits.isfinite().all()


def _torchao_cpu_int_mm_is_exact() -> bool:
    """Whether torchao's CPU int8 GEMM gives exact int32 sums here: with oneDNN below AVX-512 VNNI (an AVX2
    CPU, or ONEDNN_MAX_CPU_ISA capped) its u8s8 path saturates pair sums, as fbgemm's would at 8 bits."""
    from torchao.kernel.intmm import int_scaled_matmul

    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (4, 512), dtype=torch.int8, generator=gen)
    b = torch.randint(-127, 128, (512, 8), dtype=torch.int8, generator=gen)
    return torch.equal(int_scaled_matmul(a, b, torch.ones(4, 1)), (a.int() @ b.int()).float())


def test_torchao_keeps_the_outlier_channels_in_float():
    """On CUDA an outlier layer becomes torchao's int8 Linear (the saved q and scale) plus the same float
    columns; checked on CPU tensors against the fbgemm layer it replaces."""
    pytest.importorskip("torchao")
    from whisper_int8.quant.cuda import TorchaoOutlierLinear, to_torchao

    model = _fused()
    quantize_model(model, parse_quant_config({"outlier_channels": 4}), _stats(model))
    name = "encoder.blocks.1.mlp.2"
    cpu_layer = model.get_submodule(name)
    q, scale, _ = cpu_layer.int8_weight()
    x = torch.randn(30, 256, generator=torch.Generator().manual_seed(1))
    x[:, cpu_layer.outlier_index] *= 50.0
    with torch.no_grad():
        want = cpu_layer(x)
        model = to_torchao(model, "dynamic", "cpu")
        layer = model.get_submodule(name)
        got = layer(x)
    assert isinstance(layer, TorchaoOutlierLinear)
    assert torch.equal(layer.rest.weight.qdata, q) and torch.equal(layer.rest.weight.scale.flatten(), scale)
    assert torch.equal(layer.outlier_index, cpu_layer.outlier_index)
    assert (got - want).norm() / want.norm() < 0.02  # symmetric per-token vs fbgemm's range: close


def test_the_torchao_load_needs_no_cpu_quantized_engine(tmp_path, monkeypatch):
    """An aarch64 GPU host's torch has no x86/fbgemm engine: the torchao load builds its int8 layers from
    the saved tensors without packing them for the CPU kernels first (checked on CPU tensors)."""
    pytest.importorskip("torchao")
    from torchao.quantization import Int8Tensor

    import whisper_int8.model_dir as md

    model = _fused()
    cfg = parse_quant_config({"outlier_channels": 4})
    out = _save(tmp_path, model, cfg, quantize_model(model, cfg, _stats(model)))
    saved = _int8_weights(model)
    mel = _mel(3)
    with torch.no_grad():
        want = model(mel, TOKENS)
    monkeypatch.setattr(
        type(torch.backends.quantized), "supported_engines", property(lambda _: ["qnnpack", "none"])
    )
    monkeypatch.setattr(md, "resolve_backend", lambda backend, device: "torchao")  # as for device="cuda"
    loaded = load_model_dir(out)
    for name, (q, scale, _) in saved.items():
        weight = loaded.get_submodule(f"{name}.rest" if name.endswith("mlp.2") else name).weight
        assert isinstance(weight, Int8Tensor) and torch.equal(weight.qdata[: len(q)], q), name
        assert torch.equal(weight.scale.flatten()[: len(scale)], scale), name
    with torch.no_grad():
        got = loaded(mel, TOKENS)
    assert (got - want).norm() / want.norm() < 0.05 or not _torchao_cpu_int_mm_is_exact()


def test_torchao_refuses_static(tmp_path):
    model = _fused()
    cfg = parse_quant_config({"scheme": "static"})
    out = _save(tmp_path, model, cfg, quantize_model(model, cfg, _stats(model)))
    with pytest.raises(ParamError, match=r"quant.scheme=static runs on CPU only.*evaluate.device: cpu"):
        load_model_dir(out, device="cuda")  # refused before anything touches a GPU


def test_torchao_missing_says_how_to_install(monkeypatch):
    for name in ["torchao", *(m for m in sys.modules if m.startswith("torchao."))]:
        monkeypatch.setitem(sys.modules, name, None)  # None: `import torchao` raises ImportError
    from whisper_int8.quant.cuda import to_torchao

    model = _fused()
    quantize_model(model, parse_quant_config({}))
    with pytest.raises(BackendError, match=re.escape("needs torchao: pip install -e '.[gpu]'")):
        to_torchao(model, "dynamic", "cpu")  # a user error: one line, exit 2, not a traceback


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "raw",
    [{"scheme": "dynamic"}, {"scheme": "weight_only"}, {"scheme": "dynamic", "per_channel": False}],
    ids=["dynamic", "weight_only", "dynamic-per-tensor"],
)
def test_cuda_int8_via_torchao(tmp_path, raw):
    from whisper_int8.transcribe import transcribe_clip

    model = _fused()
    cfg = parse_quant_config({**raw, "keep_float": ["decoder.blocks.0.mlp.0"]})  # a float layer as well
    out = _save(tmp_path, model, cfg, quantize_model(model, cfg))
    cpu = load_model_dir(out)
    gpu = load_model_dir(out, device="cuda")
    assert next(gpu.parameters()).is_cuda
    mel = _mel(4)
    with torch.no_grad():
        want = cpu(mel, TOKENS)
        got = gpu(mel.cuda(), TOKENS.cuda()).cpu()
    assert (got - want).norm() / want.norm() < 0.05
    # not silence: transcribe_clip returns "" for it before the model runs (a review: this test used zeros)
    audio = torch.full((16000,), 0.1).numpy()
    out = transcribe_clip(gpu, audio, "en", max_tokens=8)  # FP32 activations, the padded int8 GEMMs
    assert isinstance(out["text"], str) and out["tokens"] > 0
    text = whisper.transcribe(gpu, audio, language="en", temperature=0.0, sample_len=8, fp16=False)["text"]
    assert isinstance(text, str)
