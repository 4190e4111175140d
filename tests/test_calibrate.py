"""Calibration: statistics for every Linear input, per-layer sensitivity, coverage per language, params."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import torch
from whisper.tokenizer import get_tokenizer

from whisper_int8.audio import read_manifest
from whisper_int8.calibrate import (
    HIST_BINS,
    HIST_EDGES,
    HIST_ROWS,
    calibrate,
    calibrate_settings,
    check_calibrated_on,
    load_calibration,
    prepare,
    sensitivity,
)
from whisper_int8.fsutil import sha256_file
from whisper_int8.fuse import fuse_model
from whisper_int8.params import ParamError
from whisper_int8.quant.convert import EMBEDDING, linear_names

from .conftest import REPO, TINY_V3_DIMS, make_tiny_whisper, venv_env
from .test_fuse import _speechlike

CLIPS = [
    ("en-0", "en", "the cat sat on the mat"),
    ("de-0", "de", "guten morgen"),
    ("en-1", "en", "hello there"),
]


def write_split(root: Path) -> Path:
    """A calibration split in the fetch_audio format (16 kHz mono WAV + manifest.jsonl)."""
    (root / "audio").mkdir(parents=True)
    with open(root / "manifest.jsonl", "w", encoding="utf-8") as m:
        for i, (cid, lang, text) in enumerate(CLIPS):
            pcm = (_speechlike(2.0 + i, seed=i) * 32767).astype("<i2")
            with wave.open(str(root / "audio" / f"{cid}.wav"), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
                w.writeframes(pcm.tobytes())
            row = {"id": cid, "language": lang, "audio": f"audio/{cid}.wav", "text": text,
                   "duration": len(pcm) / 16000, "sha256": "", "source": "t", "license": "-"}  # fmt: skip
            m.write(json.dumps(row) + "\n")
    return root


def test_calibrate_writes_stats_sensitivity_coverage(tmp_path):
    model = make_tiny_whisper()
    fuse_model(model)
    out = tmp_path / "calibration"
    out.mkdir()
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "fused.pt").write_bytes(b"the weights calibrated on")
    clips = read_manifest(write_split(tmp_path / "split"))
    calibrate(
        model, clips, out, sensitivity_clips=3, percentile=99.9, model_sha256=sha256_file(fused / "fused.pt")
    )
    stats, sens = load_calibration(out)
    # tied to the fused weights: another model of the same shapes (base.en for base) is refused
    check_calibrated_on(out, fused)
    (fused / "fused.pt").write_bytes(b"another model's weights")
    with pytest.raises(ParamError, match=r"calibration: calibrated on another fused model than .*fused"):
        check_calibrated_on(out, fused)
    names = linear_names(model)
    for n in names:
        amax = stats[f"{n}/in_absmax"]
        assert amax.shape == (model.get_submodule(n).in_features,) and bool((amax > 0).all())
        assert 0 < float(stats[f"{n}/in_percentile"]) <= float(amax.max())  # at most the absmax
        assert stats[f"{n}/in_hist"].shape == (HIST_BINS,) and float(stats[f"{n}/in_hist"].sum()) > 0
        assert float(stats[f"{n}/out_absmax"]) > 0
    assert set(sens) == {*names, EMBEDDING} and all(v > 0 for v in sens.values())
    cov = json.loads((out / "coverage.json").read_text())
    assert set(cov) == {"en", "de"} and cov["en"]["clips"] == 2 and cov["de"]["clips"] == 1
    assert cov["en"]["seconds"] == pytest.approx(2.0 + 4.0) and cov["de"]["tokens"] > 4
    written = json.loads((out / "sensitivity.json").read_text())
    assert written["clips"] == ["en-0", "de-0", "en-1"]  # round-robin: every language weighs in, in turn
    assert written["ranking"] == sorted(sens, key=lambda n: -sens[n])  # most sensitive first


def test_coverage_counts_the_30_s_the_model_hears(tmp_path):
    """A clip longer than Whisper's window is calibrated on its first 30 s: coverage says 30, not 45,
    and (a review) it teacher-forces the first 2/3 of its text, not words the model never heard."""
    model = make_tiny_whisper()
    fuse_model(model)
    split = write_split(tmp_path / "split")
    rows = [json.loads(line) for line in (split / "manifest.jsonl").read_text().splitlines()]
    rows[0]["duration"] = 45.0  # en-0: as a long recording's manifest row says
    rows[0]["text"] = " ".join(["word"] * 30)
    (split / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "calibration"
    out.mkdir()
    clips = read_manifest(split)
    calibrate(model, clips, out, sensitivity_clips=1, percentile=99.9, progress=False)
    assert json.loads((out / "coverage.json").read_text())["en"]["seconds"] == pytest.approx(30.0 + 4.0)
    assert json.loads((out / "sensitivity.json").read_text())["clips"] == ["en-0"]  # as many as asked
    tok = get_tokenizer(True, language="en", task="transcribe")
    sot = list(tok.sot_sequence_including_notimestamps)
    # no end-of-text (regression): decoding never feeds it, so it calibrated the decoder on an input
    # that never occurs, and its logits (what follows the end) counted in the sensitivity
    assert next(prepare(clips, model)).tokens[0].tolist() == [*sot, *tok.encode(" word" * 20)]


def test_calibration_stats_match_a_direct_measurement(tmp_path):
    model = make_tiny_whisper()
    fuse_model(model)
    out = tmp_path / "cal"
    out.mkdir()
    clips = read_manifest(write_split(tmp_path / "split"))[:1]
    calibrate(model, clips, out, sensitivity_clips=1, percentile=99.9, progress=False)
    stats, _ = load_calibration(out)
    seen = {}
    h = model.encoder.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    s = next(prepare(clips, model))
    with torch.no_grad():
        model.embed_audio(s.mel)
    h.remove()
    x = seen["x"].abs().reshape(-1, seen["x"].shape[-1])
    assert torch.allclose(stats["encoder.blocks.0.attn.qkv/in_absmax"], x.amax(0))  # every row
    # the histogram: at most HIST_ROWS evenly spaced rows, binned on the log grid
    rows = x[:: -(-x.shape[0] // HIST_ROWS)]
    assert x.shape[0] > HIST_ROWS >= rows.shape[0] > HIST_ROWS // 2
    want = torch.histogram(rows.clamp(HIST_EDGES[0], HIST_EDGES[-1] * 0.999).double(), HIST_EDGES.double())
    got = stats["encoder.blocks.0.attn.qkv/in_hist"]
    assert float(got.sum()) == rows.numel() and float((got - want.hist).abs().sum()) <= 0.002 * rows.numel()
    # calibrate.percentile (99.9 here), read from that histogram: the upper edge of its bin
    cdf = got.cumsum(0) / got.sum()
    upper = HIST_EDGES[int(torch.searchsorted(cdf, 0.999)) + 1]
    assert float(stats["encoder.blocks.0.attn.qkv/in_percentile"]) == float(torch.minimum(upper, x.max()))


def test_the_statistics_of_a_split_are_the_maxima_and_sums_over_its_clips_in_any_order(tmp_path):
    """Each clip's maxima are merged into the running ones and its histogram added: a statistic kept
    from the last clip only (order-dependent) passed every single-clip test."""
    model = make_tiny_whisper()
    fuse_model(model)
    clips = read_manifest(write_split(tmp_path / "split"))

    def stats_of(name: str, chosen: list) -> dict[str, torch.Tensor]:
        (tmp_path / name).mkdir()
        calibrate(model, chosen, tmp_path / name, sensitivity_clips=1, percentile=99.0, progress=False)
        return load_calibration(tmp_path / name)[0]

    every, backwards = stats_of("all", clips), stats_of("reversed", clips[::-1])
    each = [stats_of(c.id, [c]) for c in clips]
    assert every.keys() == backwards.keys() and all(torch.equal(every[k], backwards[k]) for k in every)
    maxima = [k for k in every if k.endswith(("/in_absmax", "/out_absmax"))]
    for key in maxima:
        assert torch.equal(every[key], torch.stack([s[key] for s in each]).amax(0)), key
    for one in (each[0], each[-1]):  # no clip alone gives them
        assert any(not torch.equal(every[k], one[k]) for k in maxima)
    for key in (k for k in every if k.endswith("/in_hist")):
        assert torch.equal(every[key], sum(s[key] for s in each)), key


def test_a_torch_without_x86_int8_kernels_stops_before_the_statistics_pass(tmp_path, monkeypatch):
    """Regression: the engine was first asked for by the sensitivity pass, after the statistics."""
    from whisper_int8.quant.cpu import BackendError

    model = make_tiny_whisper()
    fuse_model(model)
    clips = read_manifest(write_split(tmp_path / "split"))
    monkeypatch.setattr(type(torch.backends.quantized), "supported_engines", property(lambda _: ["qnnpack"]))
    (tmp_path / "cal").mkdir()
    with pytest.raises(BackendError, match="no 'x86' quantized engine"):
        calibrate(model, clips, tmp_path / "cal", sensitivity_clips=1, percentile=99.0, progress=False)
    assert not any((tmp_path / "cal").iterdir())


def test_large_v3_front_end_and_tokens(tmp_path):
    """128 mels and the 100-language vocabulary: the mel and the task tokens follow the model."""
    model = make_tiny_whisper(dims=TINY_V3_DIMS)
    fuse_model(model)
    clips = read_manifest(write_split(tmp_path / "split"))
    s = next(prepare(clips, model))
    tok = get_tokenizer(True, num_languages=100, language="en", task="transcribe")
    assert s.mel.shape == (1, 128, 3000)
    assert s.tokens[0, :4].tolist() == list(tok.sot_sequence_including_notimestamps)
    assert tok.transcribe == 50360  # one past the 99-language id that a default tokenizer would give
    out = tmp_path / "cal"
    out.mkdir()
    calibrate(model, clips, out, sensitivity_clips=1, percentile=99.0, progress=False)
    assert load_calibration(out)[0]["encoder.blocks.0.attn.qkv/in_absmax"].shape == (64,)


def test_calibrate_refuses_an_unfused_model_and_an_empty_split(tmp_path):
    from whisper_int8.audio import AudioInputError
    from whisper_int8.model_sources import ModelSourceError

    clips = read_manifest(write_split(tmp_path / "split"))
    with pytest.raises(ModelSourceError, match="give the fused model"):
        calibrate(make_tiny_whisper(), clips, tmp_path, sensitivity_clips=1, percentile=99.0, progress=False)
    fused = make_tiny_whisper()
    fuse_model(fused)
    with pytest.raises(AudioInputError, match="the calibration split has no clips"):
        calibrate(fused, [], tmp_path, sensitivity_clips=1, percentile=99.0, progress=False)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.json"))


def test_missing_calibration_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the calibrate stage"):
        load_calibration(tmp_path)


def _calibration_dir(root: Path) -> Path:
    """A calibration directory with the files convert reads (the statistics need not be real)."""
    root.mkdir()
    torch.save({"hist_edges": HIST_EDGES.clone(), "x/in_absmax": torch.ones(3)}, root / "stats.pt")
    (root / "sensitivity.json").write_text(json.dumps({"layers": {"x": 0.5}, "ranking": ["x"]}))
    return root


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("stats.pt", "truncated", r"stats.pt: unreadable \(truncated"),
        ("sensitivity.json", '{"layers": {"x": 0.', r"sensitivity.json: unreadable \(Expecting"),
        ("sensitivity.json", '{"metric": "no layers"}', "sensitivity.json: no 'layers' mapping"),
        ("sensitivity.json", '[{"layers": 1}]', "sensitivity.json: no 'layers' mapping"),
        ("sensitivity.json", '{"layers": {"x": "high"}}', "sensitivity.json: no 'layers' mapping"),
        ("sensitivity.json", '{"layers": {"x": NaN}}', "sensitivity.json: no 'layers' mapping"),
        ("sensitivity.json", '{"layers": {"x": true}}', "sensitivity.json: no 'layers' mapping"),
    ],
)
def test_a_damaged_calibration_is_one_line_naming_the_file_and_the_stage(tmp_path, file, content, message):
    from whisper_int8.model_sources import ModelSourceError

    cal = _calibration_dir(tmp_path / "cal")
    assert load_calibration(cal)[1] == {"x": 0.5}
    if content == "truncated":
        data = (cal / file).read_bytes()
        (cal / file).write_bytes(data[: len(data) // 2])
    else:
        (cal / file).write_text(content)
    with pytest.raises(ModelSourceError, match=message) as info:
        load_calibration(cal)
    assert str(info.value).endswith("; rerun the calibrate stage (dvc repro calibrate)")


def test_convert_stage_with_a_truncated_stats_file_exits_2_with_one_line(tmp_path):
    cal = _calibration_dir(tmp_path / "cal")
    (cal / "stats.pt").write_bytes((cal / "stats.pt").read_bytes()[:100])
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.pt").write_bytes(b"x")
    (tmp_path / "params.yaml").write_text("quant: {}\n")
    cmd = [sys.executable, str(REPO / "stages" / "convert.py"), "--calibration", str(cal),
           "--fp32", str(tmp_path / "fp32"), "--out", str(tmp_path / "int8")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: {cal / 'stats.pt'}: unreadable (truncated")
    assert not (tmp_path / "int8").exists()


def test_an_undecodable_clip_is_one_line_naming_it(tmp_path):
    """Not openai-whisper's RuntimeError with ffmpeg's whole banner: the clip and ffmpeg's last line."""
    from whisper_int8.audio import AudioInputError

    clips = read_manifest(write_split(tmp_path / "split"))
    bad = Path(clips[1].audio)
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # a truncated header: wave and ffmpeg both give up
    model = make_tiny_whisper()
    fuse_model(model)
    out = tmp_path / "cal"
    out.mkdir()
    with pytest.raises(AudioInputError) as info:
        calibrate(model, clips, out, sensitivity_clips=1, percentile=99.0, progress=False)
    assert str(info.value) == f"{bad}: unreadable or corrupt audio (Invalid data found when processing input)"
    assert not list(out.iterdir())
    assert not any(m._forward_hooks for m in model.modules())  # the statistics hooks go with the error


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"sensitivity_clips": 0}, "calibrate.sensitivity_clips"),
        ({"sensitivity_clips": True}, "calibrate.sensitivity_clips"),
        ({"sensitivity_clips": 2.5}, "calibrate.sensitivity_clips"),
        ({"percentile": 120}, "calibrate.percentile"),
        ({"percentile": 49.9}, "calibrate.percentile"),
        ({"percentile": "high"}, "calibrate.percentile"),
        ({"max_clips_per_language": -2}, "calibrate.max_clips_per_language"),
        ({"clips": 3}, "unknown calibrate key"),
    ],
)
def test_calibrate_params_validated(cfg, match):
    with pytest.raises(ParamError, match=match):
        calibrate_settings({"calibrate": cfg})
    assert calibrate_settings({"calibrate": {}}) == (9, 99.99, None)


