"""Evaluation on a small espeak-ng split with tiny models: metrics, CSVs, charts, subprocess isolation."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from whisper_int8 import eval_report, memory
from whisper_int8.audio import AudioInputError
from whisper_int8.audio.wavio import wav_bytes
from whisper_int8.eval_report import write_report
from whisper_int8.evaluate import evaluate_in_subprocess, evaluate_model_dir, model_dirs
from whisper_int8.params import ParamError
from whisper_int8.scoring import score

from .conftest import REPO, make_tiny_whisper, venv_env
from .eval_fixtures import FAST, speech_split, tiny_int8_dir, tiny_model_dir

CLIPS = [
    ("en", "the quick brown fox jumps over the lazy dog"),
    ("en", "please call me back tomorrow morning"),
    ("de", "guten morgen und willkommen"),
    ("zh", "今天天气很好"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    return {
        "split": speech_split(root / "eval", CLIPS),
        "fp32": tiny_model_dir(root / "fp32"),
        "int8": tiny_int8_dir(root / "int8"),
    }


@pytest.fixture(scope="module")
def results(setup) -> dict[str, dict]:
    return {v: evaluate_model_dir(setup[v], setup["split"], decode=FAST) for v in ("fp32", "int8")}


def test_per_language_metrics_follow_the_clips(results):
    m = results["int8"]["metrics"]
    assert {k for k in m if k.startswith(("wer/", "cer/"))} == {"wer/en", "wer/de", "cer/zh"}
    assert m["clips/en"] == 2 and m["clips/de"] == 1 and m["clips/zh"] == 1 and m["clips"] == 4
    clips = results["int8"]["clips"]
    en = [c for c in clips if c["language"] == "en"]
    counts = score([c["reference"] for c in en], [c["hypothesis"] for c in en], "en")
    assert m["wer/en"] == pytest.approx(100 * counts["error_rate"])
    # the rate is made of these counts (words for WER, characters for CER)
    assert (
        m["ref_length/en"] == counts["reference_length"] == len(" ".join(c["reference"] for c in en).split())
    )
    for lang in ("en", "de", "zh"):
        rate = m.get(f"wer/{lang}", m.get(f"cer/{lang}"))
        assert rate == pytest.approx(100 * m[f"errors/{lang}"] / m[f"ref_length/{lang}"])
    lid = 100 * sum(c["detected_language"] == "en" for c in en) / 2
    assert m["lid_accuracy/en"] == pytest.approx(lid)
    assert m["error_rate/overall"] == pytest.approx((m["wer/en"] + m["wer/de"] + m["cer/zh"]) / 3)


def test_speed_memory_and_size_figures(results, setup):
    m = results["fp32"]["metrics"]
    lat = sorted(c["latency_s"] for c in results["fp32"]["clips"])
    assert lat[0] <= m["latency_p50_s"] <= m["latency_p90_s"] <= lat[-1]
    audio = sum(c["duration_s"] for c in results["fp32"]["clips"])
    assert m["rtf"] == pytest.approx(sum(lat) / audio) and m["audio_s"] == pytest.approx(audio)
    assert m["first_call_s"] > 0 and m["load_time_s"] > 0 and m["peak_rss_mb"] > 50
    assert m["load_peak_rss_mb"] > 50
    assert m["model_size_mb"] == pytest.approx((setup["fp32"] / "model.pt").stat().st_size / 2**20, rel=0.01)
    assert results["int8"]["metrics"]["model_size_mb"] < m["model_size_mb"]
    assert "vram_peak_mb" not in m  # CPU run


def test_report_files(results, tmp_path):
    config = {"languages": ["de", "en", "zh"], "beam_size": None}
    rep = write_report(tmp_path, results["fp32"], results["int8"], config)
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(rep))
    comp = on_disk["comparison"]
    assert comp["wer_delta/en"] == pytest.approx(on_disk["int8"]["wer/en"] - on_disk["fp32"]["wer/en"])
    assert comp["speedup"] == pytest.approx(
        on_disk["fp32"]["latency_p50_s"] / on_disk["int8"]["latency_p50_s"]
    )
    fp32_text = {c["id"]: c["hypothesis"] for c in results["fp32"]["clips"]}
    same = [c["hypothesis"] == fp32_text[c["id"]] for c in results["int8"]["clips"]]
    assert comp["identical_transcripts_pct"] == pytest.approx(100 * sum(same) / len(same))
    rows = list(csv.DictReader((tmp_path / "per_language.csv").open()))
    assert [(r["language"], r["metric"]) for r in rows] == [("de", "wer"), ("en", "wer"), ("zh", "cer")]
    assert float(rows[1]["int8"]) == pytest.approx(on_disk["int8"]["wer/en"], abs=1e-3)
    assert len(list(csv.DictReader((tmp_path / "latency.csv").open()))) == 4
    for png in ("per_language.png", "latency.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every clip's transcript, each model's under its own key
    transcripts = json.loads((tmp_path / "transcripts.json").read_text())
    assert transcripts == json.loads(json.dumps({v: results[v]["clips"] for v in ("fp32", "int8")}))
    for row in rows:  # every cell of the CSV is the figure in eval.json
        key = f"{row['metric']}/{row['language']}"
        assert float(row["fp32"]) == pytest.approx(on_disk["fp32"][key], abs=1e-3)
        assert float(row["int8"]) == pytest.approx(on_disk["int8"][key], abs=1e-3)
        assert float(row["delta_pp"]) == pytest.approx(comp[key.replace("/", "_delta/")], abs=1e-3)
        assert float(row["ref_length"]) == on_disk["fp32"][f"ref_length/{row['language']}"]
        assert float(row["errors_int8"]) == on_disk["int8"][f"errors/{row['language']}"]
        # one or two clips a language here: too few for a bootstrap interval (see test_significance)
        assert f"{row['metric']}_delta_ci_low/{row['language']}" not in comp
        assert row["delta_ci_low"] == row["delta_ci_high"] == "nan"


def test_a_failing_chart_leaves_the_previous_report_whole(results, tmp_path, monkeypatch):
    config = {"languages": ["de", "en", "zh"]}
    write_report(tmp_path, results["fp32"], results["int8"], config)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(rows):
        raise RuntimeError("matplotlib failed")

    monkeypatch.setattr(eval_report, "latency_chart", broken)
    swapped = {"metrics": {**results["int8"]["metrics"], "wer/en": 99.0}, "clips": results["int8"]["clips"]}
    with pytest.raises(RuntimeError, match="matplotlib failed"):
        write_report(tmp_path, results["fp32"], swapped, config)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes past ``limit`` bytes per file fail with EFBIG, as a disk that fills fails a big file."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, handler)


def test_a_report_file_that_fails_to_write_leaves_the_previous_report_whole(results, tmp_path):
    """Regression (a review): the files were replaced one by one, so a full disk while writing
    transcripts.json left the new per_language.csv and charts beside the old eval.json."""
    config = {"languages": ["de", "en", "zh"]}
    write_report(tmp_path, results["fp32"], results["int8"], config)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert max(len(data) for data in before.values()) < 1 << 20
    long = [{**c, "hypothesis": "word " * 100_000} for c in results["int8"]["clips"]]  # 2 MB of JSON
    swapped = {"metrics": {**results["int8"]["metrics"], "wer/en": 99.0}, "clips": long}
    with file_size_limit(1 << 20), pytest.raises(OSError, match="too large"):
        write_report(tmp_path, results["fp32"], swapped, config)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file left either


def test_first_call_leaves_out_the_identification_as_every_latency(setup, monkeypatch):
    """first_call_s counted the warm-up's language identification (the cold tokenizer: 15 % of it on
    the tiny model) while every other latency leaves it out."""
    import time

    from whisper_int8 import evaluate

    def identified_slowly(model, audio, language, **kw) -> dict:
        time.sleep(0.5)
        return {"text": "x", "lid_s": 0.4, "detected_language": language, "temperature": 0.0}

    monkeypatch.setattr(evaluate, "transcribe_clip", identified_slowly)
    results, first_call = evaluate.transcribe_split(make_tiny_whisper(), setup["split"], FAST, 1, 1)
    assert 0.1 <= first_call < 0.5  # 0.5 s of work, 0.4 of it identifying
    assert all(0.1 <= r.latency_s < 0.5 for r in results)


def test_peak_memory_is_read_before_scoring(setup, monkeypatch):
    """Regression: peak_rss_mb was read after the scoring, whose normalizers' imports (cn2an, zhconv,
    num2words) raised the high-water mark by 6 MB on 18 real clips of the INT8 model: memory that is
    the scorer's, in a figure said to be the transcription's."""
    from whisper_int8 import evaluate

    scored = []
    monkeypatch.setattr(evaluate, "transcribe_clip", lambda model, audio, language, **kw: {
        "text": "x", "lid_s": 0.0, "detected_language": language, "temperature": 0.0})  # fmt: skip
    monkeypatch.setattr(evaluate, "score", lambda *a: scored.append(1) or {
        "error_rate": 0.0, "errors": 0, "reference_length": 1})  # fmt: skip
    monkeypatch.setattr(memory, "peak_rss_mb", lambda: 200.0 if scored else 100.0)
    out = evaluate.evaluate_with_model(make_tiny_whisper(), setup["fp32"], setup["split"], FAST, warmup=0)
    assert scored and out["metrics"]["peak_rss_mb"] == 100.0


def test_the_process_evaluating_a_model_leaves_the_chart_library_out():
    """Regression: the process evaluate spawns per model re-imports the stage script (as spawn runs
    ``__mp_main__``) and whisper_int8.evaluate, and both imported eval_report, which imported
    matplotlib.pyplot: about 30 MB of the parent's chart library in every FP32 and INT8 peak_rss_mb."""
    code = (  # the stage's folder on sys.path: spawn's child gets the parent's
        "import runpy, sys\nsys.path.insert(0, 'stages')\n"
        "runpy.run_path('stages/evaluate.py', run_name='__mp_main__')\n"
        "import whisper_int8.evaluate\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib')[:3])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=venv_env(), capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_subprocess_evaluation_matches_in_process(results, setup):
    held = np.ones(80_000_000)  # 640 MB touched in this process: none of it is the child's memory
    parent_peak = memory.peak_rss_mb()
    sub = evaluate_in_subprocess(setup["int8"], setup["split"], decode=FAST, per_language=1)
    del held
    assert sub["metrics"]["load_peak_rss_mb"] < parent_peak - 500  # ru_maxrss would inherit it
    assert [c["id"] for c in sub["clips"]] == ["en-000", "de-002", "zh-003"]  # first clip of each language
    here = {c["id"]: c["hypothesis"] for c in results["int8"]["clips"]}
    assert [c["hypothesis"] for c in sub["clips"]] == [here[c["id"]] for c in sub["clips"]]
    assert sub["metrics"]["clips/en"] == 1 and sub["metrics"]["peak_rss_mb"] > 50


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie stays where no init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
    reason="reads child processes from /proc/<pid>/task/<pid>/children (CONFIG_PROC_CHILDREN)",
)
def test_sigterm_stops_the_evaluating_child_too(setup, tmp_path):
    """Regression: SIGTERM (a CI timeout, `kill`) left the stage waiting in the executor's exit for its
    child to finish the whole split: 121 s after the signal on 27 real clips, minutes on 180."""
    script = tmp_path / "run.py"
    script.write_text(
        "from whisper_int8.cli_common import exit_on_sigterm\n"
        "from whisper_int8.evaluate import evaluate_in_subprocess\n"
        "if __name__ == '__main__':\n"
        "    exit_on_sigterm()\n"
        f"    evaluate_in_subprocess({str(setup['fp32'])!r}, {str(setup['split'])!r}, "
        "{'beam_size': None, 'max_tokens': 4}, warmup=100_000)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], env=venv_env(), start_new_session=True,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert workers, "the evaluation never started its child"
        time.sleep(3)  # the child is loading or transcribing
        proc.terminate()
        assert proc.wait(timeout=30) == 128 + 15
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(map(_running, workers)), "the child runs on"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_empty_manifest_is_a_clear_error(tmp_path, setup):
    (tmp_path / "manifest.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="lists no clips"):
        evaluate_model_dir(setup["fp32"], tmp_path, decode=FAST)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3"])
@pytest.mark.parametrize(
    ("key", "null_means"), [("beam_size", "greedy"), ("max_tokens", "the default cap per window")]
)
def test_decode_options_name_the_bad_key(key, null_means, value):
    from whisper_int8.params import ParamError
    from whisper_int8.transcribe import decode_options

    with pytest.raises(
        ParamError, match=rf"params.yaml: evaluate.{key}=.* must be null \({null_means}\) or an integer >= 1"
    ):
        decode_options({key: value})
    assert decode_options({key: 2}) == {"beam_size": None, "max_tokens": None, key: 2}


def test_a_token_cap_above_a_window_is_refused():
    """Regression: max_tokens 1000 was accepted and silently decoded with 224."""
    from whisper_int8.params import ParamError
    from whisper_int8.transcribe import decode_options

    assert decode_options({"max_tokens": 224})["max_tokens"] == 224
    with pytest.raises(ParamError, match=r"evaluate.max_tokens=225: at most 224, the most a 30 s window"):
        decode_options({"max_tokens": 225})
    # a version registered before the bound still loads, decoding as it always did
    assert decode_options({"max_tokens": 300}, "model_config", prefix="")["max_tokens"] == 224


def test_stage_options_refuse_unknown_keys_and_an_empty_split(tmp_path):
    """A misspelt key would silently evaluate with defaults; an empty split would fail after loading."""
    proc = run_stage(tmp_path, {"split": str(tmp_path), "beamsize": 5})
    assert proc.returncode == 2 and "unknown evaluate key(s) ['beamsize']" in proc.stderr
    (tmp_path / "manifest.jsonl").write_text("", encoding="utf-8")
    proc = run_stage(tmp_path, {"split": str(tmp_path)})
    assert proc.returncode == 2 and "the evaluation manifest lists no clips" in proc.stderr
    assert "Traceback" not in proc.stderr
    (tmp_path / "a.wav").write_bytes(wav_bytes(np.zeros(16000, dtype=np.int16)))
    row = {"id": "de-0", "language": "de", "audio": "a.wav", "text": "(Applaus)", "duration": 1.0,
           "sha256": "0" * 64, "source": "t", "license": "-"}  # fmt: skip
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    proc = run_stage(tmp_path, {"split": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    assert "clip de-0: its transcript '(Applaus)' is empty once normalized" in proc.stderr


def test_stage_options_refuse_a_device_this_machine_lacks_and_null_paths(tmp_path):
    import torch

    cases = [({"device": "cuda:x"}, "evaluate.device='cuda:x' must be auto, cpu or cuda[:N]"),
             ({"split": None}, "evaluate.split=None must be the path of a split")]  # fmt: skip
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, "evaluate.device='cuda': this machine has 0 CUDA device(s)"))
    for evaluate, message in cases:
        proc = run_stage(tmp_path, {"split": str(tmp_path), **evaluate})
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


MODELS = {"fp32": "models/fp32", "int8": "models/int8"}


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [({"warmup": -1}, "evaluate.warmup=-1 must be an integer >= 0"),
     ({"warmup": True}, "evaluate.warmup=True must be an integer >= 0"),
     ({"warmup": 1.5}, "evaluate.warmup=1.5 must be an integer >= 0"),
     ({"warmup": "1"}, "evaluate.warmup='1' must be an integer >= 0"),
     ({"split": ""}, "evaluate.split='' must be the path of a split"),
     ({"split": 3}, "evaluate.split=3 must be the path of a split"),
     ({"models": {**MODELS, "int4": "models/int4"}}, "evaluate.models must map fp32 and int8"),
     ({"models": {"fp32": "models/fp32"}}, "evaluate.models must map fp32 and int8"),
     ({"models": {**MODELS, "int8": ""}}, "evaluate.models must map fp32 and int8"),
     ({"models": ["models/fp32", "models/int8"]}, "evaluate.models must map fp32 and int8")],
)  # fmt: skip
def test_stage_options_name_each_bad_value(evaluate, message):
    with pytest.raises(ParamError, match=rf"^p.yaml: {re.escape(message)}"):
        _stage_module().options({"evaluate": {"device": "cpu", "models": MODELS, **evaluate}}, "p.yaml")


def test_stage_options_take_a_warmup_of_zero_and_default_to_one():
    """0: no untimed call (the tests' and quick looks' setting); left out: params.yaml's documented 1."""
    options = _stage_module().options
    assert options({"evaluate": {"device": "cpu", "models": MODELS, "warmup": 0}}, "p.yaml")["warmup"] == 0
    opt = options({"evaluate": {"device": "cpu", "models": MODELS}}, "p.yaml")
    assert (opt["warmup"], opt["split"], opt["models"]["int8"]) == (1, Path("data/eval"), Path("models/int8"))


def run_stage(tmp: Path, evaluate: dict) -> subprocess.CompletedProcess:
    models = {"fp32": str(tmp / "fp32"), "int8": str(tmp / "int8")}
    (tmp / "params.yaml").write_text(yaml.safe_dump({"evaluate": {**evaluate, "models": models}}))
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "evaluate.py"), "--params", str(tmp / "params.yaml")],
        cwd=tmp, env=venv_env(), capture_output=True, text=True,
    )  # fmt: skip


