"""load_model_dir: fp32, fused and int8 directories load alone and transcribe; bad ones fail clearly."""

from __future__ import annotations

import json
import mmap
import os
import re
import shutil
import struct
import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import whisper

from whisper_int8.fsutil import atomic_dir
from whisper_int8.fuse import FusedTextDecoder, fuse_model, save_fused_dir
from whisper_int8.mapped_pages import drop_table_pages_after_lookups
from whisper_int8.model_dir import load_model_dir
from whisper_int8.model_sources import LoadedModel, ModelSourceError, save_checkpoint
from whisper_int8.quant.config import parse_quant_config
from whisper_int8.quant.convert import quantize_model, save_int8_dir
from whisper_int8.quant.cpu import Int8TiedEmbedding

from .conftest import make_tiny_whisper

TOKENS = torch.tensor([[50258, 50259, 50359, 50363, 440]])


def build_dirs(root: Path) -> dict[str, Path]:
    """models/fp32, models/fused and models/int8 of the tiny model, written as the stages write them."""
    model = make_tiny_whisper()
    dirs = {k: root / k for k in ("fp32", "fused", "int8")}
    dirs["fp32"].mkdir(parents=True)
    save_checkpoint(dirs["fp32"] / "model.pt", LoadedModel(model, model.dims, [[1, 1]]))
    counts = fuse_model(model)
    with atomic_dir(dirs["fused"]) as tmp:
        save_fused_dir(tmp, model, [[1, 1]], counts, {})
    cfg = parse_quant_config({})
    report = quantize_model(model, cfg)
    with atomic_dir(dirs["int8"]) as tmp:
        save_int8_dir(
            tmp, model, cfg, report, [[1, 1]], fp32_bytes=(dirs["fp32"] / "model.pt").stat().st_size
        )
    return dirs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    return build_dirs(tmp_path_factory.mktemp("models"))


@pytest.mark.parametrize("kind", ["fp32", "fused", "int8"])
def test_each_kind_loads_and_transcribes(dirs, kind):
    model = load_model_dir(dirs[kind])
    assert isinstance(model, whisper.model.Whisper)
    assert (kind != "fp32") == isinstance(model.decoder, FusedTextDecoder)
    assert model.alignment_heads.to_dense().nonzero().tolist() == [[1, 1]]
    threads = torch.get_num_threads()
    audio = (torch.randn(16000 * 2, generator=torch.Generator().manual_seed(0)) * 0.1).numpy()
    result = model.transcribe(audio, language="en", temperature=0.0, fp16=False, sample_len=12)
    assert isinstance(result["text"], str)
    assert torch.get_num_threads() == threads  # the one-thread decode loop restores the setting
    if kind == "fused":  # the same function as FP32: the same greedy tokens
        fp32 = load_model_dir(dirs["fp32"]).transcribe(
            audio, language="en", temperature=0.0, fp16=False, sample_len=12
        )
        assert [s["tokens"] for s in result["segments"]] == [s["tokens"] for s in fp32["segments"]]


def test_kinds_agree(dirs):
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fp32, fused, int8 = (load_model_dir(dirs[k])(mel, TOKENS) for k in ("fp32", "fused", "int8"))
    assert (fp32 - fused).abs().max() <= 1e-4
    assert (int8 - fp32).norm() / fp32.norm() < 0.1
    card = json.loads((dirs["int8"] / "model_card.json").read_text())
    assert card["int8_linear"] == 22 and card["float_linear"] == 0 and card["int8_embedding"] == 1
    assert card["bytes"] < card["fp32_bytes"] * 0.35 and card["ratio_to_fp32"] == round(
        card["bytes"] / card["fp32_bytes"], 4
    )