def test_calibrate_params_take_both_ends_of_their_ranges():
    """The message's [50, 100] is inclusive: 100 reads the histogram's top (the absmax)."""
    for p in (50, 100, 100.0):
        assert calibrate_settings({"calibrate": {"percentile": p}})[1] == p
    ends = {"sensitivity_clips": 1, "max_clips_per_language": 1}
    assert calibrate_settings({"calibrate": ends}) == (1, 99.99, 1)


def test_stage_exits_2_with_one_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("quant: {scheme: int4}\n")
    cmd = [
        sys.executable,
        str(REPO / "stages" / "convert.py"),
        "--params",
        str(params),
        "--model",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "quant.scheme" in proc.stderr


def test_fuse_stage_checks_its_output_before_the_work_and_takes_no_params(tmp_path):
    """Regression: fuse/convert/calibrate/fetch_model found an unwritable --out after the work (a
    traceback); fuse accepted --params and ignored it."""
    fuse = [sys.executable, str(REPO / "stages" / "fuse.py")]
    args = ["--model", "nosuch", "--out", "/proc/fused"]
    proc = subprocess.run([*fuse, *args], capture_output=True, text=True, env=venv_env(), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: /proc: cannot write there"), proc.stderr
    proc = subprocess.run([*fuse, "--params", "p.yaml"], capture_output=True, text=True, env=venv_env())
    assert proc.returncode == 2 and "unrecognized arguments: --params p.yaml" in proc.stderr


@pytest.mark.parametrize(
    ("stage", "its_own"),
    [("fuse", "model_card.json"), ("calibrate", "sensitivity.json"), ("fetch_model", "model_card.json")],
)
def test_a_stage_refuses_a_folder_of_other_files_before_the_work(tmp_path, stage, its_own):
    """Regression: a mistyped --out (a folder of someone else's files) was refused only after the work:
    minutes of calibration lost. (convert: tests/test_quant.py; fetch_audio: tests/test_audio_build.py.)"""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / its_own).write_text("{}")  # one of the stage's own outputs: not the problem
    cmd = [sys.executable, str(REPO / "stages" / f"{stage}.py"), "--out", str(out)]
    cmd += ["--params", str(REPO / "params.yaml")] if stage != "fuse" else []
    cmd += ["--model", "nosuch"] if stage != "fetch_model" else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {out}: holds notes.txt, which this output does not"), proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([its_own, "notes.txt"])


def test_sensitivity_is_pinned_to_8_bit_activations_whatever_the_environment(tmp_path, monkeypatch):
    """WHISPER_INT8_ACTIVATION_BITS=7 (or a CPU's choice) must not move sensitivity.json: DVC does not
    see it, and auto_keep_float_k would keep other layers in float, a different int8.pt."""
    from whisper_int8.quant import cpu as qcpu

    model = make_tiny_whisper()
    fuse_model(model)
    samples = list(prepare(read_manifest(write_split(tmp_path / "split"))[:1], model))
    pinned = sensitivity(model, samples, progress=False)
    monkeypatch.setitem(qcpu._REDUCE_RANGE, 7, True)  # 7-bit activations, as WHISPER_INT8_ACTIVATION_BITS=7
    assert sensitivity(model, samples, progress=False) == pinned
    assert qcpu._REDUCE_RANGE[7] is True  # restored after the ranking
    with qcpu.activations_pinned(weight_bits=7, bits=7):  # what the pin prevents: other values
        q = qcpu.DynamicInt8Linear.from_float(model.decoder.blocks[0].mlp[0], per_channel=True, bits=7)
        x = torch.randn(4, q.in_features)
        seven = q(x)
    with qcpu.activations_pinned(weight_bits=7, bits=8):
        assert not torch.equal(q(x), seven)
    with pytest.raises(ValueError, match="beside 7-bit weights only"):
        qcpu.activations_pinned(weight_bits=8, bits=8).__enter__()


def test_encoder_sensitivity_is_the_error_of_the_encoder_as_it_runs(tmp_path):
    """Regression: sensitivity re-ran encoder blocks through their own forward, one activation range
    over all 1500 frames, while the fused encoder (and so the INT8 model) quantizes each PART_FRAMES
    part with its own: on base, encoder.blocks.3.mlp.2 was ranked at 0.070 against 0.039 as it runs."""
    from whisper_int8.calibrate import _rel_error
    from whisper_int8.quant import cpu as qcpu

    model = make_tiny_whisper()
    fuse_model(model)
    samples = list(prepare(read_manifest(write_split(tmp_path / "split"))[:2], model))
    sens = sensitivity(model, samples, progress=False)
    with torch.no_grad():
        ref = [model.logits(s.tokens, model.embed_audio(s.mel)) for s in samples]
        for name in ("encoder.blocks.0.mlp.0", "encoder.blocks.0.mlp.2", "encoder.blocks.1.attn.qkv"):
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent)
            float_mod = getattr(owner, child)
            with qcpu.activations_pinned(weight_bits=7, bits=8):
                q = qcpu.DynamicInt8Linear.from_float(float_mod, per_channel=True, per_token=True, bits=7)
                setattr(owner, child, q)
                try:
                    got = [model.logits(s.tokens, model.embed_audio(s.mel)) for s in samples]
                finally:
                    setattr(owner, child, float_mod)
            assert sens[name] == pytest.approx(_rel_error(got, ref), rel=1e-5), name


