"""The registered pyfunc: load + predict, the CLI pull/transcribe, and `mlflow models serve` over REST."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from whisper_int8 import cli, registry
from whisper_int8.audio.wavio import wav_bytes
from whisper_int8.model_dir import load_model_dir
from whisper_int8.pyfunc_model import InputError
from whisper_int8.tracking import open_experiment
from whisper_int8.transcribe import load_audio, transcribe_clip

from .conftest import REPO, venv_env
from .eval_fixtures import FAST, client_for, fresh_tracking_uri, speak, tiny_int8_dir
from .test_tracking import free_port

NAME = "whisper-int8-serve"
URI = f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def registered(tmp_path_factory) -> dict:
    """A tiny INT8 model registered as version 1 with the champion alias, and an English clip."""
    root = tmp_path_factory.mktemp("serve")
    int8 = tiny_int8_dir(root / "int8")
    uri = fresh_tracking_uri(root)
    client, exp = open_experiment(uri, "serve", (root / "mlruns").as_uri())
    run_id = client.create_run(exp).info.run_id
    version = registry.register(client, NAME, registry.log_pyfunc(run_id, int8, FAST), key="k")
    client.set_registered_model_alias(NAME, "champion", version.version)
    wav = root / "fox.wav"
    speak("the quick brown fox jumps over the lazy dog", "en", wav)
    expected = transcribe_clip(load_model_dir(int8), wav, "en", **FAST)["text"]
    return {"uri": uri, "int8": int8, "wav": wav, "expected": expected, "root": root, "run_id": run_id}


@pytest.fixture
def tracking(registered, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    mlflow.set_tracking_uri(registered["uri"])
    mlflow.set_registry_uri(registered["uri"])
    return registered


def test_pyfunc_predict_every_input_form(tracking):
    model = mlflow.pyfunc.load_model(URI)
    wav, expected = str(tracking["wav"]), tracking["expected"]
    samples = load_audio(wav)
    assert model.predict({"audio": wav, "language": "en"}) == [expected]
    frame = pd.DataFrame({"audio": [samples.tolist(), wav], "language": ["en", "en"]})
    assert model.predict(frame) == [expected, expected]
    # a dict of samples: MLflow makes it a DataFrame of one row per sample before predict sees it
    assert model.predict({"audio": samples.tolist(), "language": "en"}) == [expected]
    with pytest.raises(InputError, match="^audio file not found: /nonexistent.wav$") as refused:
        model.predict({"audio": "/nonexistent.wav"})
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"  # mlflow models serve: HTTP 400, this text
    # the registered signature documents the records (Unity Catalog, for one, requires a signature)
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["audio", "language", "sample_rate"]
    assert not sig.inputs.inputs[1].required and not sig.inputs.inputs[2].required
    assert [c.type for c in sig.outputs.inputs] == [mlflow.types.DataType.string]


# Imports of a distribution outside the logged environment fail, as in one MLflow builds from the
# model's requirements.txt and constraints.txt (argv: model URI, allowed distributions, a WAV).
ONLY_LOGGED_ENVIRONMENT = r"""
import importlib.abc, importlib.metadata, sys
from packaging.utils import canonicalize_name
allowed = set(sys.argv[2].split(","))
owners = importlib.metadata.packages_distributions()
class Outside(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        dists = {canonicalize_name(d) for d in owners.get(name.partition(".")[0], [])}
        if dists and not dists & allowed:
            raise ModuleNotFoundError(f"No module named {name!r} ({sorted(dists)}: not logged)")
sys.meta_path.insert(0, Outside())
import mlflow
print(mlflow.pyfunc.load_model(sys.argv[1]).predict({"audio": sys.argv[3], "language": "en"}))
"""


def test_the_registered_model_runs_in_the_environment_logged_with_it(tracking):
    """Regression: loading imported jiwer (through evaluate's scoring) while its requirements do not
    list it: in the environment ``mlflow models serve``/``build-docker`` build, no model loaded."""
    from whisper_int8.serving_env import RUNTIME, dependency_closure

    allowed = {*dependency_closure(RUNTIME), "whisper-int8"}  # the package: logged as the model's code
    assert "jiwer" not in allowed
    proc = subprocess.run(
        [sys.executable, "-c", ONLY_LOGGED_ENVIRONMENT, URI, ",".join(sorted(allowed)), str(tracking["wav"])],
        capture_output=True, text=True, env=venv_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == repr([tracking["expected"]])


def test_pyfunc_refuses_what_it_cannot_hear_right(tracking, tmp_path, monkeypatch):
    """Regression (a serving review): int16 PCM samples came back as confident nonsense, NaN samples
    as a quantization RuntimeError, a null audio as "must be 1-D", and an empty file as ''."""
    model = mlflow.pyfunc.load_model(URI)
    samples = load_audio(tracking["wav"])
    pcm = (samples * 32767).astype(np.int16).tolist()
    empty = tmp_path / "empty.wav"
    empty.write_bytes(wav_bytes(np.zeros(0, np.int16)))
    for request, message in [
        ({"audio": pcm}, r"^audio samples must be floats in \[-1, 1\]; their peak is \d+, as in integer PCM"),
        ({"audio": [0.1, float("nan"), 0.2]}, r"finite numbers; 1 of 3 are NaN or infinite"),
        ({"audio": None}, r"the 'audio' field is missing \(null\)"),
        ({"audio": str(empty)}, r"empty.wav: holds no audio \(0 samples\)"),
        ({"audio": str(tracking["wav"]), "sample_rate": 8000}, r"sample_rate is for a list of samples"),
        ({"audio": samples.tolist(), "sample_rate": 0}, r"sample_rate=0 must be the samples' rate in Hz"),
        ({"audio": samples.tolist(), "language": "xx"}, r"language 'xx'"),
        ([{"audio": str(tracking["wav"])}, {"audio": "/no.wav"}], r"^record 2 of 2: audio file not found"),
        # (a review) MLflow spreads these into rows, which were each taken for a clip and transcribed
        ({"audio": True}, r"audio must be a file path or a list of numbers|1-D mono samples"),
        ({"audio": 0.5}, r"audio samples: 1 sample\(s\), 0.06 ms at 16 kHz: too short for speech"),
        ({"audio": [[0.1, 0.1], [0.2, 0.2], [0.1, 0.0]]}, r"3 records of 2 numbers each, as in the frames"),
        ({"audio": samples.tolist(), "sample_rate": 16}, r"sample_rate=16 must be .* from 1000 to 384000"),
        # (a review) base64 sent for a path was an OSError (name too long), echoed whole; a folder an
        # IsADirectoryError; a language of another type was dropped (detected instead)
        (
            {"audio": "UklGR" * 400},
            r"^audio: UklGR.*\.\.\. \(2000 characters\): cannot be read \(File name too long\) "
            r"\(a path on the server: encoded audio in a string is not read; send the samples as a "
            r"list of floats\)$",
        ),
        ({"audio": str(tmp_path)}, r"^audio: .*: cannot be read \(Is a directory\)$"),
        ({"audio": "/dev/zero"}, r"^audio: /dev/zero: not an audio file \(a device, pipe or socket\)$"),
        (
            {"audio": str(tracking["wav"]), "language": ["de"]},
            r"^language must be a code or name .* got \[.de.\]$",
        ),
    ]:
        with pytest.raises(InputError, match=message):
            model.predict(request)
    # a batch is checked whole first: its good records were transcribed before the bad one was refused
    import whisper_int8.transcribe

    monkeypatch.setattr(
        whisper_int8.transcribe, "transcribe_clip", lambda *a, **k: pytest.fail("transcribed")
    )
    with pytest.raises(InputError, match="record 2 of 2"):
        model.predict([{"audio": str(tracking["wav"])}, {"audio": "/no.wav"}])


def test_samples_at_another_rate_are_resampled(tracking, tmp_path, monkeypatch):
    """Regression: 8 kHz samples were read as 16 kHz (a transcript of audio at twice the speed); the
    rate given with them is resampled by ffmpeg, as a file of that rate is."""
    from whisper_int8.pyfunc_model import check_audio

    narrow = tmp_path / "fox8k.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(tracking["wav"]), "-ar", "8000", str(narrow)],
        check=True,
    )
    with __import__("wave").open(str(narrow)) as w:
        pcm8 = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    samples8 = pcm8.astype(np.float32) / 32768
    resampled = check_audio(samples8.tolist(), 8000)
    assert np.abs(resampled - check_audio(str(narrow))).max() <= 2 / 32768  # ffmpeg's resampling both
    model = mlflow.pyfunc.load_model(URI)
    # what reaches the model, not a transcript (the tiny random model says the same of any sound)
    import whisper_int8.transcribe

    heard = lambda model, samples, language, **k: {"text": f"{len(samples)} {np.abs(samples).sum():.0f}"}  # noqa: E731
    monkeypatch.setattr(whisper_int8.transcribe, "transcribe_clip", heard)
    mixed = pd.DataFrame({"audio": [samples8.tolist(), str(narrow)], "sample_rate": [8000, None]})
    got = model.predict(mixed)
    assert got == model.predict({"audio": str(narrow)}) * 2 and got[0].startswith(f"{len(samples8) * 2} ")


def test_model_config_and_the_servers_limit_are_checked_at_load(tracking, monkeypatch):
    """Regression: model_config={"beam_size": "2"} loaded, then every request failed with a TypeError."""
    from whisper_int8.params import ParamError
    from whisper_int8.pyfunc_model import MAX_SECONDS_VARIABLE

    with pytest.raises(
        ParamError, match=r"model_config: beam_size='2' must be null \(greedy\) or an integer"
    ):
        mlflow.pyfunc.load_model(URI, model_config={"beam_size": "2"})
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", '{"max_tokens": -5}')  # the serving host's
    with pytest.raises(ParamError, match=r"model_config: max_tokens=-5 must be null"):
        mlflow.pyfunc.load_model(URI)
    monkeypatch.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG")
    monkeypatch.setenv(MAX_SECONDS_VARIABLE, "ten")
    with pytest.raises(ParamError, match=rf"{MAX_SECONDS_VARIABLE}='ten' must be a number of seconds"):
        mlflow.pyfunc.load_model(URI)
    monkeypatch.setenv(MAX_SECONDS_VARIABLE, "1.5")
    model = mlflow.pyfunc.load_model(URI)
    assert model.predict({"audio": np.zeros(16000, np.float32).tolist()}) == [""]  # 1 s: within
    with pytest.raises(
        InputError, match=rf"^1.5 s of audio or more, over this server's {MAX_SECONDS_VARIABLE}=1.5"
    ):
        model.predict({"audio": str(tracking["wav"])})  # decoded up to the limit only
    # samples: refused by their count and rate, before ffmpeg resamples them (16 s to 16 kHz: 1000-fold)
    import whisper_int8.audio.wavio

    monkeypatch.setattr(whisper_int8.audio.wavio, "resample", lambda *a: pytest.fail("resampled"))
    two_seconds = pd.DataFrame({"audio": [np.full(16000, 0.1, np.float32)], "sample_rate": [8000]})
    with pytest.raises(InputError, match=rf"^2.0 s of audio, over this server's {MAX_SECONDS_VARIABLE}=1.5"):
        model.predict(two_seconds)
    # (a review) the limit is the request's: a batch of clips each within it was transcribed whole
    second = {"audio": np.full(16000, 0.1, np.float32).tolist()}
    over = (
        r"^record 2 of 3: 1.0 s of audio, 2.0 s with the records before it, over this server's "
        rf"{MAX_SECONDS_VARIABLE}=1.5; send shorter clips or fewer records$"
    )
    with pytest.raises(InputError, match=over):
        model.predict([second, second, second])
    with pytest.raises(InputError, match=r"^record 3 of 3: the records before it hold 1.5 s of audio"):
        model.predict([{"audio": [0.1] * 12000}, {"audio": [0.1] * 12000}, second])
    with pytest.raises(InputError, match=r"^record 2 of 2: 0.5 s of audio or more, 1.5 s with the rec"):
        model.predict([second, {"audio": str(tracking["wav"])}])
    monkeypatch.delenv(MAX_SECONDS_VARIABLE)
    # (a review) a batch where only some records give a language: pandas' NaN in the others was taken
    # for a language (an AttributeError, HTTP 500)
    mixed = pd.DataFrame([{"audio": str(tracking["wav"]), "language": "en"}, {"audio": str(tracking["wav"])}])
    assert len(mlflow.pyfunc.load_model(URI).predict(mixed)) == 2
    # (a review) a bad WHISPER_INT8_ACTIVATION_BITS loaded, then failed every request as a server error
    monkeypatch.setenv("WHISPER_INT8_ACTIVATION_BITS", "9")
    with pytest.raises(ValueError, match="WHISPER_INT8_ACTIVATION_BITS"):
        mlflow.pyfunc.load_model(URI)


def test_the_servers_audio_dir_confines_the_files_a_request_may_name(tracking, tmp_path, monkeypatch):
    """Regression (a security review): any client of `mlflow models serve` could name any file the
    server reads (another user's recording: its transcript; /etc/shadow: "unreadable or corrupt
    audio", so it exists) and no setting restricted it. WHISPER_INT8_AUDIO_DIR now does, links and
    ../ resolved, and a path outside is refused before it is looked up."""
    from whisper_int8.params import ParamError
    from whisper_int8.pyfunc_model import AUDIO_DIR_VARIABLE

    monkeypatch.setenv(AUDIO_DIR_VARIABLE, str(tmp_path / "missing"))
    with pytest.raises(ParamError, match=rf"^{AUDIO_DIR_VARIABLE}=.*missing' must be an existing folder"):
        mlflow.pyfunc.load_model(URI)
    served = tmp_path / "served"
    (served / "calls").mkdir(parents=True)
    (served / "calls" / "fox.wav").write_bytes(tracking["wav"].read_bytes())
    (served / "leak.wav").symlink_to(tracking["wav"])  # a link out of the folder
    monkeypatch.setenv(AUDIO_DIR_VARIABLE, str(served))
    model = mlflow.pyfunc.load_model(URI)
    expected = [tracking["expected"]]
    assert model.predict({"audio": "calls/fox.wav"}) == expected  # relative: inside the folder
    assert model.predict({"audio": str(served / "calls" / "fox.wav")}) == expected
    outside = rf"^audio: .* is outside the folder this server reads audio files from \({AUDIO_DIR_VARIABLE}\)"
    for path in [str(tracking["wav"]), "/etc/shadow", "leak.wav", "/dev/zero", "calls/../../x.wav"]:
        with pytest.raises(InputError, match=outside):
            model.predict({"audio": path})
    with pytest.raises(InputError, match=r"^audio file not found: calls/no.wav$"):  # inside: as before
        model.predict({"audio": "calls/no.wav"})


def test_without_ffmpeg_a_request_that_needs_it_is_the_servers_error(tracking, tmp_path, monkeypatch, caplog):
    """Regression: an image without ffmpeg (mlflow models build-docker) answered HTTP 400, blaming the
    client; now the load warns and the request is an internal error (HTTP 500) naming the fix."""
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, ErrorCode

    narrow = tmp_path / "fox8k.wav"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(tracking["wav"]), "-ar", "8000", str(narrow)],
        check=True,
    )
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with caplog.at_level("WARNING"):
        model = mlflow.pyfunc.load_model(URI)
    assert "ffmpeg not found on PATH: only 16 kHz mono WAV files and 16 kHz samples" in caplog.text
    assert model.predict({"audio": str(tracking["wav"]), "language": "en"}) == [
        tracking["expected"]
    ]  # ours: no ffmpeg
    with pytest.raises(
        mlflow.exceptions.MlflowException, match="^ffmpeg not found on PATH; install it"
    ) as failed:
        model.predict({"audio": str(narrow)})
    assert not isinstance(failed.value, InputError)
    assert failed.value.error_code == ErrorCode.Name(INTERNAL_ERROR)


def test_version_tags_and_artifacts_hold_no_pickled_weights(tracking):
    client = client_for(tracking["uri"])
    mv = client.get_model_version_by_alias(NAME, "champion")
    assert mv.tags["pipeline_key"] == "k"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=URI, dst_path=str(tracking["root"] / "dl")))
    weights = local / "artifacts" / "int8"
    assert (weights / "int8.pt").is_file() and (weights / "quant_config.json").is_file()
    assert not list(local.rglob("*.pkl"))  # models-from-code: the model is built by code, not unpickled
    assert (local / "pyfunc_entry.py").is_file()
    # Pinned without the local label (torch 2.13.0+cpu here): a GPU host installs its own build.
    reqs = (local / "requirements.txt").read_text().splitlines()
    assert f"torch=={version('torch').split('+')[0]}" in reqs and not [r for r in reqs if "+" in r]
    assert "torchao==0.18.0" in reqs  # the gpu extra: WHISPER_INT8_DEVICE=cuda in an env MLflow built
    # and what they pull in, pinned as evaluated; nothing the pipeline alone needs (DVC, pytest)
    assert "-c constraints.txt" in reqs
    pins = (local / "constraints.txt").read_text().split()
    assert f"mlflow-skinny=={version('mlflow-skinny')}" in pins and f"tiktoken=={version('tiktoken')}" in pins
    assert not [p for p in pins if p.startswith(("dvc", "pytest", "torch", "triton", "setuptools"))]


def test_cli_pull_then_transcribe(tracking, tmp_path, capsys):
    dest = tmp_path / "deploy"
    assert cli.main(["pull", "--model", NAME, "--alias", "champion", "--dest", str(dest)]) == 0
    assert (dest / "MLmodel").is_file()
    # A failed pull over an earlier one leaves it whole (the download lands in a temp dir first).
    assert cli.main(["pull", "--model", NAME, "--alias", "nope", "--dest", str(dest)]) == 2
    assert (dest / "MLmodel").is_file() and not list(tmp_path.glob(".deploy.*"))
    capsys.readouterr()
    # Only an earlier pull is replaced: another folder or a file at --dest is refused, left as it was.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    (tmp_path / "notes.txt").write_text("mine")
    for other in ("mine", "notes.txt"):
        assert cli.main(["pull", "--model", NAME, "--dest", str(tmp_path / other)]) == 2
        assert "exists and is not a pulled model (no MLmodel file)" in _one_line_error(capsys)
    assert (tmp_path / "mine" / "notes.txt").read_text() == (tmp_path / "notes.txt").read_text() == "mine"
    # (a review) a deployment's link (current -> releases/v1) stays; the folder it points to is replaced
    (tmp_path / "releases" / "v1").mkdir(parents=True)
    (tmp_path / "current").symlink_to(tmp_path / "releases" / "v1")
    for _ in range(2):
        assert cli.main(["pull", "--model", NAME, "--dest", str(tmp_path / "current")]) == 0
    assert (tmp_path / "current").is_symlink() and (tmp_path / "releases" / "v1" / "MLmodel").is_file()
    assert not list(tmp_path.glob(".current*")) and not list((tmp_path / "releases").glob(".*"))
    # A run's model (runs:/<id>/model downloads into a folder of that name) pulls as the registered one.
    runs_dest = tmp_path / "from-run"
    assert cli.main(["pull", "--model", f"runs:/{tracking['run_id']}/model", "--dest", str(runs_dest)]) == 0
    assert sorted(p.name for p in runs_dest.iterdir()) == sorted(p.name for p in dest.iterdir())
    assert not list(tmp_path.glob(".from-run.*"))
    capsys.readouterr()
    # The registered model decodes with the options logged with it (FAST); a model directory is told them.
    for model in ([str(dest)], [URI], [str(tracking["int8"]), "--max-tokens", "4"]):
        args = ["transcribe", "--model", *model, "--language", "en", "--json"]
        assert cli.main([*args, str(tracking["wav"])]) == 0
        line = json.loads(capsys.readouterr().out.strip())
        assert line == {"audio": str(tracking["wav"]), "text": tracking["expected"]}


def test_pull_into_the_empty_folder_a_shell_stands_in_is_refused(tracking, tmp_path, capsys, monkeypatch):
    """Regression (a review): an empty folder is replaced by a pull, and `pull --dest .` in one renamed
    the directory the caller stood in (the shell left in an unlinked one)."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert cli.main(["pull", "--model", NAME, "--dest", "."]) == 2
    assert "here: is or holds the current directory; pull into a new directory" in _one_line_error(capsys)
    assert Path.cwd() == tmp_path / "here" and not any(Path.cwd().iterdir())
    # (a review) nor one an earlier pull wrote, which was replaced under the shell
    assert cli.main(["pull", "--model", NAME, "--dest", str(tmp_path / "pulled")]) == 0
    capsys.readouterr()  # its progress
    monkeypatch.chdir(tmp_path / "pulled")
    assert cli.main(["pull", "--model", NAME, "--dest", "."]) == 2
    assert "is or holds the current directory" in _one_line_error(capsys)
    assert Path.cwd() == tmp_path / "pulled" and (Path.cwd() / "MLmodel").is_file()


def test_cli_transcribe_holds_a_bounded_amount_of_audio(registered, capsys, monkeypatch):
    """Files past the decoded-audio budget are checked, dropped and decoded again in turn: a batch of
    long recordings transcribes the same, holding one file at a time rather than all of them."""
    wav = str(registered["wav"])
    one = cli.decode_audio(wav).nbytes
    assert [c is None for c in cli.decode_all([wav, wav, wav], 2 * one)] == [False, False, True]
    decoded = []
    monkeypatch.setattr(cli, "KEEP_DECODED_BYTES", 0)
    monkeypatch.setattr(cli, "decode_audio", lambda path: decoded.append(path) or load_audio(path))
    model = ["transcribe", "--model", str(registered["int8"]), "--max-tokens", "4", "--language", "en"]
    assert cli.main([*model, "--json", wav, wav]) == 0
    assert decoded == [wav, wav, wav, wav]  # checked, then decoded again one at a time
    lines = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert lines == [registered["expected"]] * 2


def test_cli_transcribe_leaves_no_downloaded_model_behind(tracking, capsys, monkeypatch):
    """Regression (a review): from a remote artifact store, MLflow downloads a models:/ URI given no
    destination into a temp folder that nothing removes: a model's copy left at every call."""
    import mlflow.artifacts

    real, dests = mlflow.artifacts.download_artifacts, []

    def download(*args, **kwargs):
        dests.append(kwargs.get("dst_path"))
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    assert cli.main(["transcribe", "--model", URI, "--language", "en", str(tracking["wav"])]) == 0
    assert capsys.readouterr().out.endswith(f"\t{tracking['expected']}\n")
    (dest,) = dests
    assert dest is not None and not Path(dest).exists()


def test_cli_says_when_a_registered_model_runs_this_installs_code(tracking, tmp_path, capsys, caplog):
    """In the CLI's process whisper_int8 is imported already, so a model logged with other code runs
    this install's (mlflow models serve runs its own): said, not silently transcribed differently."""
    dest = tmp_path / "pulled"
    assert cli.main(["pull", "--model", NAME, "--dest", str(dest)]) == 0
    args = ["transcribe", "--model", str(dest), "--language", "en", str(tracking["wav"])]
    for model in (URI, str(dest)):
        assert cli.main([*args[:2], model, *args[3:]]) == 0
    assert "other whisper_int8 code" not in caplog.text
    with (dest / "code" / "whisper_int8" / "pyfunc_model.py").open("a") as f:
        f.write("# a later fix\n")
    assert cli.main(args) == 0
    assert f"{dest} was logged with other whisper_int8 code than this install's" in caplog.text
    assert capsys.readouterr().out.endswith(f"\t{tracking['expected']}\n")


def test_cli_errors_are_one_line(tracking, tmp_path, capsys):
    assert cli.main(["pull", "--model", NAME, "--alias", "nope", "--dest", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "models:/whisper-int8-serve@nope: cannot be pulled" in err
    # after a refused gate the version exists but the alias does not: said so, not "register one"
    assert "no version of whisper-int8-serve holds @nope: 1 registered, 0 refused by the gate" in err
    assert cli.main(["pull", "--model", "nosuch", "--dest", str(tmp_path / "x")]) == 2
    assert "no model nosuch is registered there; the promote stage" in capsys.readouterr().err
    assert cli.main(["transcribe", "--model", f"models:/{NAME}@nope", str(tracking["wav"])]) == 2
    assert (
        "cannot be loaded" in (err := capsys.readouterr().err) and f"no version of {NAME} holds @nope" in err
    )
    with pytest.MonkeyPatch.context() as patch:  # the alias exists, the artifact store fails
        denied = mlflow.exceptions.MlflowException("403 != 200")
        patch.setattr(mlflow.artifacts, "download_artifacts", lambda **_: (_ for _ in ()).throw(denied))
        assert cli.main(["pull", "--model", NAME, "--dest", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert "(403 != 200); the alias exists: the message above says what failed" in err and "holds" not in err
    assert cli.main(["transcribe", "--model", str(tracking["int8"]), str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav: audio file not found" in capsys.readouterr().err
    port = free_port()
    assert (
        cli.main(["--tracking-uri", f"http://127.0.0.1:{port}", "pull", "--dest", str(tmp_path / "y")]) == 2
    )
    assert "cannot be reached" in capsys.readouterr().err


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The error message, asserted to be the only line on stderr."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err.removeprefix("error: ").rstrip("\n")


def test_cli_transcribe_checks_every_audio_file_before_loading(registered, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "load_transcriber", lambda *args: pytest.fail("model loaded first"))
    missing = [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]
    for model in (str(registered["int8"]), URI):
        assert cli.main(["transcribe", "--model", model, str(registered["wav"]), *missing]) == 2
        assert _one_line_error(capsys) == f"{missing[0]}, {missing[1]}: audio file not found"
    # a file too short for speech (diff review: refused by predict, after earlier files' transcripts)
    short = tmp_path / "short.wav"
    short.write_bytes(wav_bytes(np.full(80, 3000, np.int16)))
    assert cli.main(["transcribe", "--model", URI, str(registered["wav"]), str(short)]) == 2
    too_short = "80 sample(s), 5.00 ms at 16 kHz: too short for speech (at least 10 ms)"
    assert _one_line_error(capsys) == f"{short}: {too_short}"  # no hint about lists: it is a file
    # an unknown --language too ("auto" is what leaving it out does)
    assert cli.main(["transcribe", "--model", URI, "--language", "auto", str(registered["wav"])]) == 2
    assert _one_line_error(capsys).startswith("language 'auto': not a language Whisper knows")


def test_cli_decoding_options_refused_for_an_mlflow_model(registered, tmp_path, capsys, monkeypatch):
    """They would be silently ignored: the pyfunc decodes with the options it was registered with."""
    monkeypatch.setattr(cli, "load_transcriber", lambda *args: pytest.fail("model loaded first"))
    pulled = tmp_path / "deploy"
    pulled.mkdir()
    (pulled / "MLmodel").touch()
    wav = str(registered["wav"])
    for model, options, flags in (
        (str(pulled), ["--max-tokens", "4"], "--max-tokens"),
        (URI, ["--beam-size", "5", "--max-tokens", "4"], "--beam-size and --max-tokens"),
        ("runs:/abc/model", ["--beam-size", "5"], "--beam-size"),
    ):
        assert cli.main(["transcribe", "--model", model, *options, wav]) == 2
        assert _one_line_error(capsys) == (
            f"{flags}: for a local model directory only (e.g. models/int8); {model} is an MLflow model "
            "and decodes with the options it was registered with"
        )


def test_cli_transcribe_bad_model_dir_is_one_line(registered, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["transcribe", "--model", str(empty), str(registered["wav"])]) == 2
    assert "not a model directory" in _one_line_error(capsys)


def test_the_serving_host_chooses_the_device(registered, monkeypatch):
    """WHISPER_INT8_DEVICE: a GPU fleet serves on its GPU (torchao), the default stays the CPU."""
    from whisper_int8.params import ParamError
    from whisper_int8.pyfunc_model import DEVICE_VARIABLE, WhisperPyfunc

    for value, message in [("gpu", "must be auto, cpu or cuda"), ("cuda:7", "this machine has")]:
        monkeypatch.setenv(DEVICE_VARIABLE, value)
        with pytest.raises(ParamError, match=f"^{DEVICE_VARIABLE}={value!r}.*{message}"):
            WhisperPyfunc().load(registered["int8"])
    monkeypatch.setenv(DEVICE_VARIABLE, "auto")  # this machine: the CPU
    model = WhisperPyfunc(**FAST)
    model.load(registered["int8"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(model.model.parameters()).device.type == device
    wav, expected = str(registered["wav"]), registered["expected"]
    if device != "cpu":  # torchao's kernels and CUDA's sampling RNG: not the CPU's text (a review)
        there = load_model_dir(registered["int8"], device=device)
        expected = transcribe_clip(there, wav, "en", **FAST)["text"]
    assert model.predict(None, {"audio": wav, "language": "en"}) == [expected]


def test_cli_transcribe_undecodable_audio_is_one_line(registered, tmp_path, capsys, monkeypatch):
    """Every file is decoded before the model is loaded: a bad one stops the run, named, with ffmpeg's
    reason, before any transcript (the good file before it included)."""
    monkeypatch.setattr(cli, "load_transcriber", lambda *args: pytest.fail("model loaded first"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")  # a truncated header: wave and ffmpeg both give up
    empty = tmp_path / "empty.wav"
    empty.write_bytes(wav_bytes(np.zeros(0, dtype=np.int16)))
    model = ["transcribe", "--model", str(registered["int8"]), "--max-tokens", "4", "--language", "en"]
    assert cli.main([*model, str(registered["wav"]), str(bad)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert (
        out.err == f"error: {bad}: unreadable or corrupt audio (Invalid data found when processing input)\n"
    )
    assert cli.main([*model, str(empty)]) == 2
    assert _one_line_error(capsys) == f"{empty}: holds no audio (0 samples)"


def test_cli_refuses_a_missing_sqlite_database(registered, tmp_path, capsys, monkeypatch):
    """Started outside the repository root, MLflow would create an empty mlflow.db there and report the
    model as missing; the CLI only reads the registry, so it says where it looked and creates nothing."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    default_db = tmp_path.resolve() / "mlflow.db"
    other_db = tmp_path / "elsewhere" / "mlflow.db"
    for argv, db in (
        (["pull", "--dest", "deploy"], default_db),
        (["transcribe", str(registered["wav"])], default_db),  # the default model is models:/...@champion
        (["--tracking-uri", f"sqlite:///{other_db}", "pull", "--dest", "deploy"], other_db),
    ):
        assert cli.main(argv) == 2
        assert _one_line_error(capsys) == (
            f"{db}: no MLflow database here; run from the repository root (where make repro wrote "
            "mlflow.db) or pass --tracking-uri"
        )
    assert not list(tmp_path.rglob("*"))


def test_cli_in_the_repository_uses_params_yaml_mlflow_settings(registered, tmp_path, capsys, monkeypatch):
    """Run where params.yaml is, the CLI pulls from the registry promote wrote to (its tracking_uri, model
    name and alias), not a mlflow.db that params.yaml no longer names; --tracking-uri works after the
    command too."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = registered["uri"]
    (tmp_path / "params.yaml").write_text(
        f"mlflow:\n  tracking_uri: {uri}\n  registered_model: {NAME}\n  alias: champion\n"
    )
    assert cli.main(["pull", "--dest", "deploy"]) == 0
    assert (tmp_path / "deploy" / "MLmodel").is_file()
    assert f"pulled {URI} -> " in capsys.readouterr().out
    assert cli.main(["transcribe", "--language", "en", "--json", str(registered["wav"])]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == registered["expected"]
    (tmp_path / "params.yaml").write_text("mlflow:\n  tracking_uri: [not, a, uri]\n")
    assert cli.main(["pull", "--dest", "deploy"]) == 2
    assert (
        _one_line_error(capsys)
        == "params.yaml: mlflow.tracking_uri must be a string, got ['not', 'a', 'uri']"
    )
    # another project's params.yaml (no mlflow section), or a bad one: a local model needs no registry
    (tmp_path / "params.yaml").write_text("train: {lr: 0.1}\n")
    local = [
        "transcribe",
        "--model",
        str(registered["int8"]),
        "--language",
        "en",
        "--json",
        str(registered["wav"]),
    ]
    assert cli.main(local) == 0 and "text" in json.loads(capsys.readouterr().out)
    (tmp_path / "params.yaml").write_text("mlflow: [")
    assert cli.main(local) == 0
    capsys.readouterr()
    (tmp_path / "params.yaml").unlink()
    assert cli.main(["pull", "--tracking-uri", uri, "--model", NAME, "--dest", "again"]) == 0
    assert (tmp_path / "again" / "MLmodel").is_file()


def test_cli_help():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "whisper-int8"), "transcribe", "--help"],
        capture_output=True,
        text=True,
        env=venv_env(),
    )
    assert out.returncode == 0 and "models:/NAME@ALIAS" in out.stdout


def _post(url: str, payload: dict) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_mlflow_models_serve_round_trip(tracking, tmp_path):
    port = free_port()
    env = {**venv_env(), "MLFLOW_TRACKING_URI": tracking["uri"]}
    mlflow_exe = str(Path(sys.executable).parent / "mlflow")
    cmd = [
        mlflow_exe,
        "models",
        "serve",
        "-m",
        URI,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, (
                "server did not answer /ping in 120 s:\n" + (tmp_path / "serve.log").read_text()
            )
            time.sleep(1)
        samples = np.round(load_audio(tracking["wav"]), 5).tolist()
        url = f"http://127.0.0.1:{port}/invocations"
        by_array = _post(url, {"dataframe_records": [{"audio": samples, "language": "en"}]})
        by_path = _post(url, {"dataframe_records": [{"audio": str(tracking["wav"])}]})
        assert by_array == {"predictions": [tracking["expected"]]}
        assert by_path == {"predictions": [tracking["expected"]]}
        # a request it cannot take: 400 with the reason, not "an unexpected error" and a stack trace
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(url, {"dataframe_records": [{"audio": "/nonexistent.wav"}]})
        body = json.loads(refused.value.read())
        assert refused.value.code == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body
        assert body["message"].endswith("Error: audio file not found: /nonexistent.wav"), body
        # another rate, given with the samples, in a batch beside a record without one
        halved = np.round(load_audio(tracking["wav"])[::2], 5).tolist()  # every other sample: 8 kHz
        records = [{"audio": halved, "sample_rate": 8000}, {"audio": str(tracking["wav"])}]
        assert len(_post(url, {"dataframe_records": records})["predictions"]) == 2
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.integration
def test_real_base_model_transcribes_english(tmp_path, base_fp32):
    """The default model through the pyfunc: an espeak-ng English clip comes back with its words."""
    fp32 = base_fp32
    from whisper_int8.pyfunc_model import WhisperPyfunc

    wav = tmp_path / "fox.wav"
    speak("the quick brown fox jumps over the lazy dog", "en", wav)
    model = WhisperPyfunc()
    model.load(fp32)
    text = model.predict(None, [{"audio": str(wav), "language": "en"}])[0].lower()
    assert {"quick", "brown", "fox", "lazy", "dog"} <= set(text.replace(".", "").replace(",", "").split())


def test_cli_refuses_a_beam_of_zero_and_a_token_cap_below_one(capsys):
    cases = (("--beam-size", "0"), ("--beam-size", "five"), ("--max-tokens", "-3"), ("--max-tokens", "0"))
    for flag, value in cases:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["transcribe", flag, value, "clip.wav"])
        assert exit_.value.code == 2
        assert f"argument {flag}: '{value}': expected an integer >= 1" in capsys.readouterr().err


def test_cli_refuses_a_token_cap_above_a_windows_budget(capsys):
    """Regression (a review): --max-tokens 1000 decoded 224 tokens a window without a word, where
    params.yaml's evaluate.max_tokens refuses more than 224; now the same usage error as a cap of 0."""
    for value in ("1000", "225"):  # 225: one over
        with pytest.raises(SystemExit) as exit_:
            cli.main(["transcribe", "--max-tokens", value, "clip.wav"])
        assert exit_.value.code == 2
        assert (
            f"argument --max-tokens: '{value}': at most 224, the most a 30 s window decodes"
            in capsys.readouterr().err
        )
    args = cli.build_parser().parse_args(["transcribe", "--max-tokens", "224", "clip.wav"])
    assert args.max_tokens == 224


def test_a_list_of_numpy_samples_is_one_clip():
    from whisper_int8.pyfunc_model import as_requests

    samples = list(np.full(1600, 0.1, dtype=np.float32))  # numpy scalars, not Python floats
    ((audio, language, rate),) = as_requests(samples)
    assert language is None and rate is None and len(audio) == 1600


def test_cli_refuses_an_alias_beside_a_uri_and_says_interrupted(registered, capsys, monkeypatch):
    """Regression: ``pull --model runs:/... --alias champion`` ignored the alias without a word, and
    Ctrl+C during a transcription printed a traceback."""
    assert cli.main(["pull", "--model", "runs:/abc/model", "--alias", "champion", "--dest", "d"]) == 2
    assert (
        "--alias champion: for a registered model name; --model runs:/abc/model is a URI"
        in capsys.readouterr().err
    )

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_transcribe", interrupted)
    assert cli.main(["transcribe", str(registered["wav"])]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_only_a_batch_of_frame_sized_lists_is_taken_for_multi_channel_audio():
    from whisper_int8.pyfunc_model import as_requests

    with pytest.raises(ValueError, match="^audio: 3 records of 2 numbers each, as in the frames"):
        as_requests(pd.DataFrame({"audio": [[0.1, 0.1], [0.2, 0.2], [0.1, 0.0]]}))
    mixed = pd.DataFrame({"audio": ["/x.wav", [0.1, 0.2, 0.3]]})  # a path beside a (short) clip: two records
    assert [audio for audio, _, _ in as_requests(mixed)] == ["/x.wav", [0.1, 0.2, 0.3]]
    clips = [np.full(1600, 0.1 * i, np.float32) for i in (1, 2)]  # equal lengths: two clips
    assert len(as_requests(pd.DataFrame({"audio": clips}))) == 2


def test_integer_pcm_of_a_quiet_clip_is_refused_like_a_loud_one():
    """Regression: 16-bit PCM sent unscaled was refused only above a peak of 2, so near-silence (dither
    of a few LSB, a gap between utterances) was heard at full scale, 16384 times too loud: seconds of
    decoding and a made-up "you" where the same samples / 32768 are silence (an empty transcript)."""
    from whisper_int8.pyfunc_model import as_requests, check_audio

    hush = np.random.default_rng(0).integers(-2, 3, 16000).astype(np.int16)
    integer_pcm = r"^audio samples must be floats in \[-1, 1\]; they are integers \(peak 2\), as in integ"
    for sent in (hush, hush.tolist()):  # numpy, and JSON's integers
        with pytest.raises(ValueError, match=integer_pcm):
            check_audio(sent)
    # MLflow spreads {"audio": samples} into one row per sample: their type survives the gathering
    ((gathered, _, _),) = as_requests(pd.DataFrame({"audio": hush}))
    with pytest.raises(ValueError, match=integer_pcm):
        check_audio(gathered)
    # (a review) in an object column too: its numpy array held Python ints of dtype object, taken
    ((gathered, _, _),) = as_requests(pd.DataFrame({"audio": hush}).astype(object))
    with pytest.raises(ValueError, match=integer_pcm):
        check_audio(gathered)
    assert check_audio((hush / 32768).tolist()).dtype == np.float32  # scaled: taken
    assert not check_audio([0] * 1600).any()  # integer zeros are silence in any scale: taken


def test_a_record_holding_a_list_of_paths_says_one_record_per_file():
    """Regression: ``{"inputs": {"audio": [a, b]}}`` (MLflow keeps it one record) was refused as "audio
    must be a file path or a list of numbers, got list": a list it was, and of what was not said."""
    from whisper_int8.pyfunc_model import check_audio

    one_each = r"^audio: a list of 2 file paths in one record \('/a.wav', ...\); send one record per file"
    with pytest.raises(ValueError, match=one_each):
        check_audio(["/a.wav", "/b.wav"])
    mixed = r"^audio must be a file path or a list of numbers, got a list holding dict$"
    with pytest.raises(ValueError, match=mixed):
        check_audio([0.1, {"x": 1}])