def _mapped_rss_kb(path: Path) -> int | None:
    """Resident kB of this process's mappings of ``path`` (None: not mapped)."""
    total, inside = None, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            inside = len(fields) == 6 and fields[5] == str(path)
            total = (total or 0) if inside else total
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/pagemap").is_file(), reason="needs Linux /proc")
def test_int8_weights_file_stays_mapped_not_resident(tmp_path, dirs):
    """Packing reads every int8 matrix once; afterwards only embedding rows are read from the file."""
    shutil.copytree(dirs["int8"], tmp_path / "int8")  # a path no other test has mapped
    weights = (tmp_path / "int8" / "int8.pt").resolve()
    model = load_model_dir(tmp_path / "int8")
    assert _mapped_rss_kb(weights) == 0  # mapped, and none of it counted in RSS
    emb = model.decoder.token_embedding.weight_int8
    with torch.no_grad():
        model.decoder(TOKENS, torch.randn(1, model.dims.n_audio_ctx, model.dims.n_audio_state))
    assert 0 < _mapped_rss_kb(weights) < emb.numel() // 1024 + 64  # read back on demand
    assert _resident_pages(emb) <= 2  # the rows looked up were dropped again (see the next test)
    # a second load of the same file advises only its own mapping: the first model's pages stay
    ln = model.decoder.ln.weight  # loaded with assign=True: a view of the mapped file
    with torch.no_grad():
        ln.add_(1.0)  # written: now a private (anonymous) page of the first mapping
    written = ln.clone()
    load_model_dir(tmp_path / "int8")
    assert torch.equal(ln, written)


def test_bad_directories(tmp_path, dirs):
    with pytest.raises(ModelSourceError, match="model directory not found"):
        load_model_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="not a model directory"):
        load_model_dir(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "quant_config.json").write_text('{"format": "something-else"}')
    with pytest.raises(ModelSourceError, match="format"):
        load_model_dir(bad)
    (bad / "quant_config.json").write_text((dirs["int8"] / "quant_config.json").read_text())
    with pytest.raises(ModelSourceError, match="weights file missing"):
        load_model_dir(bad)
    (bad / "quant_config.json").write_text("{not json")
    with pytest.raises(ModelSourceError, match="unreadable"):
        load_model_dir(bad)