class _OneTokenAtATime(torch.nn.Module):
    """A decoder layer as decoding runs it: one token (row) per call, so each gets its own range."""

    def __init__(self, q: torch.nn.Module) -> None:
        super().__init__()
        self.q = q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x[:, i : i + 1]) for i in range(x.shape[1])], dim=1)


def test_decoder_sensitivity_is_the_error_of_decoding_one_token_at_a_time(tmp_path):
    """Regression: teacher forcing fed a decoder layer every token of a clip in one call, and the INT8
    layer took one activation range over them all, which no decoding computes (one token a step): on
    base, decoder.blocks.2.mlp.2 ranked first at 0.27 (0.01 as decoded) for the start-of-transcript
    token's outliers, and auto_keep_float_k kept it in float for nothing."""
    from whisper_int8.calibrate import _rel_error
    from whisper_int8.quant import cpu as qcpu

    model = make_tiny_whisper()
    fuse_model(model)
    samples = list(prepare(read_manifest(write_split(tmp_path / "split"))[:2], model))
    with torch.no_grad():
        model.decoder.token_embedding.weight[samples[0].tokens[0, 0]] *= 30  # a loud first token
    sens = sensitivity(model, samples, progress=False)
    with torch.no_grad():
        feats = [model.embed_audio(s.mel) for s in samples]
        ref = [model.logits(s.tokens, f) for s, f in zip(samples, feats, strict=True)]
        for name in ("decoder.blocks.0.mlp.0", "decoder.blocks.1.mlp.2", "decoder.blocks.0.attn.qkv"):
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent)
            float_mod = getattr(owner, child)
            with qcpu.activations_pinned(weight_bits=7, bits=8):
                q = qcpu.DynamicInt8Linear.from_float(float_mod, per_channel=True, bits=7)  # one range a call
                setattr(owner, child, _OneTokenAtATime(q))
                try:
                    got = [model.logits(s.tokens, f) for s, f in zip(samples, feats, strict=True)]
                finally:
                    setattr(owner, child, float_mod)
            assert sens[name] == pytest.approx(_rel_error(got, ref), rel=1e-3), name
        # the cross-attention K/V projection reads the audio frames, all of them per call, as the
        # encoder's layers do: per token, not one frame per call
        name = "decoder.blocks.1.cross_attn.kv"
        owner, float_mod = model.decoder.blocks[1].cross_attn, model.decoder.blocks[1].cross_attn.kv
        with qcpu.activations_pinned(weight_bits=7, bits=8):
            owner.kv = qcpu.DynamicInt8Linear.from_float(float_mod, per_channel=True, per_token=True, bits=7)
            try:
                got = [model.logits(s.tokens, f) for s, f in zip(samples, feats, strict=True)]
            finally:
                owner.kv = float_mod
        assert sens[name] == pytest.approx(_rel_error(got, ref), rel=1e-5)
        # the INT8 embedding (7-bit, its logits GEMM one token per call, as decoding runs it)
        emb = model.decoder.token_embedding
        with qcpu.activations_pinned(weight_bits=7, bits=8):
            q = qcpu.Int8TiedEmbedding.from_float(emb, bits=7)
            q.project = _OneTokenAtATime(q.project).forward  # a method's name: not as a submodule
            model.decoder.token_embedding = q
            try:
                got = [model.logits(s.tokens, f) for s, f in zip(samples, feats, strict=True)]
            finally:
                model.decoder.token_embedding = emb
        assert sens[EMBEDDING] == pytest.approx(_rel_error(got, ref), rel=1e-3)


