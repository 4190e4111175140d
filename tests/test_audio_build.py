"""The corpus build on local fixtures: schema, split disjointness, determinism, every bad-input case."""

from __future__ import annotations

import json
import re
import sys
import threading
import types
import wave
from pathlib import Path

import numpy as np
import pytest
import yaml
from whisper.tokenizer import LANGUAGES

from tests.conftest import REPO
from tests.test_audio_wavio import write_tone
from whisper_int8.audio import AudioInputError, read_manifest, wavio
from whisper_int8.audio import build as audio_build
from whisper_int8.audio.asterisk import ensure_package
from whisper_int8.audio.build import build, parse_params
from whisper_int8.audio.errors import FfmpegMissingError
from whisper_int8.audio.wavio import wav_bytes
from whisper_int8.fsutil import OutputConflictError, sha256_file
from whisper_int8.params import ParamError, load_params, section

CODES = sorted(LANGUAGES)


def make_corpus(root: Path, langs=("en", "de"), n: int = 6) -> Path:
    """``root/<lang>/clipNN.wav`` tones with ``.txt`` transcripts, distinct per clip (audio and text:
    one recording under two transcripts is one clip)."""
    for lang in langs:
        for i in range(n):
            freq = 200 + 40 * i + 0.25 * CODES.index(lang)
            write_tone(root / lang / f"clip{i:02d}.wav", freq, 0.5 + 0.1 * i)
            (root / lang / f"clip{i:02d}.txt").write_text(f"{lang} sentence number {i} for the test\n")
    return root


def params(source: str, langs=("en", "de"), calib: int = 2, evals: int = 3, **extra) -> dict:
    return {"languages": list(langs), "sources": {source: list(langs)}, "calib_per_lang": calib,
            "eval_per_lang": evals, "seed": 0, "on_error": "skip", **extra}  # fmt: skip


def run_build(tmp: Path, p: dict, out: str = "out") -> dict:
    o = tmp / out
    return build(parse_params(p), o / "calibration", o / "eval", o / "summary.json")


def test_schema_disjoint_splits_and_summary(tmp_path):
    make_corpus(tmp_path / "rec")
    summary = run_build(tmp_path, params(f"local:{tmp_path / 'rec'}"))
    splits = {s: read_manifest(tmp_path / "out" / s) for s in ("calibration", "eval")}
    for split, clips in splits.items():
        assert len(clips) == {"calibration": 4, "eval": 6}[split]
        for c in clips:
            rel = json.loads(next(line for line in (tmp_path / "out" / split / "manifest.jsonl").open()
                                  if c.id in line))["audio"]  # fmt: skip
            assert rel == f"audio/{c.id}.wav"
            assert sha256_file(c.audio) == c.sha256 and c.source.startswith("local:") and c.license
            with wave.open(c.audio) as w:
                assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
                assert c.duration == pytest.approx(w.getnframes() / 16000, abs=1e-3)
    texts = [{c.text for c in clips} for clips in splits.values()]
    assert not texts[0] & texts[1]
    ids = [c.id for clips in splits.values() for c in clips]
    assert len(ids) == len(set(ids))
    assert summary["splits"]["eval"]["languages"]["de"]["clips"] == 3
    assert summary["splits"]["calibration"]["languages"]["en"]["clips"] == 2
    minutes = sum(c.duration for c in splits["eval"]) / 60
    assert summary["splits"]["eval"]["minutes"] == pytest.approx(minutes, abs=1e-3)
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_same_seed_same_bytes_and_eval_independent_of_calibration_count(tmp_path):
    make_corpus(tmp_path / "rec")
    p = params(f"local:{tmp_path / 'rec'}")
    run_build(tmp_path, p, "a")
    run_build(tmp_path, p, "b")
    files = sorted(f.relative_to(tmp_path / "a") for f in (tmp_path / "a").rglob("*") if f.is_file())
    assert len(files) == 2 + 10 + 1
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f

    def eval_manifest(out: str) -> bytes:
        return (tmp_path / out / "eval" / "manifest.jsonl").read_bytes()

    # Decoding on 1 or 3 threads changes nothing, not even with bad items among the good.
    make_corpus(tmp_path / "mixed")
    bad_corpus(tmp_path / "mixed")
    mixed = params(f"local:{tmp_path / 'mixed'}")
    run_build(tmp_path, {**mixed, "workers": 1}, "w1")
    run_build(tmp_path, {**mixed, "workers": 3}, "w3")
    for f in sorted(f.relative_to(tmp_path / "w1") for f in (tmp_path / "w1").rglob("*") if f.is_file()):
        assert (tmp_path / "w1" / f).read_bytes() == (tmp_path / "w3" / f).read_bytes(), f

    run_build(tmp_path, {**p, "calib_per_lang": 1}, "c")
    assert eval_manifest("c") == eval_manifest("a")
    run_build(tmp_path, {**p, "seed": 1}, "d")
    assert eval_manifest("d") != eval_manifest("a")