def _damaged_copies(tmp_path: Path, source: Path, name: str) -> dict[str, Path]:
    """Copies of the model directory ``source`` whose ``name`` file is damaged in one way each."""
    data = (source / name).read_bytes()
    damage = {
        "truncated": lambda f: f.write_bytes(data[: len(data) // 2]),  # an interrupted copy
        "middle": lambda f: f.write_bytes(data[:200] + bytes(len(data) - 400) + data[-200:]),
        "foreign zip": lambda f: zipfile.ZipFile(f, "w").writestr("x.txt", "not torch"),
        "refused pickle": lambda f: torch.save({"w": torch.zeros(1), "o": Fraction(1, 3)}, f),
        "a list": lambda f: torch.save([torch.zeros(1)], f),
    }
    copies = {}
    for kind, write in damage.items():
        copy = tmp_path / f"{source.name}-{kind.replace(' ', '-')}"
        shutil.copytree(source, copy)
        write(copy / name)
        copies[kind] = copy
    return copies


@pytest.mark.parametrize(
    ("kind", "name", "card", "stage"),
    [
        ("int8", "int8.pt", "quant_config.json", r"the convert stage \(dvc repro convert\)"),
        ("fused", "fused.pt", "model_card.json", "the fuse stage"),
    ],
)
def test_damaged_weights_are_one_line_errors_naming_the_file_and_stage(
    tmp_path, dirs, kind, name, card, stage
):
    """Not torch's multi-line RuntimeError or UnpicklingError (a traceback, exit 1)."""
    messages = {}
    for damage, copy in _damaged_copies(tmp_path, dirs[kind], name).items():
        # the digest the description keeps catches every damage first (a flipped byte in a tensor
        # loaded silently into a fused model: logits off by 5e36)
        with pytest.raises(ModelSourceError, match=f"{name}: not the weights {card} was written with"):
            load_model_dir(copy)
        config = json.loads((copy / card).read_text())
        del config["weights_sha256"]  # as written before the digest: torch's own checks follow
        (copy / card).write_text(json.dumps(config))
        with pytest.raises(ModelSourceError) as info:
            load_model_dir(copy)
        messages[damage] = message = str(info.value)
        assert message.startswith(f"{copy / name}: "), message
        assert re.search(rf"; rerun {stage}", message) and "\n" not in message, message
    assert "unreadable (truncated" in messages["truncated"]
    assert "corrupted)" in messages["middle"] and "miniz" not in messages["middle"]  # no advice paragraphs
    assert "unreadable (holds a fractions.Fraction, not only tensors" in messages["refused pickle"]
    assert "not a mapping of names to tensors" in messages["a list"]


def test_a_config_from_another_conversion_is_refused(tmp_path, dirs):
    """quant_config.json and int8.pt of conversions with different tensors: silently other weights or a
    state-dict traceback; now one line each. (Conversions that write the same tensors, per-token against
    per-call ranges, write the same int8.pt: the digest cannot and need not tell them apart.)"""
    bad = tmp_path / "int8"
    shutil.copytree(dirs["int8"], bad)
    config = json.loads((bad / "quant_config.json").read_text())
    (bad / "quant_config.json").write_text(json.dumps({**config, "weights_sha256": "0" * 64}))
    with pytest.raises(ModelSourceError, match="int8.pt: not the weights quant_config.json was written"):
        load_model_dir(bad)
    del config["weights_sha256"]  # written before the digest: the structure is still checked
    for broken in ({**config, "dims": {**config["dims"], "n_audio_state": 128}}, {**config, "config": {}}):
        (bad / "quant_config.json").write_text(json.dumps(broken))
        with pytest.raises(ModelSourceError, match=r"quant_config.json: does not describe int8.pt \("):
            load_model_dir(bad)


def test_int8_weights_named_outside_the_model_directory_are_refused(tmp_path, dirs):
    """Regression (a review): quant_config.json's ``weights`` was joined to the folder as written, so
    ``../elsewhere/int8.pt`` or an absolute path loaded weights the directory does not hold (promote's
    load passed, the registered artifact lacked them); ``null`` was looked up as a file named None."""
    bad, outside = tmp_path / "int8", tmp_path / "elsewhere"
    shutil.copytree(dirs["int8"], bad)
    outside.mkdir()
    shutil.move(bad / "int8.pt", outside / "int8.pt")
    config = json.loads((bad / "quant_config.json").read_text())
    for name in ("../elsewhere/int8.pt", str(outside / "int8.pt"), "..", None, 5):
        (bad / "quant_config.json").write_text(json.dumps({**config, "weights": name}))
        message = re.escape(f"quant_config.json: weights {name!r} is not a file name in {bad}")
        with pytest.raises(ModelSourceError, match=message):
            load_model_dir(bad)
    shutil.move(outside / "int8.pt", bad / "int8.pt")
    (bad / "quant_config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "weights"}))
    assert isinstance(load_model_dir(bad), whisper.model.Whisper)  # written before the key: int8.pt


def test_an_fp32_checkpoint_replaced_under_its_card_is_refused(tmp_path):
    """Regression (a review): the lineage checks take models/fp32's card's checkpoint_sha256 on trust,
    and no load compared model.pt with it: another model.pt under the kept card passed check_made_from
    and was fused or evaluated as the card's model (an INT8 model measured against another FP32 one)."""
    from whisper_int8.fetch import fetch_model
    from whisper_int8.stage_files import check_made_from, fp32_digest, load_fp32

    for seed in (0, 1):
        model = make_tiny_whisper(seed)
        ckpt = {"dims": dict(model.dims.__dict__), "model_state_dict": model.state_dict()}
        torch.save(ckpt, tmp_path / f"{seed}.pt")
        fetch_model(f"file:{tmp_path / f'{seed}.pt'}", tmp_path / f"fp32-{seed}")
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "model_card.json").write_text(json.dumps({"fp32_sha256": fp32_digest(tmp_path / "fp32-0")}))
    shutil.copy(tmp_path / "fp32-1" / "model.pt", tmp_path / "fp32-0" / "model.pt")  # the card kept
    assert check_made_from(fused, tmp_path / "fp32-0", "x")  # the card's word: what loading must back
    message = r"fp32-0/model.pt: not the checkpoint model_card.json records \(sha256 .*: replaced or damaged"
    for load in (load_model_dir, load_fp32):  # evaluate and benchmarks; the fuse stage
        with pytest.raises(ModelSourceError, match=message):
            load(tmp_path / "fp32-0")
    assert isinstance(load_fp32(tmp_path / "fp32-1").model, whisper.model.Whisper)


def test_a_fused_card_that_does_not_describe_its_weights_is_one_line(tmp_path, dirs):
    """Regression: another size's dims, a card without dims and alignment heads outside the decoder
    were load_state_dict's 98-line traceback, a KeyError and an IndexError (in calibrate, convert and
    ``transcribe --model models/fused``)."""
    bad = tmp_path / "fused"
    shutil.copytree(dirs["fused"], bad)
    card = json.loads((bad / "model_card.json").read_text())
    no_dims = {k: v for k, v in card.items() if k != "dims"}
    cases = [
        # load_state_dict's own line, not its header "Error(s) in loading state_dict for Whisper:"
        (
            {**card, "dims": {**card["dims"], "n_audio_state": 128}},
            r"does not describe fused.pt \(size mismatch for ",
        ),
        (no_dims, r"does not describe fused.pt \('dims'\); rerun the fuse stage"),
        ({**card, "alignment_heads": [[7, 0]]}, r"alignment_heads \[7, 0\] outside the decoder's"),
    ]
    for broken, message in cases:
        (bad / "model_card.json").write_text(json.dumps(broken))
        with pytest.raises(
            ModelSourceError, match=rf"^{re.escape(str(bad / 'model_card.json'))}: .*{message}"
        ):
            load_model_dir(bad)


def test_int8_alignment_heads_outside_the_decoder_are_one_line(tmp_path, dirs):
    bad = tmp_path / "int8"
    shutil.copytree(dirs["int8"], bad)
    config = json.loads((bad / "quant_config.json").read_text())
    (bad / "quant_config.json").write_text(json.dumps({**config, "alignment_heads": [[7, 0]]}))
    with pytest.raises(ModelSourceError, match=r"quant_config.json: alignment_heads \[7, 0\] outside"):
        load_model_dir(bad)


def test_a_model_converted_for_the_gpu_names_its_config_and_the_fix_on_the_cpu(tmp_path, dirs):
    """Regression: "quant.backend=torchao needs a CUDA device" named neither the directory nor that
    the model must be converted again."""
    bad = tmp_path / "int8"
    shutil.copytree(dirs["int8"], bad)
    config = json.loads((bad / "quant_config.json").read_text())
    (bad / "quant_config.json").write_text(
        json.dumps({**config, "config": {**config["config"], "backend": "torchao"}})
    )
    with pytest.raises(
        ModelSourceError,
        match=r"quant_config.json: converted for a CUDA GPU \(quant.backend: torchao\), loaded on cpu",
    ):
        load_model_dir(bad)


def test_a_torch_without_x86_int8_kernels_is_a_backend_error_not_a_bad_file(dirs, monkeypatch):
    """Regression: on an ARM torch the INT8 load said quant_config.json "does not describe int8.pt" and
    sent the user to rerun convert; convert and calibrate gave a traceback."""
    from whisper_int8 import cli, cli_common
    from whisper_int8.quant.cpu import BackendError

    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda _: ["qnnpack"]))
    with pytest.raises(
        BackendError, match=r"no 'x86' quantized engine \(it has qnnpack\): INT8 on the CPU needs"
    ):
        load_model_dir(dirs["int8"])
    assert BackendError in cli_common.USER_ERRORS and BackendError in cli.user_errors()