def test_stats_of_known_inputs_maxima_histogram_and_percentile():
    """|x| and |y| maxima over calls, the histogram of at most HIST_ROWS evenly spaced rows a call
    (zeros and tiny values in its first bin), and the percentile as the upper edge of its bin, at most
    the absmax: the smallest value below which ``percentile`` % of |x| lies, not the next one."""
    from whisper_int8.calibrate import StatsCollector

    lin = torch.nn.Linear(1, 1, bias=False)
    model = torch.nn.Sequential(lin)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    collector = StatsCollector(model)
    x = torch.tensor([1.0] * 500 + [-100.0] * 500)[:, None]  # |x|: half 1, half 100
    x[0], x[2] = 0.0, 1e-9  # the histogram's first bin
    with torch.no_grad():
        model(x)
        model(torch.tensor([[1.0], [1.0], [-50.0], [50.0]]))  # a second call: smaller maxima
    collector.remove()
    assert not lin._forward_hooks
    one_up = 2 ** (1 / 32)  # the upper edge of 1's bin
    stats = {p: collector.tensors(p) for p in (50.0, 75.0, 100.0)}
    assert torch.equal(stats[50.0]["0/in_absmax"], torch.tensor([100.0]))
    assert float(stats[50.0]["0/out_absmax"]) == 200.0  # |y|: y = 2 x, its largest magnitude negative
    hist = stats[50.0]["0/in_hist"]
    assert float(hist.sum()) == 500 + 4 and float(hist[0]) == 2  # 1000 rows: every second one
    assert float(stats[50.0]["0/in_percentile"]) == pytest.approx(one_up)  # 50 %: 1, not 100
    assert float(stats[75.0]["0/in_percentile"]) == 100.0  # in the absmax's bin: the absmax
    assert float(stats[100.0]["0/in_percentile"]) == 100.0


