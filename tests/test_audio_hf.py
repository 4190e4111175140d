"""hf: sources read through the real ``datasets`` library, from local folders (no network here)."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.test_audio_wavio import write_tone
from whisper_int8.audio import hf
from whisper_int8.audio.errors import AudioInputError
from whisper_int8.audio.manifest import ID_RE

pytest.importorskip("datasets")  # the [hf] extra; in dev too, so CI runs these


def write_parquet(path: Path, clips: list[Path], texts: list[str]) -> None:
    """A split as the Hub's parquet export holds it: audio as {bytes, path}. The first clip's bytes
    are in the file; the others only by path, the other form ``datasets`` gives."""
    audio = [{"bytes": clips[0].read_bytes(), "path": clips[0].name}]
    audio += [{"bytes": None, "path": str(c)} for c in clips[1:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"audio": audio, "raw_transcription": texts}), path)


@pytest.fixture
def no_network(monkeypatch):
    """A local folder must not ask for huggingface.co."""

    def refuse(host: str, timeout_s: float, port: int = 443, scheme: str = "https") -> OSError:
        raise AssertionError(f"{host} checked for a local dataset")

    monkeypatch.setattr(hf, "unreachable", refuse)
    for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(flag, raising=False)


def test_a_local_snapshot_is_read_without_network_and_ffmpeg_decodes_both_audio_forms(
    tmp_path, monkeypatch, no_network
):
    """Regression: a local folder was checked against huggingface.co (offline: refused unless
    HF_DATASETS_OFFLINE was set). Ids name the dataset as configured: two datasets of one language
    gave nl-hf-000000 twice."""
    clips = [write_tone(tmp_path / "a.wav", rate=8000), write_tone(tmp_path / "b.wav", seconds=0.5)]
    snapshot = tmp_path / "google" / "fleurs" / "nl_nl"
    write_parquet(snapshot / "test" / "0000.parquet", clips, ["hallo", "wereld"])
    write_parquet(snapshot / "train" / "0000.parquet", clips[:1], ["nee"])
    monkeypatch.chdir(tmp_path)
    items = hf.items("google/fleurs", "nl", "nl_nl", tmp_path / "cache")
    assert [it.id for it in items] == ["nl-hf-google-fleurs-000000", "nl-hf-google-fleurs-000001"]
    assert all(ID_RE.fullmatch(it.id) for it in items)
    assert [it.text for it in items] == ["hallo", "wereld"]  # the test split only
    assert [len(it.load()) for it in items] == [16000, 8000]  # 16 kHz mono from bytes and from a path


def test_a_local_folder_takes_the_configs_its_readme_declares(tmp_path, no_network):
    """Regression (a review of the folder rule): a downloaded parquet-native dataset whose README
    declares its configs was read as if each config were a subfolder."""
    clips = [write_tone(tmp_path / "a.wav")]
    write_parquet(tmp_path / "ds" / "data" / "nl" / "test.parquet", clips, ["hallo"])
    (tmp_path / "ds" / "README.md").write_text(
        "---\nconfigs:\n- config_name: nl_nl\n  data_files:\n"
        "  - split: test\n    path: data/nl/*.parquet\n---\n"
    )
    (item,) = hf.items(str(tmp_path / "ds"), "nl", "nl_nl", tmp_path / "cache")
    assert item.text == "hallo"


def test_a_dataset_with_a_loading_script_is_read_from_its_parquet_export(tmp_path, monkeypatch):
    """Regression: datasets 4 refuses loading scripts, so hf:google/fleurs (which ships fleurs.py)
    could not be read at all. A folder holding a script stands in for the Hub dataset (datasets
    raises the same error); the export's Hub address is replaced by a local folder of that layout."""
    import datasets

    (tmp_path / "fleurs").mkdir()
    (tmp_path / "fleurs" / "fleurs.py").write_text("# a loading script\n")
    clips = [write_tone(tmp_path / "a.wav")]
    write_parquet(tmp_path / "export" / "de_de" / "test" / "0000.parquet", clips, ["guten Tag"])
    monkeypatch.setattr(hf, "PARQUET_EXPORT", str(tmp_path / "export" / "{config}" / "{split}" / "*.parquet"))
    cache = str(tmp_path / "cache")
    ds = hf._load_hub(datasets, str(tmp_path / "fleurs"), "de_de", "test", cache)
    assert ds["raw_transcription"][0] == "guten Tag"
    with pytest.raises(AudioInputError, match=r"ships a loading script, .* export .*nl_nl.* cannot be read"):
        hf._load_hub(datasets, str(tmp_path / "fleurs"), "nl_nl", "test", cache)


@pytest.mark.parametrize(
    ("columns", "message"),
    [({"audio": None, "words": ["x"]}, r"needs an 'audio' column and one of .*has \['audio', 'words'\]"),
     (None, r"hf:ds \(missing, test\): cannot load: .*missing")],
)  # fmt: skip
def test_a_dataset_it_cannot_use_is_one_clear_error(tmp_path, monkeypatch, no_network, columns, message):
    clips = [write_tone(tmp_path / "a.wav")]
    write_parquet(tmp_path / "ds" / "test.parquet", clips, ["x"])
    if columns is not None:
        table = pa.table({"audio": [{"bytes": clips[0].read_bytes(), "path": "a.wav"}], "words": ["x"]})
        pq.write_table(table, tmp_path / "ds" / "test.parquet")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AudioInputError, match=message):
        hf.items("ds", "en", None if columns else "missing", tmp_path / "cache")