def bad_corpus(root: Path) -> dict[str, str]:
    """One good clip plus every bad case; returns {file name: expected cause}."""
    make_corpus(root, ("en",), 1)
    en = root / "en"
    (en / "corrupt.wav").write_bytes(b"RIFF0000WAVEfmt this is no audio at all" * 4)
    (en / "empty.wav").write_bytes(b"")
    write_tone(en / "silent.wav", amplitude=0.0005)
    write_tone(en / "stereo.wav", 330, 1.0, 44100, 2)  # converted and kept
    write_tone(en / "long.wav", 250, 31.0, 8000)  # longer than 30 s: kept
    write_tone(en / "notext.wav")
    write_tone(en / "emptytext.wav", 500)
    write_tone(en / "inaudible.wav", 550)
    for name, text in [("corrupt", "a"), ("empty", "b"), ("silent", "c"), ("stereo", "stereo clip"),
                       ("long", "long clip"), ("emptytext", "  \n"),
                       ("inaudible", "[inaudible] ...")]:  # fmt: skip
        (en / f"{name}.txt").write_text(text)
    return {"corrupt.wav": "unreadable or corrupt audio", "empty.wav": "zero-length audio",
            "silent.wav": "silent clip", "notext.wav": "transcript notext.txt is missing",
            "emptytext.txt": "empty transcript",
            "inaudible.wav": "transcript '[inaudible] ...' has no words once normalized"}  # fmt: skip


def bad_manifest(root: Path) -> Path:
    """A JSONL manifest with an unknown language code, a duplicate id and an empty transcript."""
    write_tone(root / "m" / "x.wav", 300)
    write_tone(root / "m" / "y.wav", 350)
    rows = [{"audio": "x.wav", "text": "first manifest clip", "language": "en", "id": "dup"},
            {"audio": "y.wav", "text": "second manifest clip", "language": "en", "id": "dup"},
            {"audio": "x.wav", "text": "klingon clip", "language": "xx"},
            {"audio": "y.wav", "text": "", "language": "en"}]  # fmt: skip
    path = root / "m" / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_skip_logs_and_counts_every_bad_input(tmp_path):
    causes = bad_corpus(tmp_path / "rec")
    manifest = bad_manifest(tmp_path)
    p = params(f"local:{tmp_path / 'rec'}", ("en",), calib=1, evals=3)
    p["sources"][f"local:{manifest}"] = ["en"]
    (tmp_path / "empty").mkdir()
    p["sources"][f"local:{tmp_path / 'empty'}"] = ["en"]
    summary = run_build(tmp_path, p)
    skipped = [s["cause"] for s in summary["skipped"]["items"]]
    for name, cause in causes.items():
        assert any(name in s and cause in s for s in skipped), (name, skipped)
    assert any("duplicate id 'dup'" in s for s in skipped)
    assert any("language 'xx' is not one Whisper knows" in s for s in skipped)
    assert any(f"{manifest}:4: empty or missing transcript" in s for s in skipped)
    assert any(f"{tmp_path / 'empty'}: no audio files in the folder" in s for s in skipped)
    assert summary["skipped"]["count"] == len(skipped) == len(causes) + 4
    splits = [read_manifest(tmp_path / "out" / split) for split in ("eval", "calibration")]
    assert [len(clips) for clips in splits] == [3, 1]
    kept = {Path(c.source).name: c for clips in splits for c in clips}
    assert set(kept) == {"clip00.wav", "stereo.wav", "long.wav", "x.wav"}
    assert kept["long.wav"].duration == pytest.approx(31.0, abs=0.01)
    assert kept["stereo.wav"].duration == pytest.approx(1.0, abs=0.01)


def test_a_mistyped_or_empty_source_stops_before_any_clip_is_decoded(tmp_path, monkeypatch):
    """Regression: a mistyped local: path was a warning (exit 0, the language silently lost its clips
    whatever on_error said); a language with no usable source failed only after every earlier
    language's clips were decoded or synthesized (minutes each with a cold cache)."""
    good = make_corpus(tmp_path / "good", ("de",), 4)
    run_build(tmp_path, params(f"local:{good}", ("de",), calib=1, evals=2))
    before = outputs(tmp_path / "out")
    decoded = []
    monkeypatch.setattr(audio_build, "_decode", lambda item: decoded.append(item) or item.load())
    typo = params(f"local:{good}", ("de",), calib=1, evals=2)
    typo["sources"]["local:recordigs/"] = ["de"]
    with pytest.raises(
        ParamError, match=r"^params.yaml: audio.sources: local:recordigs/: not found \(looked in"
    ):
        run_build(tmp_path, typo)
    with pytest.raises(ParamError, match=r"^/tmp/p.yaml: audio.sources: local:recordigs/: not found"):
        build(parse_params(typo), tmp_path / "c", tmp_path / "e", tmp_path / "s.json", "/tmp/p.yaml")
    (tmp_path / "empty").mkdir()
    no_en = params(f"local:{good}", ("de", "en"), calib=1, evals=2)
    no_en["sources"] = {f"local:{good}": ["de"], f"local:{tmp_path / 'empty'}": ["en"]}
    with pytest.raises(
        AudioInputError, match="no candidate clip for en: every source of it was skipped or empty"
    ):
        run_build(tmp_path, no_en)
    assert decoded == [] and outputs(tmp_path / "out") == before