def test_prepare_refuses_an_unknown_language_and_feeds_what_the_decoder_takes(tmp_path):
    """An unknown code is one line naming the clip; a text longer than the decoder's 448 positions is cut
    there; a long recording with a short text keeps at least its first token."""
    from dataclasses import replace

    from whisper_int8.audio import AudioInputError

    model = make_tiny_whisper()
    clip = read_manifest(write_split(tmp_path / "split"))[0]
    with pytest.raises(AudioInputError, match=r"^clip en-0: language 'xx' is not a Whisper language code"):
        next(prepare([replace(clip, language="xx")], model))
    tok = get_tokenizer(True, language="en", task="transcribe")
    sot = list(tok.sot_sequence_including_notimestamps)
    long_text = next(prepare([replace(clip, text=" ".join(["word"] * 600))], model))
    assert long_text.tokens.shape == (1, model.dims.n_text_ctx)
    long_audio = next(prepare([replace(clip, text="hello there", duration=600.0)], model))
    assert long_audio.tokens[0].tolist() == [*sot, tok.encode(" hello")[0]]


def test_statistics_without_a_recorded_model_are_accepted(tmp_path):
    """A calibration written before the sha256 was recorded names no model: convert takes it (its
    shapes are still checked), rather than refusing every older calibration."""
    cal = _calibration_dir(tmp_path / "cal")
    (tmp_path / "fused").mkdir()
    (tmp_path / "fused" / "fused.pt").write_bytes(b"weights")
    check_calibrated_on(cal, tmp_path / "fused")