def test_identical_transcripts_counts_the_clips_both_models_transcribed():
    from whisper_int8.eval_report import identical_transcripts

    base = [{"id": i, "hypothesis": t} for i, t in [("a", "x"), ("b", "y"), ("c", "z")]]
    cand = [{"id": i, "hypothesis": t} for i, t in [("a", "x"), ("b", "Y"), ("d", "w")]]
    assert identical_transcripts(base, cand) == pytest.approx(50.0)  # a same, b not, d only in one
    assert math.isnan(identical_transcripts(base, []))


def _stage_module():
    """stages/evaluate.py as a module (its ``__main__`` block does not run)."""
    import importlib.util

    if "_preflight" not in sys.modules:
        # what `import _preflight` finds when the script runs (its directory first on sys.path); not by
        # putting stages/ on sys.path here: its evaluate.py would shadow the `evaluate` package
        pre = importlib.util.spec_from_file_location("_preflight", REPO / "stages" / "_preflight.py")
        sys.modules["_preflight"] = importlib.util.module_from_spec(pre)
        pre.loader.exec_module(sys.modules["_preflight"])
    spec = importlib.util.spec_from_file_location("evaluate_stage", REPO / "stages" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"config": {"split": ', r"base.json: unreadable \(Expecting .*\); rerun the evaluate_fp32 stage"),
        ("\udcff", r"base.json: unreadable \(.*codec can't decode.*\); rerun the evaluate_fp32 stage"),
        ("[1, 2]", r"base.json: not an FP32 evaluation \(expected a JSON object with config, metrics and"),
        ('{"config": {}, "model_dir": "m"}', "base.json: not an FP32 evaluation"),
        ('{"config": [], "metrics": {}, "clips": []}', "base.json: not an FP32 evaluation"),
    ],
)
def test_a_damaged_baseline_says_to_rerun_evaluate_fp32(tmp_path, content, message):
    from whisper_int8.model_sources import ModelSourceError

    path = tmp_path / "base.json"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(ModelSourceError, match=message):
        _stage_module().read_baseline(path, {}, Path("m"))
    path.write_text('{"config": {}, "model_dir": "m", "metrics": {"a": 1}, "clips": []}')
    assert _stage_module().read_baseline(path, {}, Path("m")) == {"metrics": {"a": 1}, "clips": []}