def test_the_decoding_threads_serve_every_language_and_split(tmp_path, monkeypatch):
    """Regression: a pool per language and split started new threads each time, and each thread loads
    its own Kokoro session: 6 session loads for 4 clips with a cold cache."""
    rec = make_corpus(tmp_path / "rec", ("en", "de", "fr"), 4)
    threads = []
    local = threading.local()

    def decode(item):
        if not hasattr(local, "seen"):  # a new thread: it would load a new Kokoro session
            local.seen = threads.append(threading.current_thread().name)
        return item.load()

    monkeypatch.setattr(audio_build, "_decode", decode)
    run_build(tmp_path, params(f"local:{rec}", ("en", "de", "fr"), calib=2, evals=2, workers=2))
    assert 1 <= len(threads) <= 2, threads


def test_one_recording_under_two_transcripts_goes_in_one_split(tmp_path):
    """Regression: splits were kept apart by text only; a copied file with an edited transcript could
    be evaluated on the very audio it was calibrated on."""
    rec = make_corpus(tmp_path / "rec", ("en",), 3)
    for i in range(3):
        (rec / "en" / f"copy{i}.wav").write_bytes((rec / "en" / f"clip{i:02d}.wav").read_bytes())
        (rec / "en" / f"copy{i}.txt").write_text(f"another transcript {i} of the same recording")
    for seed in range(4):
        run_build(tmp_path, params(f"local:{rec}", ("en",), calib=3, evals=2, seed=seed))
        clips = [c for s in ("calibration", "eval") for c in read_manifest(tmp_path / "out" / s)]
        assert len(clips) == 3 and len({c.sha256 for c in clips}) == 3, seed


@pytest.mark.parametrize(
    "case", ["corrupt.wav", "empty.wav", "silent.wav", "notext.wav", "emptytext.txt", "inaudible.wav"]
)
def test_fail_stops_with_the_message_and_keeps_earlier_outputs(tmp_path, case):
    good = tmp_path / "good"
    make_corpus(good, ("en",), 3)
    p = params(f"local:{good}", ("en",), calib=1, evals=2)
    run_build(tmp_path, p)
    before = {f: f.read_bytes() for f in (tmp_path / "out").rglob("*") if f.is_file()}
    causes = bad_corpus(tmp_path / "rec")
    only = tmp_path / "only" / "en"
    only.mkdir(parents=True)
    stem = Path(case).stem
    for f in (tmp_path / "rec" / "en").glob(f"{stem}.*"):
        (only / f.name).write_bytes(f.read_bytes())
    p = params(f"local:{only.parent}", ("en",), calib=1, evals=2, on_error="fail")
    with pytest.raises(AudioInputError, match=re.escape(causes[case])) as err:
        run_build(tmp_path, p)
    assert case in str(err.value)
    assert {f: f.read_bytes() for f in (tmp_path / "out").rglob("*") if f.is_file()} == before


@pytest.mark.parametrize(
    ("rows", "message"),
    [([{"audio": "x.wav", "text": "one", "language": "en", "id": "dup"},
       {"audio": "y.wav", "text": "two", "language": "en", "id": "dup"}], "duplicate id 'dup'"),
     ([{"audio": "x.wav", "text": "klingon clip", "language": "xx"}], "'xx' is not one Whisper"),
     ([{"audio": "x.wav", "language": "en"}], r"manifest.jsonl:1: empty or missing transcript"),
     ([{"audio": "x.wav", "text": "one", "language": "en", "id": "../../escaped"}],
      r"id '../../escaped' cannot be a file name")],
)  # fmt: skip
def test_manifest_problems_fail_with_the_cause(tmp_path, rows, message):
    write_tone(tmp_path / "x.wav", 300)
    write_tone(tmp_path / "y.wav", 350)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = params(f"local:{manifest}", ("en",), calib=1, evals=5, on_error="fail")
    with pytest.raises(AudioInputError, match=message):
        run_build(tmp_path, p)


def outputs(root: Path) -> dict[Path, bytes]:
    return {f: f.read_bytes() for f in root.rglob("*") if f.is_file()}