def test_a_config_value_convert_would_refuse_is_refused_at_load(tmp_path, dirs):
    """Regression: backend 'bogus' was a bare "quantized engine 'bogus' not available" that named no
    file, and scheme 'bogus' loaded without a word."""
    bad = tmp_path / "int8"
    shutil.copytree(dirs["int8"], bad)
    config = json.loads((bad / "quant_config.json").read_text())
    for key in ("backend", "scheme"):
        (bad / "quant_config.json").write_text(
            json.dumps({**config, "config": {**config["config"], key: "bogus"}})
        )
        with pytest.raises(ModelSourceError, match=rf"quant_config.json: quant.{key}='bogus': choose one of"):
            load_model_dir(bad)


def test_a_layer_kind_this_version_does_not_know_names_the_config_and_the_fix(tmp_path, dirs):
    """Regression: a kind from another version (or an edit) was "quant_config.json: layer ... has unknown
    kind" with no directory (which of the FP32 and INT8 models?) and no fix, unlike every other load error."""
    bad = tmp_path / "int8"
    shutil.copytree(dirs["int8"], bad)
    config = json.loads((bad / "quant_config.json").read_text())
    config["layers"]["encoder.blocks.0.attn.qkv"] = "dynamic_v2"
    (bad / "quant_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError) as info:
        load_model_dir(bad)
    message = str(info.value)
    config_path = bad / "quant_config.json"
    assert message.startswith(f"{config_path}: layer encoder.blocks.0.attn.qkv has kind "), message
    assert "'dynamic_v2'" in message and "; rerun the convert stage (dvc repro convert)" in message, message


def test_damaged_json_is_a_one_line_error(tmp_path, dirs):
    bad = tmp_path / "int8"
    shutil.copytree(dirs["int8"], bad)
    (bad / "quant_config.json").write_bytes(b"\xff\xfe\x00binary")  # not UTF-8: no traceback either
    with pytest.raises(
        ModelSourceError, match=r"quant_config.json: unreadable \(.*\); rerun the convert stage"
    ):
        load_model_dir(bad)
    (bad / "quant_config.json").write_text("[1, 2]")
    with pytest.raises(ModelSourceError, match=r"quant_config.json: format 'a JSON list' is not"):
        load_model_dir(bad)


def test_cli_transcribe_with_a_truncated_int8_file_is_one_line(tmp_path, dirs, capsys):
    """README: a bad model directory stops ``whisper-int8 transcribe`` with one line, exit 2."""
    from whisper_int8 import cli
    from whisper_int8.audio.wavio import wav_bytes

    bad = tmp_path / "int8"
    shutil.copytree(dirs["int8"], bad)
    data = (bad / "int8.pt").read_bytes()
    (bad / "int8.pt").write_bytes(data[: len(data) // 2])
    wav = tmp_path / "a.wav"
    wav.write_bytes(wav_bytes((np.sin(np.arange(16000) / 5) * 8000).astype(np.int16)))
    assert cli.main(["transcribe", "--model", str(bad), str(wav)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad / 'int8.pt'}: not the weights") and err.count("\n") == 1, err


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_int8_loads_beside_a_mapped_file_whose_name_is_not_utf8(tmp_path, dirs, monkeypatch):
    """Regression: /proc/self/maps was read as UTF-8 text, so one file mapped anywhere in the process
    under a name that is not UTF-8 (latin-1 "données", say) failed every INT8 load with a
    UnicodeDecodeError. Its own mapping is still found and advised."""
    from whisper_int8 import model_dir

    advised = []

    def spy(path: Path, state: dict) -> list:
        advised.extend(ranges := unmap(path, state))
        return ranges

    unmap = model_dir.unmap_resident_pages
    monkeypatch.setattr(model_dir, "unmap_resident_pages", spy)
    other = tmp_path / os.fsdecode(b"donn\xe9es.bin")
    other.write_bytes(bytes(mmap.PAGESIZE))
    shutil.copytree(dirs["int8"], tmp_path / "int8")  # a path no other test has mapped
    with open(other, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ):
        model = load_model_dir(tmp_path / "int8")
    assert advised and isinstance(model.decoder.token_embedding, Int8TiedEmbedding)


def _resident_pages(t: torch.Tensor) -> int:
    """How many of the pages holding ``t`` are present in this process (/proc/self/pagemap bit 63)."""
    page = mmap.PAGESIZE
    first, last = t.data_ptr() // page, (t.data_ptr() + t.numel() * t.element_size() - 1) // page
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        entries = f.read((last - first + 1) * 8)
    return sum(e >> 63 for (e,) in struct.iter_unpack("<Q", entries))


@pytest.mark.skipif(not Path("/proc/self/pagemap").is_file(), reason="needs Linux /proc")
def test_embedding_lookups_leave_no_table_pages_resident(tmp_path, dirs):
    """Fault-around maps far more of the file than the rows read; the hook drops them after each lookup."""
    shutil.copytree(dirs["int8"], tmp_path / "int8")
    model = load_model_dir(tmp_path / "int8")
    emb = model.decoder.token_embedding
    table = emb.weight_int8
    expected = table.clone()  # read it all: every page resident
    assert _resident_pages(table) > table.numel() // mmap.PAGESIZE - 2
    tokens = torch.tensor([[50258, 50259, 50359, 440, 1000, 30000]])
    with torch.no_grad():
        rows = emb(tokens)
    assert _resident_pages(table) <= 2  # all but the two it shares with its neighbours in the file
    assert torch.equal(rows, F.embedding(tokens, expected).float() * emb.weight_scale[tokens].unsqueeze(-1))
    assert torch.equal(table, expected)  # read back from the file, unchanged


@pytest.mark.skipif(not Path("/proc/self/pagemap").is_file(), reason="needs Linux /proc")
def test_a_table_written_in_place_is_no_longer_advised(tmp_path, dirs):
    """A written private page is anonymous: advising it would revert the write to the file's bytes."""
    shutil.copytree(dirs["int8"], tmp_path / "int8")
    emb = load_model_dir(tmp_path / "int8").decoder.token_embedding
    tokens = torch.tensor([[440]])
    with torch.no_grad():
        emb.weight_int8[440] = 7
        emb(tokens)
        emb(tokens)
    assert (emb.weight_int8[440] == 7).all()
    assert not emb._forward_hooks  # removed for good


def test_tables_not_mapped_from_a_file_are_never_advised():
    """On anonymous memory MADV_DONTNEED would zero the table: no hook unless it lies in a mapped range."""
    emb = Int8TiedEmbedding.from_float(torch.nn.Embedding(4096, 16))  # anonymous memory
    table = emb.weight_int8
    start = table.data_ptr()
    drop_table_pages_after_lookups(emb, [(start - 4096, start + 4096)])  # not all inside
    drop_table_pages_after_lookups(emb, [])
    assert not emb._forward_hooks
    expected = table.clone()
    with torch.no_grad():
        emb(torch.tensor([[440, 1000]]))
    assert torch.equal(table, expected)


def test_an_english_only_model_is_refused_for_clips_in_other_languages(tmp_path):
    """tiny.en and the like have no language tokens: evaluated (or calibrated) on Spanish or Chinese
    clips they decode English and score hundreds of percent, deltas of pure noise. Refused first."""
    from dataclasses import replace

    from whisper_int8.audio import Clip
    from whisper_int8.calibrate import calibrate
    from whisper_int8.evaluate import transcribe_split
    from whisper_int8.model_dir import check_languages
    from whisper_int8.params import ParamError

    from .conftest import TINY_DIMS, make_tiny_whisper

    english = make_tiny_whisper(dims=replace(TINY_DIMS, n_vocab=51864))
    assert not english.is_multilingual
    check_languages(english, {"en"}, "split")
    check_languages(make_tiny_whisper(), {"en", "es"}, "split")
    message = r"^split: holds es, zh clips, but the model is English-only \(an .en model such as tiny.en\)"
    with pytest.raises(ParamError, match=message):
        check_languages(english, {"zh", "en", "es"}, "split")
    clips = [Clip(f"{lang}-0", lang, "missing.wav", "hola", 1.0, "0" * 64, "t", "-") for lang in ("en", "es")]
    fuse_model(english)
    with pytest.raises(ParamError, match="the calibration split: holds es clips"):
        calibrate(english, clips, tmp_path, 1, 99.9, progress=False)  # fused in place just above
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "missing.wav").write_bytes(b"")  # never read: the languages are checked first
    rows = [json.dumps({**c.__dict__, "audio": c.audio}) for c in clips]
    (tmp_path / "split" / "manifest.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(ParamError, match="split: holds es clips"):
        transcribe_split(english, tmp_path / "split", {})


@pytest.mark.parametrize(
    ("kind", "found"), [("fp32", "no fused.pt"), ("int8", "an INT8 model")], ids=["fp32", "int8"]
)
def test_calibrate_and_convert_take_only_the_fused_model(tmp_path, dirs, kind, found):
    """An FP32 or INT8 directory given as the fused model: one line naming it (exit 2), not a QuantError
    traceback or "calibration statistics from another model"."""
    import subprocess
    import sys

    from whisper_int8.model_dir import load_fused_dir

    from .conftest import REPO, venv_env
    from .test_calibrate import _calibration_dir, write_split

    assert isinstance(load_fused_dir(dirs["fused"]).decoder, FusedTextDecoder)
    message = f"{dirs[kind]}: not a fused model directory ({found})"
    with pytest.raises(ModelSourceError, match=re.escape(message)):
        load_fused_dir(dirs[kind])
    split = write_split(tmp_path / "split")
    for stage in ("calibrate", "convert"):
        out = tmp_path / stage
        cmd = [sys.executable, str(REPO / "stages" / f"{stage}.py"), "--params", str(REPO / "params.yaml")]
        cmd += ["--model", str(dirs[kind]), "--out", str(out)]
        if stage == "calibrate":
            cmd += ["--split", str(split)]
        else:
            cmd += ["--fp32", str(dirs["fp32"]), "--calibration", str(_calibration_dir(tmp_path / "cal"))]
        done = subprocess.run(cmd, cwd=tmp_path, env=venv_env(), capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert not out.exists()


def test_a_split_in_a_language_the_model_lacks_is_refused():
    from whisper_int8.model_dir import check_languages
    from whisper_int8.params import ParamError

    model = make_tiny_whisper()  # 99 languages: no yue
    check_languages(model, {"en", "zh"}, "data/eval")
    with pytest.raises(
        ParamError, match=r"^data/eval: holds yue clips, which this model has no language token"
    ):
        check_languages(model, {"en", "yue"}, "data/eval")


def test_the_fused_digest_is_the_one_its_card_records(tmp_path, dirs):
    """Calibrate and convert take fused.pt's digest from its card (every load checks the file against
    it) instead of reading a large-v3 fused.pt twice more; an older card without one: computed."""
    from whisper_int8.fsutil import sha256_file
    from whisper_int8.model_dir import fused_digest

    fused = tmp_path / "fused"
    shutil.copytree(dirs["fused"], fused)
    card = json.loads((fused / "model_card.json").read_text())
    assert fused_digest(fused) == card["weights_sha256"] == sha256_file(fused / "fused.pt")
    (fused / "model_card.json").write_text(json.dumps({**card, "weights_sha256": "recorded"}))
    assert fused_digest(fused) == "recorded"
    del card["weights_sha256"]
    (fused / "model_card.json").write_text(json.dumps(card))
    assert fused_digest(fused) == sha256_file(fused / "fused.pt")


def test_activation_bits_of_follow_the_saved_weight_bits_and_a_damaged_config_is_one_line(
    tmp_path, monkeypatch
):
    from whisper_int8 import cpu
    from whisper_int8.cpu import activation_bits
    from whisper_int8.model_dir import activation_bits_of

    assert activation_bits_of(tmp_path) is None  # no quant_config.json: not INT8
    saved = tmp_path / "quant_config.json"
    saved.write_text(json.dumps({"config": {"weight_bits": 7}}))
    assert activation_bits_of(tmp_path) == activation_bits(7) == 8  # on every CPU
    saved.write_text(json.dumps({"config": {}}))  # written before the key: 8-bit weights
    assert activation_bits_of(tmp_path) == activation_bits(8)
    monkeypatch.setattr(cpu, "fbgemm_vnni", lambda: False)  # where 7- and 8-bit weights differ: no VNNI
    assert activation_bits_of(tmp_path) == 7
    for damaged in ([1], {"config": {"weight_bits": "7"}}, {"config": {"weight_bits": True}}):
        saved.write_text(json.dumps(damaged))
        with pytest.raises(ModelSourceError, match=r"quant_config.json: .*config.weight_bits: 7 or 8.*rerun"):
            activation_bits_of(tmp_path)