def _split_with(tmp: Path, wav: bytes) -> Path:
    """A one-clip split whose clip holds ``wav``."""
    (tmp / "split" / "audio").mkdir(parents=True)
    (tmp / "split" / "audio" / "en-0.wav").write_bytes(wav)
    row = {"id": "en-0", "language": "en", "audio": "audio/en-0.wav", "text": "hello", "duration": 1.0,
           "sha256": "0" * 64, "source": "t", "license": "-"}  # fmt: skip
    (tmp / "split" / "manifest.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    return tmp / "split"


def test_stage_with_a_truncated_baseline_or_an_undecodable_clip_exits_2_with_one_line(tmp_path):
    split = _split_with(tmp_path, b"RIFF\x24\x00\x00\x00WAVEfmt ")  # wave and ffmpeg both give up
    tiny_model_dir(tmp_path / "fp32")
    (tmp_path / "int8").mkdir()  # checked for its kind before any work, never loaded here
    (tmp_path / "int8" / "quant_config.json").write_text('{"config": {"weight_bits": 7}}')
    (tmp_path / "base.json").write_text('{"config": {"split": ')
    evaluate = {"split": str(split), "device": "cpu", "max_tokens": 4, "warmup": 0}
    models = {"fp32": str(tmp_path / "fp32"), "int8": str(tmp_path / "int8")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {**evaluate, "models": models}}))
    stage = [sys.executable, str(REPO / "stages" / "evaluate.py"), "--params", str(tmp_path / "params.yaml"),
             "--out", str(tmp_path / "out")]  # fmt: skip
    (tmp_path / "a-file").write_text("mine")
    cases = [
        (["--baseline", str(tmp_path / "base.json")], f"{tmp_path / 'base.json'}: unreadable (Expecting"),
        ([], f"{split / 'audio' / 'en-0.wav'}: unreadable or corrupt audio (Invalid data found"),
        # output paths that cannot take the results: refused before any transcription
        (["--out", str(tmp_path / "a-file")], f"{tmp_path / 'a-file'}: exists and is not a directory"),
        (["--baseline-only", "--baseline", str(tmp_path)], f"{tmp_path}: is a folder, not a file"),
    ]
    for extra, message in cases:
        proc = subprocess.run([*stage, *extra], cwd=tmp_path, env=venv_env(), capture_output=True, text=True)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), proc.stderr
        assert "evaluating" not in proc.stderr or extra == [], proc.stderr
    assert not (tmp_path / "out").exists() and (tmp_path / "a-file").read_text() == "mine"
    # Regression: a candidate that is not INT8 was found after the whole FP32 evaluation
    (tmp_path / "int8" / "quant_config.json").unlink()
    proc = subprocess.run(stage, cwd=tmp_path, env=venv_env(), capture_output=True, text=True)
    assert proc.returncode == 2 and "evaluate.models.int8: " in proc.stderr, proc.stderr
    assert "is not an INT8 model directory" in proc.stderr and "evaluating" not in proc.stderr
    # a clip of no samples: every reference word would count as deleted; refused, naming it
    (split / "audio" / "en-0.wav").write_bytes(wav_bytes(np.zeros(0, dtype=np.int16)))
    with pytest.raises(AudioInputError, match=r"clip en-0: .*en-0.wav holds no audio"):
        evaluate_model_dir(tmp_path / "fp32", split, decode=FAST, warmup=0)