def test_a_refused_output_replaces_none_of_the_outputs(tmp_path):
    """Regression: eval was replaced before the refused calibration folder was checked; a folder at
    --summary failed with a traceback after both splits were replaced."""
    good = make_corpus(tmp_path / "good", ("en",), 4)
    run_build(tmp_path, params(f"local:{good}", ("en",), calib=1, evals=2))
    (tmp_path / "out" / "calibration" / "mine.txt").write_text("not an output")
    before = outputs(tmp_path / "out")
    changed = params(f"local:{good}", ("en",), calib=1, evals=3)  # another eval split
    with pytest.raises(OutputConflictError, match=r"calibration: holds mine\.txt"):
        run_build(tmp_path, changed)
    assert outputs(tmp_path / "out") == before
    (tmp_path / "out" / "calibration" / "mine.txt").unlink()
    before = outputs(tmp_path / "out")
    o = tmp_path / "out"
    with pytest.raises(OutputConflictError, match=r"eval: is a folder, not a file") as err:
        build(parse_params(changed), o / "calibration", o / "summary.json", o / "eval")
    assert "\n" not in str(err.value)
    assert outputs(tmp_path / "out") == before
    # one split given twice, or inside the other: calibration would be lost to the eval clips
    overlapping = [("split", "split", "s.json"), ("c", "c/eval", "s.json"), ("c", "e", "c/s.json")]
    for calib, evals, summary in overlapping:
        with pytest.raises(OutputConflictError, match="overlapping outputs; give each its own path"):
            build(parse_params(changed), o / calib, o / evals, o / summary)
    assert outputs(tmp_path / "out") == before


def test_a_summary_that_fails_to_write_replaces_no_split(tmp_path, monkeypatch):
    """Regression (a review): the summary was written after both splits were replaced, so a full disk
    (or Ctrl+C) there left the new splits beside the last build's summary, which counted other clips."""
    import errno

    from whisper_int8 import fsutil

    good = make_corpus(tmp_path / "good", ("en",), 6)
    run_build(tmp_path, params(f"local:{good}", ("en",), calib=1, evals=2))
    before = outputs(tmp_path / "out")

    def disk_full(obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil, "json_text", disk_full)  # the summary's JSON, wherever it is written
    monkeypatch.setattr(audio_build, "json_text", disk_full, raising=False)
    with pytest.raises(OSError, match="No space left"):
        run_build(tmp_path, params(f"local:{good}", ("en",), calib=1, evals=4))
    assert outputs(tmp_path / "out") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["calibration", "eval", "summary.json"]


