"""`whisper-int8 transcribe` as a shell user runs it: pipes, kills, odd file names, bad arguments."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from whisper_int8 import cli
from whisper_int8.languages import language_code

from .conftest import venv_env
from .eval_fixtures import tiny_model_dir

WHISPER_INT8 = str(Path(sys.executable).parent / "whisper-int8")


def write_wav(path: Path, seconds: float = 1.0) -> Path:
    """A 16 kHz mono 16-bit WAV of quiet noise (the tiny random model makes up a few tokens for it)."""
    samples = (np.random.default_rng(0).standard_normal(int(16000 * seconds)) * 3000).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(samples.tobytes())
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "fp32")


def transcribe_cmd(model: Path, wavs: list[Path]) -> list[str]:
    return [WHISPER_INT8, "transcribe", "--model", str(model), "--language", "en", "--max-tokens", "4",
            *map(str, wavs)]  # fmt: skip


def test_a_reader_that_stops_reading_ends_transcribe_quietly(tmp_path, tiny):
    """Regression (a review): `whisper-int8 transcribe *.wav | head -1` ended in a BrokenPipeError
    traceback, exit 1: the CLI never used the stages' handling of a closed stdout."""
    wavs = [write_wav(tmp_path / f"clip{i}.wav") for i in range(6)]
    env = {**venv_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        transcribe_cmd(tiny, wavs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout.readline().startswith(str(wavs[0]).encode())
    proc.stdout.close()  # what head does after its line
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in stderr, stderr


def test_each_transcript_is_written_as_its_file_is_done(tmp_path, tiny):
    """Regression (a review): redirected to a file, the transcripts sat in Python's buffer until the
    batch ended, so a batch killed by `kill` or `timeout` left an empty file after hours of work."""
    wavs = [
        write_wav(tmp_path / f"clip{i}.wav") for i in range(40)
    ]  # under 8 KB of output: the pipe buffer never fills
    out = tmp_path / "out.tsv"
    env = {k: v for k, v in venv_env().items() if k != "PYTHONUNBUFFERED"}
    with out.open("wb") as sink:
        proc = subprocess.Popen(transcribe_cmd(tiny, wavs), stdout=sink, stderr=subprocess.PIPE, env=env)
        deadline = time.monotonic() + 120
        while not out.stat().st_size and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # as the OOM killer or a second `kill -9` ends it
        proc.wait(timeout=60)
    lines = out.read_text().splitlines()
    # all of them at once: written only by the exit's flush, which a killed batch never reaches
    assert 0 < len(lines) < len(wavs) and lines[0].startswith(f"{wavs[0]}\t"), len(lines)


def test_a_folder_among_the_audio_is_named_as_a_folder_not_missing(tmp_path, capsys):
    """Regression (a review): a directory argument was "audio file not found", though it is there."""
    folder = tmp_path / "clips"
    folder.mkdir()
    assert cli.main(["transcribe", "--model", str(tmp_path), str(folder)]) == 2
    err = capsys.readouterr().err
    assert "Is a directory" in err and "not found" not in err, err


def test_a_file_name_that_is_not_utf8_is_printed_not_fatal(tmp_path, tiny, monkeypatch):
    """Regression (a review): a Latin-1 name (café.wav) under a strict UTF-8 stdout (en_US.UTF-8)
    stopped the batch with "error: 'utf-8' codec can't encode character '\\udce9'", exit 2."""
    latin1 = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.wav"))
    write_wav(latin1)
    other = write_wav(tmp_path / "other.wav")
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8", errors="strict"))
    args = ["transcribe", "--model", str(tiny), "--language", "en", "--max-tokens", "4"]
    assert cli.main([*args, str(latin1), str(other)]) == 0
    sys.stdout.flush()
    lines = raw.getvalue().decode("utf-8").splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{tmp_path}/caf\\xe9.wav\t"), lines


def test_a_file_name_with_a_tab_or_newline_stays_one_row(tmp_path, tiny, capsys):
    """Regression (a review): `a<TAB>b.wav` printed `…/a`, a tab, then `b.wav<TAB>` and its transcript,
    and `c<NEWLINE>d.wav` two lines: two files gave three rows, and a reader splitting at the first tab
    paired the wrong names and texts. The text form now escapes them (``--json`` gives names whole)."""
    wavs = [write_wav(tmp_path / "a\tb.wav"), write_wav(tmp_path / "c\nd.wav")]
    args = ["transcribe", "--model", str(tiny), "--language", "en", "--max-tokens", "4"]
    assert cli.main([*args, *map(str, wavs)]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows] == [f"{tmp_path}/a\\tb.wav", f"{tmp_path}/c\\nd.wav"], rows
    assert all(len(row) == 2 for row in rows), rows
    assert cli.main([*args, "--json", *map(str, wavs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["audio"] for line in lines] == list(map(str, wavs))


@pytest.mark.parametrize("beam", ["65", "100000"])
def test_a_beam_past_the_bound_is_a_usage_error(beam, capsys):
    """Regression (a review): --beam-size 100000 loaded the model, then died in a 300 GB allocation's
    traceback (exit 1)."""
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["transcribe", "--model", "m", "--beam-size", beam, "a.wav"])
    assert exit_.value.code == 2 and "at most 64" in capsys.readouterr().err


def test_iso_codes_whisper_spells_otherwise_are_taken():
    """Regression (a review): jv (ISO 639-1 Javanese; Whisper's jw) and iw (Hebrew) were refused as
    "not a language Whisper knows"."""
    assert [language_code(c) for c in ("jv", "JV", "jw", "iw", "he")] == ["jw", "jw", "jw", "he", "he"]