@pytest.mark.parametrize(
    "models",
    [None, ["models/fp32"], {"fp32": "models/fp32"}, {"fp32": "a", "int8": 5}, {"fp32": "a", "int8": ""}],
)
def test_evaluate_models_must_name_both_model_directories(models):
    """Read by the evaluate and the promote stage: a bad value is one line there, not a crash."""
    with pytest.raises(ParamError, match=r"^p.yaml: evaluate.models must map fp32 and int8 to model dir"):
        model_dirs({"models": models}, "p.yaml")
    assert model_dirs({"models": {"fp32": "a", "int8": "b"}}) == {"fp32": Path("a"), "int8": Path("b")}


def test_settings_record_the_clip_cap_the_gate_reads():
    """eval.json's config carries evaluate.max_clips_per_language: the gate refuses a capped evaluation
    by it (gate.clip_cap), and a baseline made with another cap is not reused."""
    from whisper_int8.gate import clip_cap

    opt = {"split": "s", "decode": {}, "device": "cpu", "warmup": 0, "max_clips_per_language": 3}
    opt["models"] = {"int8": Path("absent")}  # no quant_config.json: no bits read
    assert clip_cap({"config": _stage_module().settings(opt, [])}) == 3
    assert clip_cap({"config": _stage_module().settings({**opt, "max_clips_per_language": None}, [])}) is None


def test_a_baseline_made_on_other_clips_is_refused(tmp_path):
    """After fetch_audio rewrites the split, the stored FP32 evaluation covers other clips: comparing
    INT8 on the new clips with it would report meaningless deltas."""
    from dataclasses import replace

    from whisper_int8.audio import Clip
    from whisper_int8.evaluate import clips_digest

    clip = Clip("en-0", "en", "a.wav", "hello", 1.0, "0" * 64, "t", "-")
    second = replace(clip, id="en-1")
    digests = {
        clips_digest(c)
        for c in (
            [clip],
            [replace(clip, text="hello there")],
            [replace(clip, sha256="1" * 64)],
            [clip, second],
        )
    }
    assert len(digests) == 4 and clips_digest([clip, second]) == clips_digest([second, clip])
    path = tmp_path / "base.json"
    stored = {"config": {"clips": clips_digest([clip])}, "model_dir": "m", "metrics": {}, "clips": []}
    path.write_text(json.dumps(stored))
    with pytest.raises(ParamError, match=r"base.json: FP32 evaluation made with other settings \(clips\)"):
        _stage_module().read_baseline(path, {"clips": clips_digest([clip, second])}, Path("m"))
    assert _stage_module().read_baseline(path, {"clips": clips_digest([clip])}, Path("m"))["metrics"] == {}