def test_a_relative_cache_dir_is_the_repositorys(tmp_path, monkeypatch):
    """Regression: under dvc exp run --temp (stages run in a copy) the cache was a new empty folder."""
    monkeypatch.delenv("WHISPER_INT8_CACHE", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    monkeypatch.chdir(tmp_path)
    p = params("local:x", ("en",))
    assert parse_params(p).cache_dir == (tmp_path / "repo" / "cache").resolve()
    assert parse_params({**p, "cache_dir": "c/d"}).cache_dir == (tmp_path / "repo" / "c" / "d").resolve()
    assert parse_params({**p, "cache_dir": str(tmp_path / "abs")}).cache_dir == tmp_path / "abs"
    monkeypatch.setenv("WHISPER_INT8_CACHE", "env")
    assert parse_params({**p, "cache_dir": "c"}).cache_dir == tmp_path / "env"


def test_a_file_in_an_unlisted_language_is_counted_once_and_stops_a_failing_build(tmp_path):
    corpus = make_corpus(tmp_path / "rec", ("en", "de", "am"), 3)
    p = params(f"local:{corpus}", calib=1, evals=2)  # lists en and de
    summary = run_build(tmp_path, p)
    causes = [s["cause"] for s in summary["skipped"]["items"]]
    assert len(causes) == 3 and all("language am (from its folder) is not listed" in c for c in causes)
    assert summary["skipped"]["by_language"] == {"am": 3}
    with pytest.raises(AudioInputError, match=r"clip00\.wav: language am \(from its folder\) is not"):
        run_build(tmp_path, {**p, "on_error": "fail"})


def test_an_empty_local_source_is_counted_once(tmp_path):
    corpus = make_corpus(tmp_path / "rec", ("en", "de"), 3)
    p = params(f"local:{corpus}", calib=1, evals=2)
    (tmp_path / "empty").mkdir()
    p["sources"][f"local:{tmp_path / 'empty'}"] = ["en", "de"]
    summary = run_build(tmp_path, p)
    (cause,) = [s["cause"] for s in summary["skipped"]["items"]]
    assert cause.startswith(f"{tmp_path / 'empty'}: no audio files in the folder")


def write_manifest(root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """``root/manifest.jsonl`` with one tone per ``(language, id, text)`` row."""
    for n in range(len(rows)):
        write_tone(root / f"{n}.wav", 200 + 50 * n)
    lines = [json.dumps({"audio": f"{n}.wav", "language": lang, "id": item_id, "text": text}) + "\n"
             for n, (lang, item_id, text) in enumerate(rows)]  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(lines))
    return root / "manifest.jsonl"


@pytest.mark.parametrize("seed", range(4))
def test_a_text_in_two_languages_is_used_once(tmp_path, seed):
    """Regression: the same text chosen in two languages for different splits crashed the build."""
    rows = [("en", "en-a", "M I S D N"), ("en", "en-b", "english only"),
            ("de", "de-a", "M I S D N"), ("de", "de-b", "nur deutsch")]  # fmt: skip
    manifest = write_manifest(tmp_path, rows)
    run_build(tmp_path, {**params(f"local:{manifest}", calib=1, evals=1), "seed": seed})
    texts = [c.text for s in ("calibration", "eval") for c in read_manifest(tmp_path / "out" / s)]
    assert texts.count("M I S D N") == 1 and len(texts) == 3


def test_no_calibration_count_changes_another_languages_evaluation_set(tmp_path):
    """Regression: a text shared by two languages and taken by the first one's calibration clips was
    missing from the second one's evaluation order, so raising calib_per_lang changed that set."""
    rows = [(lang, f"{lang}-{i}", "M I S D N" if i == 0 else f"{lang} text {i}") for lang in ("en", "de")
            for i in range(4)]  # fmt: skip
    manifest = write_manifest(tmp_path, rows)
    # A seed where de's evaluation takes the shared text: en, with all four texts wanted, would have
    # taken it for calibration first.
    exercised = False
    for seed in range(8):
        out = {}
        for calib in (1, 3):
            run_build(tmp_path, {**params(f"local:{manifest}", calib=calib, evals=1), "seed": seed}, "o")
            out[calib] = {s: read_manifest(tmp_path / "o" / s) for s in ("eval", "calibration")}
        assert out[1]["eval"] == out[3]["eval"], seed
        exercised |= any(c.id == "de-0" for c in out[3]["eval"])
    assert exercised


def test_a_language_without_evaluation_clips_stops_the_build(tmp_path):
    good = make_corpus(tmp_path / "good", ("en",), 3)
    p = params(f"local:{good}", ("en",), calib=1, evals=2)
    run_build(tmp_path, p)
    before = {f: f.read_bytes() for f in (tmp_path / "out").rglob("*") if f.is_file()}
    (tmp_path / "bad" / "de").mkdir(parents=True)
    (tmp_path / "bad" / "de" / "x.wav").write_bytes(b"RIFF0000WAVEfmt no audio")
    (tmp_path / "bad" / "de" / "x.txt").write_text("ein satz")
    p = {
        **p,
        "languages": ["en", "de"],
        "sources": {f"local:{good}": ["en"], f"local:{tmp_path / 'bad'}": ["de"]},
    }
    cause = r"audio.languages: no evaluation clip for de \(1 candidate texts\): each candidate was skipped"
    with pytest.raises(AudioInputError, match=cause):
        run_build(tmp_path, p)
    assert {f: f.read_bytes() for f in (tmp_path / "out").rglob("*") if f.is_file()} == before


def test_a_text_or_recording_in_both_splits_is_an_error_naming_it():
    def item(item_id: str, text: str, pcm: list[int]) -> tuple:
        return (audio_build.Item(item_id, "en", text, "test", "test", lambda: None), np.array(pcm, "<i2"))

    chosen = {"calibration": [item("en-1", "Hello, world", [1])], "eval": [item("de-1", "hello world", [2])]}
    with pytest.raises(RuntimeError, match=r"the text of de-1 selected for both splits \(en-1 in calib"):
        audio_build._check_disjoint(chosen)
    chosen = {"calibration": [item("en-1", "Hello", [1, 2])], "eval": [item("de-1", "world", [1, 2])]}
    with pytest.raises(RuntimeError, match=r"the audio of de-1 selected for both splits \(en-1 in calib"):
        audio_build._check_disjoint(chosen)


def test_an_id_in_two_languages_is_a_duplicate(tmp_path):
    """Regression: one id in two languages wrote both clips to one WAV file."""
    rows = [("en", "same", "an english clip"), ("de", "same", "ein deutscher"), ("de", "own", "noch einer")]
    manifest = write_manifest(tmp_path, [*rows, ("en", "spare", "a spare english clip")])
    summary = run_build(tmp_path, params(f"local:{manifest}", calib=1, evals=1))
    clips = {c.id: c for split in ("eval", "calibration") for c in read_manifest(tmp_path / "out" / split)}
    assert sorted(clips) == ["own", "same", "spare"] and clips["same"].language == "en"
    (skipped,) = summary["skipped"]["items"]
    assert skipped["language"] == "de" and "duplicate id 'same'" in skipped["cause"]
    assert skipped["cause"].endswith("drop the repeated row, or give ids)")
    with pytest.raises(AudioInputError, match="duplicate id 'same'"):
        run_build(tmp_path, params(f"local:{manifest}", calib=1, evals=1, on_error="fail"))


def test_an_id_that_is_a_path_writes_nothing_outside_the_split(tmp_path):
    """And one too long to be a file name (ENAMETOOLONG crashed the build after every clip was decoded)."""
    long = "x" * 238
    rows = [
        ("en", "../../escaped", "one clip"),
        ("en", "ok", "two"),
        ("en", "cal", "three"),
        ("en", long, "four"),
    ]
    manifest = write_manifest(tmp_path / "m", rows)
    summary = run_build(tmp_path, params(f"local:{manifest}", ("en",), calib=1, evals=1))
    kept = [c.id for split in ("eval", "calibration") for c in read_manifest(tmp_path / "out" / split)]
    assert sorted(kept) == ["cal", "ok"]
    causes = [item["cause"] for item in summary["skipped"]["items"]]
    assert "id '../../escaped' cannot be a file name" in causes[0]
    assert "is 238 bytes; at most 237 (it names the clip's file)" in causes[1]
    assert not list(tmp_path.rglob("escaped*"))


@pytest.mark.parametrize(("languages", "config"), [(["nl"], "nl"), ({"nl": "nl_nl"}, "nl_nl")])
def test_hf_config_is_the_mapped_one_or_the_language_code(monkeypatch, languages, config):
    seen = []
    monkeypatch.setattr(audio_build.hf, "items", lambda dataset, lang, cfg, cache: seen.append(cfg) or [])
    p = parse_params({**params("local:x", ("nl",)), "sources": {"hf:google/fleurs": languages}})
    audio_build._source_items("hf:google/fleurs", "nl", p)
    assert seen == [config]


def test_unfetchable_debian_package(tmp_path):
    with pytest.raises(AudioInputError, match="asterisk-core-sounds-zz: cannot fetch the Debian package"):
        ensure_package("asterisk-core-sounds-zz", tmp_path)
    assert not any((tmp_path / "debian").glob("asterisk-core-sounds-zz*"))


@pytest.mark.parametrize("missing", ["datasets", "network"])
def test_hf_source_fails_fast_and_clearly(tmp_path, monkeypatch, missing):
    """Without the optional `datasets` package, or offline: skipped with the cause, never a download."""
    from whisper_int8.audio import hf

    if missing == "datasets":
        monkeypatch.setitem(sys.modules, "datasets", None)  # None: `import datasets` raises ImportError
    else:  # installed (a stand-in: nothing of it is used before the check), and offline
        monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
        monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_ENDPOINT", raising=False)
        monkeypatch.setattr(hf, "unreachable", lambda host, timeout_s, **_: OSError(f"{host}: no route"))
    make_corpus(tmp_path / "rec", ("en",), 2)
    p = params(f"local:{tmp_path / 'rec'}", ("en",), calib=1, evals=1)
    p["sources"]["hf:google/fleurs"] = {"en": "en_us"}
    summary = run_build(tmp_path, p)
    (cause,) = [s["cause"] for s in summary["skipped"]["items"]]
    assert cause.startswith("hf:google/fleurs:")
    assert ("pip install" in cause) if missing == "datasets" else ("cannot reach huggingface.co" in cause)
    with pytest.raises(AudioInputError, match="hf:google/fleurs"):
        run_build(tmp_path, {**p, "on_error": "fail"})


@pytest.mark.parametrize(
    ("change", "message"),
    [({"languages": ["en", "xx"]}, "xx not a language Whisper knows"),
     ({"languages": ["en", "fr"]}, "audio.languages fr have no source"),
     ({"on_error": "ignore"}, "audio.on_error must be 'skip' or 'fail'"),
     ({"eval_per_lang": -1}, r"audio.eval_per_lang must be an integer >= 1, got -1"),
     ({"workers": 0}, r"audio.workers must be an integer >= 1, got 0"),
     ({"sources": {"ftp:x": ["en"]}}, "unknown source 'ftp:x'"),
     ({"asterisk_codec": "mp3"}, "audio.asterisk_codec must be one of"),
     ({"languages": yaml.safe_load("[en, no]")}, r"audio.languages: False is not a .* quote it, 'no'"),
     ({"sources": {"local:x": yaml.safe_load("[en, no]")}}, r"audio.sources.local:x: False .* 'no'"),
     ({"languages": ["en", "en"]}, "audio.languages: en listed more than once"),
     ({"sources": {"local:x": ["en", "en"]}}, "audio.sources.local:x: en listed more than once"),
     ({"min_words": 30, "max_words": 25}, r"audio.min_words \(30\) is above audio.max_words \(25\)"),
     ({"sources": {"asterisk": ["en", "de"]}}, r"sources.asterisk: de not in this source \(it has en, es"),
     ({"sources": {"kokoro": ["en"]}}, r"audio.sources.kokoro: en not in this source .* another source")],
)  # fmt: skip
def test_bad_params_name_the_key(change, message):
    with pytest.raises(ParamError, match=message):
        parse_params({**params("local:x", ("en",)), **change})


ALLOWED = ("asterisk_codec, cache_dir, calib_per_lang, eval_per_lang, languages, max_words, min_words, "
           "on_error, seed, sources, tts_threads, workers")  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [({"asterisk_codecs": "wav"}, f"unknown audio key(s) ['asterisk_codecs']; allowed: {ALLOWED}"),
     ({"eval_per_lang": 0}, "audio.eval_per_lang must be an integer >= 1, got 0"),
     ({"calib_per_lang": 0}, "audio.calib_per_lang must be an integer >= 1, got 0"),
     ({"calib_per_lang": "5"}, "audio.calib_per_lang must be an integer >= 1, got '5'"),
     ({"seed": 1.5}, "audio.seed must be a non-negative integer, got 1.5"),
     ({"max_words": True}, "audio.max_words must be a non-negative integer, got True"),
     ({"tts_threads": -1}, "audio.tts_threads must be a non-negative integer, got -1"),
     ({"cache_dir": 5}, "audio.cache_dir must be a folder path (text, e.g. cache), got 5"),
     ({"cache_dir": ["cache"]}, "audio.cache_dir must be a folder path (text, e.g. cache), got ['cache']"),
     ({"languages": [["en"]]}, "audio.languages: ['en'] is not a language code; list codes such as en, de"),
     ({"languages": [1]}, "audio.languages: 1 is not a language code"),
     ({"sources": {"local:x": [["en"]]}}, "audio.sources.local:x: ['en'] is not a language code"),
     ({"sources": {"local:": ["en"]}}, "audio.sources: 'local:' needs a path (a csv, jsonl or folder)"),
     ({"sources": {"local: ": ["en"]}}, "audio.sources: 'local: ' needs a path (a csv, jsonl or folder)"),
     ({"sources": {"local": ["en"]}}, "audio.sources: 'local' needs a path (a csv, jsonl or folder)"),
     ({"sources": {"hf:": ["en"]}}, "audio.sources: 'hf:' needs a dataset name, e.g. hf:google/fleurs"),
     ({"sources": {"hf": {"en": "en_us"}}}, "audio.sources: 'hf' needs a dataset name"),
     ({"sources": {"asterisk:g722": ["en"]}}, "audio.sources: 'asterisk:g722': asterisk takes no argument"),
     ({"sources": {"kokoro:": ["en"]}}, "audio.sources: 'kokoro:': kokoro takes no argument; write kokoro"),
     ({"sources": {5: ["en"]}}, "audio.sources: unknown source 5"),
     ({"sources": {"asterisk": {"en": "x"}}}, "audio.sources.asterisk must list the languages to take"),
     ({"sources": {"hf:x": {"en": ["en_us"]}}}, "audio.sources.hf:x: ['en_us'] is not a dataset config"),
     ({"sources": {"hf:x": {1: "en_us"}}}, "audio.sources.hf:x: 1 is not a language code")],
)  # fmt: skip
def test_bad_params_are_one_line_naming_the_file_and_key(change, message):
    """Regression: unknown keys were ignored, 0 clips accepted, a wrong type was a TypeError traceback
    and an empty local: path scanned the current folder."""
    with pytest.raises(ParamError) as err:
        parse_params({**params("local:x", ("en",)), **change}, "/tmp/p.yaml")
    assert str(err.value).startswith(f"/tmp/p.yaml: {message}") and "\n" not in str(err.value)


