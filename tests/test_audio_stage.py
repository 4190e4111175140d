"""The fetch_audio stage script and a small end-to-end ``dvc repro`` of it."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO, run_dvc
from whisper_int8.audio import read_manifest

# downloads and synthesized clips in the repository's cache/: one xdist worker at a time (Makefile)
pytestmark = pytest.mark.xdist_group("repo-cache")

STAGE = [sys.executable, str(REPO / "stages" / "fetch_audio.py")]


def test_help_and_bad_params_exit_2_with_one_line(tmp_path):
    assert "--calibration" in subprocess.run([*STAGE, "--help"], capture_output=True, text=True).stdout
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"audio": {"languages": ["en", "xx"], "sources": {"asterisk": ["en"]},
                                                "calib_per_lang": 1, "eval_per_lang": 1, "seed": 0,
                                                "on_error": "skip"}}))  # fmt: skip
    proc = subprocess.run([*STAGE, "--params", str(params)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {params}: audio.languages: xx not a language Whisper knows"


@pytest.mark.parametrize(
    ("change", "message"),
    [({"asterisk_codecs": "wav"}, "unknown audio key(s) ['asterisk_codecs']; allowed: asterisk_codec, "),
     ({"eval_per_lang": 0}, "audio.eval_per_lang must be an integer >= 1, got 0")],
)  # fmt: skip
def test_the_default_params_with_one_bad_key_exit_2_naming_the_file_read(tmp_path, change, message):
    """Regression: a misspelt key was ignored (the default g722 used) and 0 evaluation clips accepted."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["audio"].update(change)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    proc = subprocess.run([*STAGE, "--params", str(path)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {path}: {message}")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "data").exists()


@pytest.mark.integration
def test_dvc_repro_fetch_audio_small_and_deterministic(dvc_repo, monkeypatch):
    monkeypatch.setenv("WHISPER_INT8_CACHE", str(REPO / "cache"))  # reuse downloads and synthesized clips
    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["audio"].update(languages=["en", "ru", "de"], sources={"asterisk": ["en", "ru"], "kokoro": ["de"]},
                           calib_per_lang=1, eval_per_lang=2)  # fmt: skip
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    run_dvc(dvc_repo, "repro", "fetch_audio")
    summary = json.loads((dvc_repo / "data" / "audio_summary.json").read_text())
    for lang in ("en", "ru", "de"):
        assert summary["splits"]["eval"]["languages"][lang]["clips"] == 2
        assert summary["splits"]["calibration"]["languages"][lang]["clips"] == 1
    assert summary["sources"] == {"de": ["kokoro"], "en": ["asterisk"], "ru": ["asterisk"]}
    versions = summary["debian_packages"]
    want = {f"asterisk-core-sounds-{lang}{codec}" for lang in ("en", "ru") for codec in ("", "-g722")}
    assert set(versions) == want  # the audio and the transcripts
    assert all(re.fullmatch(r"[\w.:+~-]+", v) for v in versions.values()), versions
    clips = read_manifest(dvc_repo / "data" / "eval")
    assert {c.source.split(":")[0] for c in clips} == {"asterisk", "kokoro"}

    def out_hashes() -> dict:
        lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())["stages"]["fetch_audio"]["outs"]
        return {o["path"]: o["md5"] for o in lock}

    first = out_hashes()
    run_dvc(dvc_repo, "repro", "--force", "fetch_audio")
    assert out_hashes() == first
    assert "changed" not in run_dvc(dvc_repo, "status", "fetch_audio").stdout