def test_a_percentile_in_the_top_bin_is_the_absmax_not_the_end_of_the_grid():
    """Regression: the last bin holds every |x| above 2^12, but its upper edge (4096) was written as the
    percentile: 100 % of inputs up to 6000 read 4096, below the absmax it should equal."""
    from whisper_int8.calibrate import StatsCollector

    model = torch.nn.Sequential(torch.nn.Linear(1, 1))
    collector = StatsCollector(model)
    with torch.no_grad():
        model(torch.tensor([[1.0]] * 10 + [[-6000.0]]))
    collector.remove()
    for p in (99.0, 100.0):  # 10 of 11 inputs are 1: both in the top bin
        assert float(collector.tensors(p)["0/in_percentile"]) == 6000.0, p
    assert float(collector.tensors(50.0)["0/in_percentile"]) == pytest.approx(2 ** (1 / 32))


def test_the_relative_error_is_the_l2_norm_of_the_difference_over_that_of_the_reference():
    """Pooled over the clips, as the README's figures are: sqrt(sum |got - ref|^2 / sum |ref|^2)."""
    from whisper_int8.calibrate import _rel_error

    ref = [torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0]])]
    got = [torch.tensor([[4.5, 6.0]]), torch.tensor([[5.0]])]  # differences 1.5, 2 and 5: 6.25 + 25
    assert _rel_error(got, ref) == pytest.approx((31.25 / 25) ** 0.5)
    assert _rel_error(ref, ref) == 0.0