def test_the_default_params_are_valid():
    parse_params(section(load_params(REPO / "params.yaml"), "audio"))


def test_no_calibration_clip_in_any_language_stops_the_build(tmp_path):
    """Every candidate went to the evaluation split: stop in fetch_audio, naming the key, not in calibrate
    (and the outputs written before stay as they were)."""
    make_corpus(tmp_path / "rec", ("en",), 2)
    p = params(f"local:{tmp_path / 'rec'}", ("en",), calib=1, evals=1)
    run_build(tmp_path, p)
    before = {f: f.read_bytes() for f in (tmp_path / "out").rglob("*") if f.is_file()}
    with pytest.raises(AudioInputError, match="audio.calib_per_lang: no calibration clip in any language"):
        run_build(tmp_path, {**p, "eval_per_lang": 2})
    assert {f: f.read_bytes() for f in (tmp_path / "out").rglob("*") if f.is_file()} == before


def test_processes_sharing_the_cache_fetch_a_package_once(tmp_path, monkeypatch):
    """A second process (parallel `dvc exp run` jobs, test workers) waits for the first one's fetch
    and reads its copy, instead of downloading again and replacing it under the first one's readers."""
    import fcntl

    from whisper_int8.audio import asterisk

    package = "asterisk-core-sounds-zz"
    fetched = []
    monkeypatch.setattr(asterisk, "_fetch", lambda name, root: fetched.append(name))
    monkeypatch.setattr(asterisk.shutil, "which", lambda tool: f"/usr/bin/{tool}")  # apt-get, dpkg-deb
    (tmp_path / "debian").mkdir()
    found: list = []

    def second_process() -> None:
        try:
            found.append(ensure_package(package, tmp_path))
        except Exception as e:  # shown by the assertion below, not lost in the thread
            found.append(e)

    with open(tmp_path / "debian" / f".{package}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first process, fetching
        waiter = threading.Thread(target=second_process)
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not found  # waits for the lock
        root = tmp_path / "debian" / package
        root.mkdir()
        (root / ".complete").write_text("asterisk-core-sounds-zz_1.0_all.deb\n")
    waiter.join(timeout=10)
    assert found == [root] and fetched == []  # the first one's copy, no second download


def test_the_same_text_written_in_nfd_or_with_spaces_between_cjk_characters_is_one_text():
    """Regression (a review): a sentence saved once in NFC and once in NFD (macOS), or Chinese with
    and without spaces between words, went to both splits (an evaluation text seen in calibration)."""
    import unicodedata

    key = audio_build._text_key
    assert key("Ça coûte combien ?") == key(unicodedata.normalize("NFD", "ça coûte combien"))
    assert key("我们明天见面。") == key("我们 明天 见面") and key("ice cream") != key("icecream")
    assert key("아버지가 방에 들어가신다") != key("아버지 가방에 들어가신다")  # Korean has spaces


@pytest.mark.parametrize("seed", range(3))
def test_two_takes_of_a_sentence_that_score_as_one_text_go_in_one_split(tmp_path, seed):
    """Regression (a review): transcripts that differ in an accent or a parenthesized note only were two
    texts, so one speaker's two takes of a sentence could be in both splits (Asterisk fr conf-lockednow
    "verouillée" in eval, confbridge-locked "vérouillée" in calibration with seed 126)."""
    rows = [("fr", "fr-a", "Cette conférence est maintenant verouillée."),
            ("fr", "fr-b", "Cette conférence est maintenant vérouillée."),
            ("fr", "fr-c", "Cette conférence est maintenant (emphase) verouillée"),
            ("fr", "fr-d", "Un autre texte, pour la calibration.")]  # fmt: skip
    manifest = write_manifest(tmp_path, rows)
    run_build(tmp_path, {**params(f"local:{manifest}", ("fr",), calib=3, evals=1), "seed": seed})
    ids = [c.id for s in ("calibration", "eval") for c in read_manifest(tmp_path / "out" / s)]
    assert len(ids) == 2 and "fr-d" in ids, ids


def test_a_clip_too_short_for_speech_is_a_bad_item_as_serving_refuses_it(tmp_path):
    """Regression: a 1-sample or 2.5 ms clip (a recording cut off at its start) went into the splits
    (evaluated, and calibrated on), though transcribe and the server refuse clips under 10 ms."""
    root = make_corpus(tmp_path / "rec", ("en",), 2)
    for name, n in (("one", 1), ("few", 40)):
        (root / "en" / f"{name}.wav").write_bytes(wav_bytes(np.full(n, 20000, np.int16)))
        (root / "en" / f"{name}.txt").write_text(f"a clip of {name} samples")
    summary = run_build(tmp_path, params(f"local:{root}", ("en",), calib=3, evals=1))
    causes = sorted(s["cause"] for s in summary["skipped"]["items"])
    assert [c.split(": ", 1)[0] for c in causes] == [str(root / "en" / f) for f in ("few.wav", "one.wav")]
    assert all("too short for speech (at least 10 ms)" in c for c in causes)
    clips = [c for split in ("eval", "calibration") for c in read_manifest(tmp_path / "out" / split)]
    assert sorted(Path(c.source).name for c in clips) == ["clip00.wav", "clip01.wav"]


def test_no_ffmpeg_stops_the_build_with_its_fix_not_a_skip_per_clip(tmp_path, monkeypatch):
    """Regression: with on_error: skip, a missing ffmpeg was one skipped item per clip (Kokoro
    synthesized each sentence first), then "no evaluation clip ... add a source for each"."""
    monkeypatch.setattr(wavio.shutil, "which", lambda name: None)
    p = params(f"local:{make_corpus(tmp_path / 'rec', ('en',), 3)}", ("en",), calib=1, evals=1)
    with pytest.raises(FfmpegMissingError, match="ffmpeg not found on PATH; install it"):
        run_build(tmp_path, p)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("language", "code"), [("english", "en"), ("Dutch", "nl"), ("jv", "jw"), ("iw", "he"), ("zh-CN", "zh"),
                           ("pt_BR", "pt")],
)  # fmt: skip
def test_a_language_spelled_another_way_is_refused_with_the_code_to_write(language, code):
    """Regression (a review): "english", "jv" or "zh-CN" in audio.languages was only "not a language
    Whisper knows" (Whisper knows Javanese, as jw), though the manifests take these forms; the
    refusal now says which code to write."""
    p = {**params("x", ("en",)), "languages": ["en", language]}
    hint = rf"audio.languages: {language} not a .*\(write {code} for {language}\)$"
    with pytest.raises(ParamError, match=hint):
        parse_params(p)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_a_transcript_with_a_unicode_line_separator_reads_back(tmp_path, separator):
    """Regression (a review): json.dumps(ensure_ascii=False) writes U+2028, U+2029 and U+0085 (text
    pasted from a web page or Word, a cp1252 "..." decoded as Latin-1) unescaped, and read_manifest
    split lines with splitlines(), which breaks at them: fetch_audio wrote a split that calibrate and
    evaluate refused as "not valid JSON"."""
    make_corpus(tmp_path / "rec", langs=("en",), n=2)
    (tmp_path / "rec" / "en" / "clip00.txt").write_text(f"first line{separator}and the second\n")
    run_build(tmp_path, params(f"local:{tmp_path / 'rec'}", ("en",), calib=1, evals=1, on_error="fail"))
    texts = [c.text for split in ("calibration", "eval") for c in read_manifest(tmp_path / "out" / split)]
    assert f"first line{separator}and the second" in texts
