"""CTranslate2 reader: a tiny random Whisper written as CT2 reads back to identical tensors and logits."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from whisper_int8.ct2 import CT2FormatError, dims_of, from_openai_state_dict, read_ct2, write_ct2
from whisper_int8.model_sources import load_source


def export_ct2(model, dest: Path, dtype=torch.float32, heads=None) -> Path:
    """Write ``model`` as a CTranslate2 directory (model.bin + config.json), as faster-whisper expects."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "model.bin").write_bytes(write_ct2(from_openai_state_dict(model.state_dict(), model.dims, dtype)))
    (dest / "config.json").write_text(json.dumps({"alignment_heads": heads or [[1, 0], [1, 1]]}))
    return dest


def logits(model, tokens=(50258, 50259, 50359, 50363, 440, 2068)):
    torch.manual_seed(1)
    mel = torch.randn(1, model.dims.n_mels, 3000)
    with torch.no_grad():
        return model(mel, torch.tensor([tokens]))


def test_float32_round_trip_is_exact(tiny_model, tmp_path):
    loaded = load_source(f"ct2:{export_ct2(tiny_model, tmp_path / 'ct2')}")
    assert loaded.dims == tiny_model.dims
    ref, got = tiny_model.state_dict(), loaded.model.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert torch.equal(logits(tiny_model), logits(loaded.model))
    assert loaded.alignment_heads == [[1, 0], [1, 1]]
    assert loaded.model.alignment_heads.to_dense().nonzero().tolist() == [[1, 0], [1, 1]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_as_fp32(tiny_model, tmp_path, dtype):
    loaded = load_source(f"ct2:{export_ct2(tiny_model, tmp_path / 'ct2', dtype)}")
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v.to(dtype).float()), k
    assert (logits(tiny_model) - logits(loaded.model)).abs().max() < 0.05


def test_qkv_split_puts_zero_key_bias_slot_aside(tiny_model):
    spec = from_openai_state_dict(tiny_model.state_dict(), tiny_model.dims, torch.float32)
    bias = spec.variables["encoder/layer_0/self_attention/linear_0/bias"]
    n = tiny_model.dims.n_audio_state
    assert bias.shape == (3 * n,) and torch.count_nonzero(bias[n : 2 * n]) == 0
    assert dims_of(spec) == tiny_model.dims


def test_alias_and_scalars_survive_serialization(tiny_model):
    spec = from_openai_state_dict(tiny_model.state_dict(), tiny_model.dims)
    back = read_ct2(bytearray(write_ct2(spec)))
    assert back.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert int(back.variables["decoder/num_heads"]) == tiny_model.dims.n_text_head
    assert back.variables.keys() == spec.variables.keys()


def test_reader_rejects_bad_version_and_trailing_bytes(tiny_model):
    raw = write_ct2(from_openai_state_dict(tiny_model.state_dict(), tiny_model.dims))
    with pytest.raises(CT2FormatError, match="unsupported CTranslate2 binary version 99"):
        read_ct2(bytearray(struct.pack("<I", 99) + raw[4:]), "x.bin")
    with pytest.raises(CT2FormatError, match="trailing bytes"):
        read_ct2(bytearray(raw + b"\0" * 7), "x.bin")