def test_a_baseline_of_other_weights_in_the_same_directory_is_refused(tmp_path):
    """Regression: only the FP32 directory's name was compared, so after another model was fetched
    into models/fp32 (stages run by hand), INT8 was compared with the old model's rates and latency."""
    split = speech_split(tmp_path / "split", [("en", "good morning")])
    tiny_model_dir(tmp_path / "fp32", seed=0)
    tiny_int8_dir(tmp_path / "int8")
    evaluate = {"split": str(split), "device": "cpu", "max_tokens": 4, "warmup": 0}
    models = {"fp32": str(tmp_path / "fp32"), "int8": str(tmp_path / "int8")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {**evaluate, "models": models}}))
    stage = [sys.executable, str(REPO / "stages" / "evaluate.py"), "--params", str(tmp_path / "params.yaml"),
             "--baseline", str(tmp_path / "base.json")]  # fmt: skip
    made = subprocess.run([*stage, "--baseline-only"], cwd=tmp_path, env=venv_env(),
                          capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    tiny_model_dir(tmp_path / "fp32", seed=1)  # another checkpoint, same directory
    proc = subprocess.run([*stage, "--out", str(tmp_path / "out")], cwd=tmp_path, env=venv_env(),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "made with other settings (model_weights)" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_baseline_is_kept_across_int8_activation_bits_but_not_hosts(tmp_path, monkeypatch):
    """WHISPER_INT8_ACTIVATION_BITS=7 on a VNNI machine changes the INT8 evaluation only: the FP32 one is
    reused; another host (its ISA sets FP32 timings) still refuses it."""
    stage = _stage_module()
    int8 = tmp_path / "int8"
    int8.mkdir()
    (int8 / "quant_config.json").write_text(json.dumps({"config": {"weight_bits": 7}}))
    models = {"int8": int8}
    opt = {"split": "s", "decode": {}, "device": "cpu", "warmup": 0, "max_clips_per_language": None}
    opt["models"] = models
    path = tmp_path / "base.json"
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", "7")
    config = stage.settings(opt, [])
    assert config["int8_activation_bits"] == 7 and "int8 activations" not in config["host"]
    # (a review) the scoring libraries' versions, recorded when the rates are scored (promote ran later)
    assert config["scorer"].startswith("openai-whisper ") and "; num2words " in config["scorer"]
    path.write_text(json.dumps({"config": config, "model_dir": "m", "metrics": {}, "clips": []}))
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", "auto")
    assert stage.settings(opt, [])["int8_activation_bits"] == 8  # 7-bit weights: 8 on every CPU
    assert stage.read_baseline(path, stage.settings(opt, []), Path("m"))["metrics"] == {}
    # the FP32-only stage does not read them: a value this CPU cannot run does not stop it
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", "9")
    assert "int8_activation_bits" not in stage.settings(opt, [], int8=False)
    with pytest.raises(ValueError, match="'9': use auto, 7 or 8"):
        stage.settings(opt, [])
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", "7")
    monkeypatch.setattr(stage, "host_summary", lambda: "another CPU")
    with pytest.raises(ParamError, match=r"made with other settings \(host\)"):
        stage.read_baseline(path, stage.settings(opt, []), Path("m"))


def test_a_cuda_baseline_timed_on_another_gpu_is_refused(tmp_path, monkeypatch):
    """Regression (a review): on evaluate.device: cuda the settings named the CPU only (``host``), so an
    FP32 evaluation timed on one card (a T4) was reused beside INT8 timed on another (an A100) with the
    same CPU, and the gate's speedup divided one GPU's latency by the other's. A CPU evaluation records
    no GPU (asking for one would start CUDA)."""
    stage = _stage_module()
    opt = {"split": "s", "decode": {}, "device": "cuda:0", "warmup": 0, "max_clips_per_language": None}
    opt["models"] = {"int8": tmp_path / "absent"}  # no quant_config.json: no bits read
    gpu = {"card": "NVIDIA T4; sm_75; 15095 MiB; CUDA 12.8"}
    summary = lambda device: gpu["card"] if device != "cpu" else None  # noqa: E731
    monkeypatch.setattr(stage, "device_summary", summary, raising=False)
    path = tmp_path / "base.json"
    stored = {"config": stage.settings(opt, [], int8=False), "model_dir": "m", "metrics": {}, "clips": []}
    path.write_text(json.dumps(stored))
    assert stored["config"]["gpu"] == gpu["card"]
    assert stage.read_baseline(path, stage.settings(opt, []), Path("m"))["metrics"] == {}
    gpu["card"] = "NVIDIA A100-SXM4-40GB; sm_80; 40326 MiB; CUDA 12.8"
    with pytest.raises(ParamError, match=r"made with other settings \(gpu\)"):
        stage.read_baseline(path, stage.settings(opt, []), Path("m"))
    assert "gpu" not in stage.settings({**opt, "device": "cpu"}, [], int8=False)


def test_device_summary_starts_no_cuda_for_the_cpu(monkeypatch):
    from whisper_int8 import evaluate

    monkeypatch.setattr(evaluate, "in_fresh_process", lambda *a: pytest.fail("a process for the CPU"))
    assert evaluate.device_summary("cpu") is None


def test_gpu_summary_names_the_card(monkeypatch):
    """What the ``gpu`` setting holds (the properties faked: no GPU here)."""
    import types

    import torch

    from whisper_int8.cpu import gpu_summary

    props = types.SimpleNamespace(name="NVIDIA T4", major=7, minor=5, total_memory=15095 * 2**20)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert gpu_summary("cuda:0") == "NVIDIA T4; sm_75; 15095 MiB; CUDA 12.8"


@pytest.mark.gpu
def test_device_summary_on_a_gpu():
    """Unverified: not run on a GPU yet (skipped without one)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from whisper_int8.evaluate import device_summary

    assert device_summary("cuda:0").startswith(torch.cuda.get_device_name(0) + "; sm_")


def test_a_baseline_scored_by_another_scoring_py_is_refused(tmp_path, monkeypatch):
    """Regression (a review): scoring.py edited after evaluate_fp32, the stage then run by hand: the
    stored FP32 rates (counted by the old rules) were compared with INT8 rates counted by the new ones,
    and eval.json read "11 -> 7 errors" for identical transcripts."""
    from whisper_int8 import scoring

    stage = _stage_module()
    opt = {"split": "s", "decode": {}, "device": "cpu", "warmup": 0, "max_clips_per_language": None}
    opt["models"] = {"int8": tmp_path / "absent"}  # no quant_config.json: no bits read
    path = tmp_path / "base.json"
    stored = {"config": stage.settings(opt, [], int8=False), "model_dir": "m", "metrics": {}, "clips": []}
    path.write_text(json.dumps(stored))
    assert stage.read_baseline(path, stage.settings(opt, []), Path("m"))["metrics"] == {}
    edited = tmp_path / "scoring.py"
    edited.write_bytes(Path(scoring.__file__).read_bytes() + b"# another normalizer\n")
    monkeypatch.setattr(scoring, "__file__", str(edited))
    with pytest.raises(ParamError, match=r"made with other settings \(scorer\)"):
        stage.read_baseline(path, stage.settings(opt, []), Path("m"))


def test_a_cap_that_keeps_every_clip_is_no_cap(tmp_path):
    """Regression (a review): evaluate.max_clips_per_language at or above every language's clip count
    evaluated the whole split, yet the gate refused the model as "evaluated on the first 20 clip(s) of
    each language only"; a cap that drops a clip still makes a quick look."""
    from whisper_int8.gate import clip_cap

    split = speech_split(tmp_path / "split", [("en", "good morning")])
    tiny_model_dir(tmp_path / "fp32")
    evaluate = {"split": str(split), "device": "cpu", "max_tokens": 4, "warmup": 0}
    evaluate["max_clips_per_language"] = 20  # the split holds 1
    evaluate["models"] = {"fp32": str(tmp_path / "fp32"), "int8": str(tmp_path / "int8")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": evaluate}))
    stage = [sys.executable, str(REPO / "stages" / "evaluate.py"), "--params", str(tmp_path / "params.yaml"),
             "--baseline-only", "--baseline", str(tmp_path / "base.json")]  # fmt: skip
    proc = subprocess.run(stage, cwd=tmp_path, env=venv_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert clip_cap(json.loads((tmp_path / "base.json").read_text())) is None
    assert "max_clips_per_language=20 keeps all 1 clips of the split: no cap" in proc.stderr
    opt = {"max_clips_per_language": 1}
    assert _stage_module().without_idle_cap(opt, 2, 1) is opt  # one clip of two: a quick look


def test_the_candidate_must_be_int8_and_the_baseline_not(tmp_path):
    """Regression: evaluate.models.int8: models/fused was evaluated, and would be registered, as INT8."""
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    for folder, name in ((fp32, "model.pt"), (int8, "quant_config.json")):
        folder.mkdir()
        (folder / name).write_text("not read")
    opt = {"models": {"fp32": int8, "int8": fp32}}
    with pytest.raises(ParamError, match=r"^p.yaml: evaluate.models.int8: .*fp32 is not an INT8 model"):
        _stage_module().check_model_dir(opt, "int8", "p.yaml")
    with pytest.raises(ParamError, match=r"evaluate.models.fp32: .*int8 is an INT8 model directory; give an"):
        _stage_module().check_model_dir(opt, "fp32", "p.yaml")


def test_an_int8_model_of_another_fp32_model_is_refused(tmp_path):
    """INT8 is measured against the FP32 model it was converted from: a candidate whose card names another
    checkpoint (models/fp32 fetched again, `dvc repro -s evaluate`) stops before any transcription."""
    split = speech_split(tmp_path / "split", [("en", "good morning")])
    tiny_model_dir(tmp_path / "fp32", seed=0)
    card = tiny_int8_dir(tmp_path / "int8") / "model_card.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "fp32_sha256": "0" * 64}))
    evaluate = {"split": str(split), "device": "cpu", "max_tokens": 4, "warmup": 0}
    models = {"fp32": str(tmp_path / "fp32"), "int8": str(tmp_path / "int8")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {**evaluate, "models": models}}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "stages" / "evaluate.py"), "--params", str(tmp_path / "params.yaml"),
         "--out", str(tmp_path / "out")], cwd=tmp_path, env=venv_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert f"{tmp_path}/int8 was made from another FP32 model than {tmp_path}/fp32 holds" in proc.stderr
    assert "params.yaml evaluate.models must name one model's directories" in proc.stderr
    assert "transcrib" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_cuda_evaluation_records_no_cpu_activation_bits(tmp_path, monkeypatch):
    """(a review) fbgemm's activation bits were recorded, and a WHISPER_INT8_ACTIVATION_BITS this CPU
    cannot run refused, on a CUDA evaluation too, where torchao runs 8-bit activations regardless."""
    stage = _stage_module()
    monkeypatch.setattr(stage, "device_summary", lambda device: "a GPU")  # no CUDA here
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", "9")
    opt = {"split": "s", "decode": {}, "device": "cuda", "warmup": 0, "max_clips_per_language": None}
    (tmp_path / "quant_config.json").write_text(json.dumps({"config": {"weight_bits": 7}}))
    opt["models"] = {"int8": tmp_path}
    config = stage.settings(opt, [])
    assert "int8_activation_bits" not in config and config["gpu"] == "a GPU"
    with pytest.raises(ValueError, match="'9': use auto, 7 or 8"):
        stage.settings({**opt, "device": "cpu"}, [])


def test_the_overall_delta_compares_the_languages_both_models_have():
    """Regression (a review): each overall rate is the mean over its own model's languages, so with de
    in FP32's results only, INT8's +0.5 pp on en read as +3.00 pp overall."""
    speed = {"latency_p50_s": 1.0, "model_size_mb": 10.0}
    base = {"wer/en": 10.0, "clips/en": 3, "wer/de": 5.0, "clips/de": 3, "error_rate/overall": 7.5, **speed}
    cand = {"wer/en": 10.5, "clips/en": 3, "error_rate/overall": 10.5, **speed}
    assert eval_report.compare(base, cand)["error_rate_delta/overall"] == pytest.approx(0.5)
    both = {**cand, "wer/de": 6.0, "clips/de": 3, "error_rate/overall": 8.25}  # same languages: as before
    assert eval_report.compare(base, both)["error_rate_delta/overall"] == 8.25 - 7.5


def _known_transcriber(calls: list) -> object:
    """A ``transcribe_clip`` whose answers are known (the tiny random model identifies no language
    right, so a LID figure over the wrong clips read 0 either way): en and zh clips identified
    right, de as fr (3 clips of 4); a fallback temperature of 0.4 on each."""
    detections = {"en": iter(["en", "en"]), "de": iter(["fr"]), "zh": iter(["zh"])}

    def transcribe(model, audio, language, **kw) -> dict:
        calls.append(("transcribe", language, kw.get("detect_language"), len(audio)))
        text = "the quick brown fox" if language == "en" else "x"
        return {"text": text, "lid_s": 0.0, "detected_language": next(detections[language]),
                "temperature": 0.4}  # fmt: skip

    return transcribe


def test_each_clip_is_transcribed_in_its_language_and_scored_against_its_reference(setup, monkeypatch):
    """(mutation review) What each clip's row and the per-language figures are made of: the clip's own
    language forced (identified apart), its manifest text the reference, Whisper's identification
    counted per language, the fallback temperature and the audio's duration kept, the peak RSS reset
    before the first transcription. The evaluation tests above check the figures against the clip rows,
    which a row built wrongly (reference and hypothesis swapped, the reference language recorded as
    the detected one) passed."""
    from whisper_int8 import evaluate
    from whisper_int8.audio import read_manifest

    calls: list = []
    monkeypatch.setattr(evaluate, "transcribe_clip", _known_transcriber(calls))
    monkeypatch.setattr(memory, "reset_peak_rss", lambda: calls.append(("reset",)))
    out = evaluate.evaluate_with_model(make_tiny_whisper(), setup["fp32"], setup["split"], FAST, warmup=0)
    manifest = read_manifest(setup["split"])
    assert calls[0] == ("reset",) and len(calls) == 1 + len(manifest)
    assert [c[1:3] for c in calls[1:]] == [(clip.language, True) for clip in manifest]
    rows = {c["id"]: c for c in out["clips"]}
    for clip in manifest:
        row = rows[clip.id]
        assert (row["language"], row["reference"]) == (clip.language, clip.text)
        assert row["hypothesis"] == ("the quick brown fox" if clip.language == "en" else "x")
        assert row["fallback_temperature"] == 0.4
        assert row["duration_s"] == pytest.approx(clip.duration, abs=0.01)
    m = out["metrics"]
    assert [rows[i]["detected_language"] for i in ("en-000", "en-001", "de-002", "zh-003")] == [
        "en", "en", "fr", "zh"]  # fmt: skip
    assert (m["lid_accuracy/en"], m["lid_accuracy/de"], m["lid_accuracy/zh"]) == (100.0, 0.0, 100.0)
    assert m["lid_accuracy/overall"] == 75.0  # 3 of 4 clips
    # en: 9 + 6 reference words; "the quick brown fox" leaves 5 deleted, then 4 wrong and 2 deleted
    assert (m["errors/en"], m["ref_length/en"]) == (11, 15)
    assert m["wer/en"] == pytest.approx(100 * 11 / 15)
    assert m["audio_s"] == pytest.approx(sum(clip.duration for clip in manifest), abs=0.05)


def test_warmup_calls_are_untimed_and_the_first_is_reported_alone(setup, monkeypatch):
    """(mutation review) ``evaluate.warmup`` untimed calls on the first clip, the first of them (the
    cold one) reported as first_call_s; 0: none at all, and no first_call_s."""
    from whisper_int8 import evaluate

    seconds = iter([0.4, 0.0, 0.0] + [0.0] * 10)
    calls = []

    def transcribe(model, audio, language, **kw) -> dict:
        calls.append((language, len(audio)))
        time.sleep(next(seconds))
        return {"text": "x", "lid_s": 0.0, "detected_language": language, "temperature": 0.0}

    monkeypatch.setattr(evaluate, "transcribe_clip", transcribe)
    results, first_call = evaluate.transcribe_split(make_tiny_whisper(), setup["split"], FAST, warmup=2)
    assert len(calls) == 2 + len(results) and calls[0] == calls[1] == calls[2]  # the first clip
    assert first_call >= 0.4  # the first call, not the last warm-up
    calls.clear()
    results, first_call = evaluate.transcribe_split(make_tiny_whisper(), setup["split"], FAST, warmup=0)
    assert first_call is None and len(calls) == len(results)
    assert "first_call_s" not in evaluate.speed_metrics(results, None)


def test_latency_percentiles_and_rtf_of_known_latencies():
    """(mutation review) p50 and p90 over the clips' latencies, RTF as their total over the audio's
    (not a mean of per-clip ratios, which a short clip would swing)."""
    from whisper_int8.evaluate import ClipResult, speed_metrics

    rows = [ClipResult(str(i), "en", "r", "h", "en", float(i), 10.0 * i, 0.0) for i in range(1, 11)]
    rows[0].duration_s = 1.0  # 1 s of work on 1 s of audio: RTF 1 for that clip alone
    out = speed_metrics(rows, 0.7)
    assert out["latency_p50_s"] == pytest.approx(5.5) and out["latency_p90_s"] == pytest.approx(9.1)
    assert out["rtf"] == pytest.approx(55 / 541) and out["audio_s"] == pytest.approx(541.0)
    assert out["first_call_s"] == 0.7


def _evaluation(rates: dict[str, float], clips: list[dict], latency_p50_s: float = 1.0) -> dict:
    """An evaluation as :func:`whisper_int8.evaluate.evaluate_model_dir` returns it."""
    from .eval_fixtures import variant_metrics

    return {"metrics": variant_metrics(rates, latency_p50_s, 100.0), "clips": clips}


def _row(i: int, lang: str, reference: str, hypothesis: str, latency_s: float = 1.0) -> dict:
    return {"id": f"{lang}-{i}", "language": lang, "reference": reference, "hypothesis": hypothesis,
            "latency_s": latency_s}  # fmt: skip


def test_each_interval_is_named_by_its_languages_metric():
    """(mutation review) A CER language's interval is ``cer_delta_ci_*/zh``, the name per_language.csv
    and the gate's reason read it by; the report tests above have too few clips for any interval."""
    base = [_row(i, "en", "a b c d", "a b c d") for i in range(10)]
    base += [_row(i, "zh", "你好世界", "你好世界") for i in range(10)]
    cand = [_row(i, "en", "a b c d", "a b x d") for i in range(10)]
    cand += [_row(i, "zh", "你好世界", "你好世") for i in range(10)]
    comp = eval_report.compare_results(
        _evaluation({"en": 0.0, "zh": 0.0}, base), _evaluation({"en": 25.0, "zh": 25.0}, cand)
    )
    assert comp["wer_delta_ci_low/en"] == comp["wer_delta_ci_high/en"] == pytest.approx(25.0)
    assert comp["cer_delta_ci_low/zh"] == comp["cer_delta_ci_high/zh"] == pytest.approx(25.0)
    assert not any(k.startswith("wer_delta_ci") and k.endswith("/zh") for k in comp)


def test_a_language_one_model_lacks_is_compared_over_the_others():
    """(mutation review) de in FP32's results only, fr in INT8's only (evaluations compared by hand):
    the comparison covers en, and de's row keeps FP32's figures beside empty INT8 ones, not a crash."""
    base = _evaluation({"en": 10.0, "de": 5.0}, [_row(0, "en", "a", "a"), _row(0, "de", "b", "b")])
    cand = _evaluation({"en": 10.5, "fr": 7.0}, [_row(0, "en", "a", "a"), _row(0, "fr", "c", "c")])
    comp = eval_report.compare_results(base, cand)
    assert comp["wer_delta/en"] == comp["error_rate_delta/overall"] == pytest.approx(0.5)
    assert not any(k.endswith(("/de", "/fr")) for k in comp)
    rows = {r["language"]: r for r in eval_report.per_language_rows(base["metrics"], cand["metrics"], comp)}
    assert (rows["de"]["clips"], rows["de"]["fp32"], rows["de"]["errors_fp32"]) == (3, 5.0, 50)
    assert all(math.isnan(rows["de"][k]) for k in ("int8", "delta_pp", "lid_int8", "errors_int8"))
    # and no language in common: no mean of no deltas (a StatisticsError), the two overall rates apart
    only_fr = _evaluation({"fr": 7.0}, [_row(0, "fr", "c", "c")])
    assert eval_report.compare(base["metrics"], only_fr["metrics"])["error_rate_delta/overall"] == -0.5


def test_per_language_rows_hold_each_models_figures_and_the_signed_delta():
    """(mutation review) Every cell of a row against its source: the tiny models of the report tests
    score 100 % in both variants, so a delta of the wrong sign, a column taken from the other model or
    rates rounded to a tenth all passed them."""
    base = _evaluation({"en": 12.345678}, [])["metrics"]
    cand = {**_evaluation({"en": 10.111111}, [])["metrics"], "lid_accuracy/en": 66.666667}
    comp = {**eval_report.compare(base, cand), "wer_delta_ci_low/en": -4.5, "wer_delta_ci_high/en": 0.25}
    (row,) = eval_report.per_language_rows(base, cand, comp)
    assert row == {
        "language": "en", "metric": "wer", "clips": 3, "fp32": 12.3457, "int8": 10.1111,
        "delta_pp": -2.2346, "delta_ci_low": -4.5, "delta_ci_high": 0.25, "lid_fp32": 100.0,
        "lid_int8": 66.67, "ref_length": 1000, "errors_fp32": 123, "errors_int8": 101,
    }  # fmt: skip


def test_latency_rows_follow_the_baselines_clips():
    """(mutation review) One row per FP32 clip numbered from 0 (the DVC plot's x), INT8's latency beside
    it, empty where INT8 has no such clip."""
    base = [_row(0, "en", "a", "a", 0.123456), _row(1, "en", "a", "a", 2.0), _row(2, "de", "b", "b", 3.0)]
    cand = [_row(2, "de", "b", "b", 1.5), _row(0, "en", "a", "a", 0.654321)]
    rows = eval_report.latency_rows(base, cand)
    assert [(r["clip"], r["id"], r["language"], r["fp32"], r["int8"]) for r in rows] == [
        (0, "en-0", "en", 0.12346, 0.65432),
        (1, "en-1", "en", 2.0, ""),
        (2, "de-2", "de", 3.0, 1.5),
    ]
    assert eval_report.latency_chart(rows)[:8] == b"\x89PNG\r\n\x1a\n"  # the empty cell left out


def test_a_child_run_gets_the_deltas_only_the_candidate_its_own():
    """(mutation review) The child runs' delta keys: the intervals and other comparison figures stay
    in the parent run."""
    comp = {"wer_delta/en": 0.5, "error_rate_delta/overall": 0.5, "wer_delta_ci_low/en": -1.0, "speedup": 2.0}
    assert eval_report.deltas_for("int8", comp) == {"wer_delta/en": 0.5, "error_rate_delta/overall": 0.5}
    assert eval_report.deltas_for("fp32", comp) == {"wer_delta/en": 0.0, "error_rate_delta/overall": 0.0}


def test_the_report_keeps_the_settings_the_gate_reads(tmp_path):
    """(mutation review) eval.json's ``config`` is what the gate refuses a quick look by (its clip cap)
    and promote logs; the report tests above compared the metrics only."""
    from whisper_int8.gate import clip_cap

    config = {"languages": ["en"], "max_clips_per_language": 3, "scorer": "scoring.py 0123"}
    base = _evaluation({"en": 10.0}, [_row(0, "en", "a", "a")])
    cand = _evaluation({"en": 10.0}, [_row(0, "en", "a", "a")], latency_p50_s=0.5)
    write_report(tmp_path, base, cand, config)
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["config"] == config and clip_cap(on_disk) == 3


def test_device_summary_asks_a_fresh_process_for_a_gpu(monkeypatch):
    """(mutation review) The card is read in a child: CUDA started in the stage's own process would hold
    GPU memory through both evaluations."""
    from whisper_int8 import evaluate

    asked = []
    monkeypatch.setattr(evaluate, "in_fresh_process", lambda func, *a: asked.append((func, a)) or "a GPU")
    assert evaluate.device_summary("cuda:1") == "a GPU"
    assert asked == [(evaluate.gpu_summary, ("cuda:1",))]