def test_a_generation_error_names_its_cause(tmp_path, monkeypatch, no_network):
    """Regression: datasets wraps what failed ("install torchcodec" for an audio folder, a bad
    file) as "An error occurred while generating the dataset", and only that was shown."""
    import datasets

    def fail(*args, **kwargs):
        try:
            raise ImportError("To support encoding audio data, please install 'torchcodec'.")
        except ImportError as e:
            raise datasets.exceptions.DatasetGenerationError("An error occurred while generating") from e

    (tmp_path / "ds").mkdir()
    monkeypatch.setattr(datasets, "load_dataset", fail)
    # no config: "(test)", not "(None, test)"
    cause = r"/ds \(test\): cannot load: An error occurred .* \(.*install 'torchcodec'\.\)"
    with pytest.raises(AudioInputError, match=cause):
        hf.items(str(tmp_path / "ds"), "en", None, tmp_path / "cache")


def test_an_hf_folder_feeds_the_splits_like_any_source(tmp_path, monkeypatch, no_network):
    """audio.sources `hf:<folder>: {de: de_de}` end to end: the mapped config is the folder read."""
    from tests.test_audio_build import params, run_build
    from whisper_int8.audio.manifest import read_manifest

    clips = [write_tone(tmp_path / f"{i}.wav", 200 + 40 * i, 0.5 + 0.1 * i) for i in range(3)]
    texts = [f"das ist der satz nummer {i}" for i in range(3)]
    write_parquet(tmp_path / "snap" / "de_de" / "test" / "0000.parquet", clips, texts)
    p = {**params("x", ("de",), calib=1, evals=2, on_error="fail"), "sources": {"hf:snap": {"de": "de_de"}}}
    monkeypatch.chdir(tmp_path)
    run_build(tmp_path, p)
    kept = [c for split in ("calibration", "eval") for c in read_manifest(tmp_path / "out" / split)]
    assert sorted(c.text for c in kept) == texts
    assert {c.source for c in kept} == {f"hf:snap/de_de/test#{i}" for i in range(3)}


@pytest.mark.parametrize("dataset", ["/no/such/fleurs", "./fleurs", "data/hf/fleurs"])
def test_a_missing_folder_is_said_not_fetched_from_the_hub(tmp_path, monkeypatch, no_network, dataset):
    """Regression: hf:<a folder that is not there> was looked up on the Hub; offline the message was
    "cannot reach huggingface.co ... named as hf:<folder>", which is what the user had written."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AudioInputError, match=rf"^hf:{re.escape(dataset)}: folder not found \("):
        hf.items(dataset, "nl", "nl_nl", tmp_path / "cache")


def test_a_relative_path_only_row_is_the_dataset_folders(tmp_path, monkeypatch, no_network):
    """Regression (a review): a row with no bytes and a relative path ("clips/a.wav", as a dataset
    built from local files and saved to parquet holds) was opened against the current directory, so
    it was "not found" unless the stage ran from the folder itself (never under dvc exp run --temp).
    It is the dataset folder's (the config's subfolder first), as a local: manifest's are the
    manifest's; one found nowhere names the row and where it was looked for."""
    ds = tmp_path / "ds"
    write_tone(ds / "clips" / "a.wav")
    audio = [{"bytes": None, "path": "clips/a.wav"}, {"bytes": None, "path": "clips/gone.wav"}]
    pq.write_table(pa.table({"audio": audio, "text": ["hallo", "weg"]}), ds / "test.parquet")
    snap = tmp_path / "snap"  # a folder per config
    write_tone(snap / "clips" / "a.wav")
    write_tone(snap / "nl_nl" / "clips" / "b.wav", seconds=0.5)
    audio = [{"bytes": None, "path": "clips/b.wav"}, {"bytes": None, "path": "clips/a.wav"}]
    (snap / "nl_nl" / "test").mkdir()
    pq.write_table(pa.table({"audio": audio, "text": ["b", "a"]}), snap / "nl_nl" / "test" / "0.parquet")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    found, gone = hf.items(str(ds), "nl", None, tmp_path / "cache")
    assert len(found.load()) == 16000
    unfound = r"#1: audio 'clips/gone.wav' not found \(looked in .*ds, the current directory and the repo"
    with pytest.raises(AudioInputError, match=unfound):
        gone.load()
    in_config, in_folder = hf.items(str(snap), "nl", "nl_nl", tmp_path / "cache")
    assert [len(in_config.load()), len(in_folder.load())] == [8000, 16000]


def test_a_row_without_audio_is_a_bad_item(tmp_path, no_network):
    """Regression (a review): a null audio cell raised AttributeError ('NoneType' ... 'get'), and a
    cell with neither bytes nor path a TypeError: either ended the build, whatever on_error said."""
    audio = [None, {"bytes": None, "path": None}]
    (tmp_path / "ds").mkdir()
    pq.write_table(pa.table({"audio": audio, "text": ["a", "b"]}), tmp_path / "ds" / "test.parquet")
    for item in hf.items(str(tmp_path / "ds"), "en", None, tmp_path / "cache"):
        with pytest.raises(AudioInputError, match=r"/ds/test#\d: no audio \(the row's audio has neither"):
            item.load()
