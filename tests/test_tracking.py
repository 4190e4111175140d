"""MLflow tracking on a real temporary sqlite store: parent + child runs, metric keys, idempotent re-runs."""

from __future__ import annotations

import http.server
import importlib.util
import json
import re
import shutil
import socket
import threading
from pathlib import Path

import mlflow
import pytest

from whisper_int8 import promotion, registry
from whisper_int8.gate import gate_config
from whisper_int8.model_sources import ModelSourceError
from whisper_int8.promotion import MlflowConfig, PromoteInputs, promote
from whisper_int8.tracking import flatten, log_values, open_experiment
from whisper_int8.tracking_uri import (
    TrackingError,
    artifact_location,
    check_reachable,
    masked_uri,
    resolve_tracking_uri,
)

from .eval_fixtures import client_for, fresh_tracking_uri, report, tiny_model_dir

SHARED_KEYS = {
    "wer/en", "cer/zh", "wer_delta/en", "cer_delta/zh", "error_rate/overall", "lid_accuracy/en",
    "latency_p50_s", "latency_p90_s", "rtf", "peak_rss_mb", "model_size_mb", "load_time_s", "speedup",
}  # fmt: skip


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"fp32": tiny_model_dir(root / "fp32", seed=0), "int8": tiny_model_dir(root / "int8", seed=1)}


def setup_pipeline(tmp: Path, model_dirs: dict[str, Path], rep: dict, tag: str = "a") -> PromoteInputs:
    """An eval.json + upstream files as the earlier stages would leave them."""
    metrics = tmp / f"metrics-{tag}"
    metrics.mkdir()
    (metrics / "eval.json").write_text(json.dumps(rep), encoding="utf-8")
    (metrics / "per_language.csv").write_text("language,fp32,int8\nen,1,1\n", encoding="utf-8")
    (tmp / "models" / "calibration").mkdir(parents=True, exist_ok=True)
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "data" / "audio_summary.json").write_text('{"clips": 6}', encoding="utf-8")
    (tmp / "models" / "calibration" / "sensitivity.json").write_text('{"layers": []}', encoding="utf-8")
    return PromoteInputs(
        eval_json=metrics / "eval.json",
        model_dirs=model_dirs,
        artifacts=[
            tmp / "data" / "audio_summary.json",
            tmp / "models" / "calibration",
            model_dirs["fp32"] / "model_card.json",
            model_dirs["int8"] / "model_card.json",
        ],
        eval_files=[metrics / "per_language.csv"],
        gate_json=metrics / "gate.json",
        params={"model": {"source": "package:tiny"}, "quant": {"scheme": "w8a8", "calibration_clips": 16}},
        dvc_lock=tmp / "dvc.lock",
    )


def mlflow_cfg(tmp: Path) -> MlflowConfig:
    return MlflowConfig(
        tracking_uri=fresh_tracking_uri(tmp),
        experiment="whisper-int8-test",
        registered_model="whisper-int8-test",
        alias="champion",
        artifact_location=(tmp / "mlruns").as_uri(),
    )


def runs_of(cfg: MlflowConfig):
    client = client_for(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.experiment)
    return client, client.search_runs([exp.experiment_id])


def test_parent_and_children_share_metric_keys(tmp_path, model_dirs, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "jaunty-lobe")  # as `dvc exp run` sets them for its stages
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    cfg = mlflow_cfg(tmp_path)
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0, "zh": 20.0}, {"en": 10.2, "zh": 20.1}))
    assert promote(inputs, cfg, gate_config({}), decode={})["passed"]

    client, runs = runs_of(cfg)
    parents = [r for r in runs if r.data.tags.get("role") == "pipeline"]
    children = {r.data.tags["variant"]: r for r in runs if r.data.tags.get("role") == "variant"}
    assert len(parents) == 1 and set(children) == {"fp32", "int8"} and len(runs) == 3
    parent = parents[0]
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    assert all(r.info.status == "FINISHED" for r in runs)
    fp32_keys, int8_keys = set(children["fp32"].data.metrics), set(children["int8"].data.metrics)
    assert fp32_keys >= SHARED_KEYS and int8_keys >= SHARED_KEYS
    assert fp32_keys - {"gate_passed"} == int8_keys - {"gate_passed"}
    assert children["fp32"].data.metrics["wer_delta/en"] == 0.0
    assert children["int8"].data.metrics["wer_delta/en"] == pytest.approx(0.2)
    assert children["int8"].data.metrics["speedup"] == pytest.approx(2.0)

    # the INT8 child carries the quant settings (children compare across experiments in the UI), and
    # the runs lead back to the DVC experiment that made them
    assert children["int8"].data.params["quant.scheme"] == "w8a8"
    assert children["int8"].data.params["model.source"] == "package:tiny"  # calibrate.* too
    assert not any(k.startswith(("quant.", "model.")) for k in children["fp32"].data.params)
    # named for their pipeline state, as the parent: two INT8 runs in the Compare view were both "int8"
    state = parent.info.run_name.removeprefix("pipeline-")
    assert {v: c.info.run_name for v, c in children.items()} == {
        "fp32": f"fp32-{state}",
        "int8": f"int8-{state}",
    }
    for run in (parent, *children.values()):
        assert run.data.tags["dvc_exp_name"] == "jaunty-lobe"
        assert run.data.tags["dvc_exp_baseline_rev"] == "a" * 40
    params = parent.data.params
    assert params["model.source"] == "package:tiny" and params["quant.scheme"] == "w8a8"
    assert params["quant.calibration_clips"] == "16" and params["dvc_lock_sha256"] == "no-dvc-lock"
    # what a rerun of the same state may change is a tag, which the rerun overwrites (a param kept
    # the first value: the alias and commit of an earlier promote)
    assert len(parent.data.tags["git_commit"]) == 40 and "git_commit" not in params
    assert parent.data.tags["setting.gate.fail_on_reject"] == "False" and "gate.fail_on_reject" not in params
    parent_files = {f.path for f in client.list_artifacts(parent.info.run_id, "upstream")}
    assert parent_files == {"upstream/data", "upstream/models", "upstream/fp32", "upstream/int8"}
    # both model cards, each in its folder (one upstream/ folder kept only the last)
    for folder in model_dirs.values():
        local = client.download_artifacts(
            parent.info.run_id, f"upstream/{folder.name}/model_card.json", str(tmp_path)
        )
        assert Path(local).read_bytes() == (folder / "model_card.json").read_bytes()
    assert (
        client.list_artifacts(parent.info.run_id, "upstream/models")[0].path == "upstream/models/calibration"
    )
    assert [f.path for f in client.list_artifacts(parent.info.run_id, "gate")] == ["gate/gate.json"]
    assert [f.path for f in client.list_artifacts(parent.info.run_id, "evaluation")] == [
        "evaluation/per_language.csv"
    ]
    # Each variant's card beside, not inside, the pyfunc "model" (runs:/<id>/model would get both).
    int8_files = {f.path for f in client.list_artifacts(children["int8"].info.run_id, "model_card")}
    assert "model_card/model_card.json" in int8_files
    gate = json.loads(inputs.gate_json.read_text())
    assert gate["promoted"] and gate["version"] == 1 and gate["parent_run_id"] == parent.info.run_id


def test_rerun_updates_the_same_runs_and_keeps_the_champion(tmp_path, model_dirs, monkeypatch):
    cfg = mlflow_cfg(tmp_path)
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}))
    monkeypatch.setenv("DVC_EXP_NAME", "jaunty-lobe")
    promote(inputs, cfg, gate_config({}), decode={})
    first = json.loads(inputs.gate_json.read_text())
    monkeypatch.delenv("DVC_EXP_NAME")  # then a plain `dvc repro` of the same state
    promote(inputs, cfg, gate_config({"fail_on_reject": True}), decode={})
    second = json.loads(inputs.gate_json.read_text())

    client, runs = runs_of(cfg)
    assert len(runs) == 3
    # Regression: the runs kept the experiment's tag and the first promote's settings as params
    assert not [r for r in runs if "dvc_exp_name" in r.data.tags]
    parent = client.get_run(second["parent_run_id"])
    assert parent.data.tags["setting.gate.fail_on_reject"] == "True"
    assert second["parent_run_id"] == first["parent_run_id"]
    # The champion is this pipeline state already: no new version, the alias stays (a fleet watching
    # it would redeploy the same weights after every `dvc repro`).
    assert (first["version"], second["version"]) == (1, 1) and second["promoted"]
    assert second["champion_version"] == 1
    assert len(client.search_model_versions(f"name='{cfg.registered_model}'")) == 1
    assert int(client.get_model_version_by_alias(cfg.registered_model, "champion").version) == 1
    # Regression: each rerun appended an identical point to every metric's history
    for run in runs:
        for name in run.data.metrics:
            assert len(client.get_metric_history(run.info.run_id, name)) == 1, name


def test_promotes_sharing_a_sqlite_registry_take_turns(tmp_path, model_dirs, monkeypatch):
    """`dvc queue start -j 2`: two promotes each compared with the same old champion and both moved
    the alias, so the later one served even when it was the worse. From reading the champion to
    moving the alias, a promote now holds a lock beside mlflow.db."""
    cfg = mlflow_cfg(tmp_path)
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}))
    judged, seen = threading.Event(), []
    check, champion = promotion.check_thresholds, registry.champion
    monkeypatch.setattr(promotion, "check_thresholds", lambda *a: judged.set() or check(*a))
    monkeypatch.setattr(registry, "champion", lambda *a: seen.append("champion") or champion(*a))
    with registry.promotion_lock(cfg.tracking_uri):  # another promote, between its read and its move
        worker = threading.Thread(target=promote, args=(inputs, cfg, gate_config({}), {}))
        worker.start()
        assert judged.wait(timeout=300)
        worker.join(timeout=1.0)
        assert worker.is_alive() and seen == []  # waiting for the lock, the champion not yet read
    worker.join(timeout=300)
    assert seen == ["champion"] and json.loads(inputs.gate_json.read_text())["promoted"]


def test_a_model_directory_that_cannot_load_is_not_registered(tmp_path, model_dirs):
    """The fleet would pull a champion that fails to load: refused before anything is logged."""
    cfg = mlflow_cfg(tmp_path)
    broken = tmp_path / "int8"
    shutil.copytree(model_dirs["int8"], broken)
    (broken / "model.pt").unlink()
    inputs = setup_pipeline(tmp_path, {**model_dirs, "int8": broken}, report({"en": 10.0}, {"en": 10.1}))
    with pytest.raises(ModelSourceError, match="model.pt"):
        promote(inputs, cfg, gate_config({}), decode={})
    assert client_for(cfg.tracking_uri).get_experiment_by_name(cfg.experiment) is None
    assert not inputs.gate_json.exists()


def test_changed_pipeline_gets_a_new_parent_run(tmp_path, model_dirs):
    cfg = mlflow_cfg(tmp_path)
    promote(
        setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}), "a"),
        cfg,
        gate_config({}),
        {},
    )
    promote(
        setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.0}), "b"),
        cfg,
        gate_config({}),
        {},
    )
    _, runs = runs_of(cfg)
    assert len([r for r in runs if r.data.tags.get("role") == "pipeline"]) == 2 and len(runs) == 6


def test_changed_gate_or_decoding_gets_its_own_parent_run_and_model(tmp_path, model_dirs):
    """The promote stage's own inputs are part of the pipeline state: thresholds and served code."""
    cfg = mlflow_cfg(tmp_path)
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}))
    first = promote(inputs, cfg, gate_config({}), decode={})
    strict = promote(inputs, cfg, gate_config({"max_wer_delta_pp": 0.05}), decode={})
    ci = promote(inputs, cfg, gate_config({"max_wer_delta_pp": 0.05, "fail_on_reject": True}), {})
    beam = promote(inputs, cfg, gate_config({}), decode={"beam_size": 2})
    assert first["passed"] and not strict["passed"] and not ci["passed"]
    assert strict["gate_config"]["max_wer_delta_pp"] == 0.05
    parents = [first["parent_run_id"], strict["parent_run_id"], beam["parent_run_id"]]
    assert len(set(parents)) == 3 and ci["parent_run_id"] == strict["parent_run_id"]  # exit code only
    client, _ = runs_of(cfg)
    assert client.get_run(strict["parent_run_id"]).data.params["gate.max_wer_delta_pp"] == "0.05"
    source = {r["version"]: client.get_model_version(cfg.registered_model, str(r["version"])).source
              for r in (first, strict, ci, beam)}  # fmt: skip
    assert source[ci["version"]] == source[strict["version"]]
    assert source[beam["version"]] not in (source[first["version"]], source[strict["version"]])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_a_clear_error(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert resolve_tracking_uri("sqlite:///mlflow.db") == uri
    with pytest.raises(TrackingError, match=rf"{uri} cannot be reached .*unset MLFLOW_TRACKING_URI"):
        open_experiment(resolve_tracking_uri(None), "x")


@pytest.mark.parametrize(
    ("uri", "message"),
    [("sqlite://mlflow.db", "a sqlite URI names its file after three slashes"),
     ("sqlite://", "a sqlite URI names its file after three slashes"),  # in memory: promoted into nothing
     ("sqlite:////", "/ is a folder; name the database file"),
     ("htp://mlflow:5000", "got unsupported URI 'htp://mlflow:5000'"),  # MLflow's message, one line
     ("postgresql://u@127.0.0.1:1/db", "needs the database driver module psycopg")],
)  # fmt: skip
def test_a_mistyped_tracking_uri_is_one_line(uri, message):
    """They were tracebacks from SQLAlchemy or MLflow's store registry, or (in memory) a "promoted"
    champion that nothing kept."""
    if uri.startswith("postgresql") and importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg is installed here: the URI names a database, not a missing driver")
    with pytest.raises(
        TrackingError, match=re.escape(f"MLflow tracking URI {uri}: ") + ".*" + re.escape(message)
    ):
        open_experiment(uri, "x")


@pytest.mark.parametrize(("status", "reachable"), [(401, True), (403, True), (404, False)])
def test_a_server_that_wants_credentials_is_reachable(status, reachable):
    """/health is probed without MLflow's credentials: a 401 means the server is there (MLflow sends
    MLFLOW_TRACKING_TOKEN itself); a 404 is no MLflow server."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_error(status)

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_port}"
    try:
        if reachable:
            check_reachable(uri)
        else:
            with pytest.raises(TrackingError, match=f"{uri} answered HTTP 404 .* is it an MLflow server"):
                check_reachable(uri)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("userinfo", ["user:secret@", "token@"])
def test_a_server_named_with_credentials_is_reachable(userinfo):
    """Regression (a read-through of the README): urllib took ``user:secret@127.0.0.1`` for the host
    name, so every tracking URI holding credentials, which the README shows and masks, was refused as
    "cannot be reached ([Errno -2] Name or service not known)" although the server answered."""
    paths = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            paths.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_reachable(f"http://{userinfo}127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
        server.server_close()
    assert paths == ["/health"]


def test_default_uri_is_sqlite_at_the_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, root=tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(TrackingError, match="bare file store"):
        open_experiment(f"file://{tmp_path}/mlruns", "x")


def test_dvc_experiment_copies_log_to_the_real_repository(monkeypatch, tmp_path):
    """`dvc exp run --temp/--queue` runs in .dvc/tmp/exps/<tmp>/ and names the real repo in DVC_ROOT."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/mlflow.db"
    assert artifact_location(None, "sqlite:///x.db") == (tmp_path / "mlruns").as_uri()
    monkeypatch.delenv("DVC_ROOT")
    assert resolve_tracking_uri(None) == f"sqlite:///{copy}/mlflow.db"


def test_a_tracking_server_keeps_its_own_artifact_store(tmp_path):
    for server in ("http://mlflow.example:5000", "https://x", "databricks", "databricks-uc"):
        assert artifact_location("mlruns", server, root=tmp_path) is None
    assert artifact_location("s3://bucket/runs", "http://mlflow.example:5000") == "s3://bucket/runs"
    assert artifact_location(None, "sqlite:///m.db", root=tmp_path) == (tmp_path / "mlruns").as_uri()
    check_reachable("databricks")  # a remote workspace, not a bare file store: no error here


def test_every_params_yaml_mapping_is_logged_whatever_its_keys(tmp_path):
    """Keys that are data (a ``local:`` path as an audio source) cannot be MLflow parameter names: that
    mapping is logged whole as JSON, as is an empty one; the real store accepts every name."""
    params = {
        "audio": {"sources": {"asterisk": ["en"], "local:~/recordings/": ["nl"]}, "seed": 0},
        "gate": {"max_wer_delta_pp_by_language": {}, "max_wer_delta_pp": 0.5},
        "quant": {"keep_float": []},
    }
    flat = flatten(params)
    assert flat == {
        "audio.sources": '{"asterisk": ["en"], "local:~/recordings/": ["nl"]}',
        "audio.seed": "0",
        "gate.max_wer_delta_pp_by_language": "{}",
        "gate.max_wer_delta_pp": "0.5",
        "quant.keep_float": "[]",
    }
    assert flatten({"audio": {"sources": {"asterisk": ["en"], "hf:google/fleurs": ["de"]}}}) == {
        "audio.sources.asterisk": "['en']",
        "audio.sources.hf:google/fleurs": "['de']",
    }
    uri = fresh_tracking_uri(tmp_path)
    client, exp_id = open_experiment(uri, "flat")
    run_id = client.create_run(exp_id).info.run_id
    log_values(client, run_id, params=flat)
    assert client.get_run(run_id).data.params == flat


def test_a_moved_checkout_is_refused_before_artifacts_go_to_its_old_path(tmp_path, caplog):
    """Regression: MLflow keeps an experiment's absolute artifact folder; a moved checkout recreated the
    old folder and put new runs' artifacts (and registered models) there, apart from its mlruns/."""
    uri = fresh_tracking_uri(tmp_path)
    old, new = tmp_path / "old" / "mlruns", tmp_path / "new" / "mlruns"
    old.mkdir(parents=True)
    open_experiment(uri, "moved", old.as_uri())
    open_experiment(uri, "moved", old.as_uri())  # the same folder: quiet
    assert "keeps its artifacts" not in caplog.text
    open_experiment(uri, "moved", new.as_uri())  # mlflow.artifact_root changed: the old one is used
    assert f"keeps its artifacts in {old}" in caplog.text
    old.rmdir()
    message = (
        f"keeps its artifacts in {old}, which does not exist.*mkdir -p {old.parent} && ln -s {new} {old}"
    )
    with pytest.raises(TrackingError, match=message):
        open_experiment(uri, "moved", new.as_uri())
    assert not old.exists()


def test_upstream_files_keep_their_folder():
    from whisper_int8.promotion import upstream_folder

    assert upstream_folder(Path("models/fp32/model_card.json")) == "upstream/models/fp32"
    assert upstream_folder(Path("models/calibration")) == "upstream/models"
    assert upstream_folder(Path("data/audio_summary.json")) == "upstream/data"
    assert upstream_folder(Path("/abs/int8/model_card.json")) == "upstream/int8"
    assert upstream_folder(Path("../elsewhere/x.json")) == "upstream/elsewhere"


def test_a_failed_rerun_leaves_completed_runs_finished_and_their_gate_json(tmp_path, model_dirs, monkeypatch):
    """Regression: a promote stopped in a rerun marked the runs an earlier promote had completed FAILED,
    and had already rewritten gate.json with a version the runs did not name."""
    from whisper_int8 import tracking

    cfg = mlflow_cfg(tmp_path)
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 12.0}))  # refused
    promote(inputs, cfg, gate_config({}), decode={})
    written = inputs.gate_json.read_text()

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tracking, "replace_tags", stop)
    with pytest.raises(KeyboardInterrupt):
        promote(inputs, cfg, gate_config({}), decode={})
    _, runs = runs_of(cfg)
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert inputs.gate_json.read_text() == written
    # a new pipeline state that fails: its own runs are FAILED
    with pytest.raises(KeyboardInterrupt):
        promote(inputs, cfg, gate_config({"max_wer_delta_pp": 3.0}), decode={})
    _, runs = runs_of(cfg)
    assert sorted(r.info.status for r in runs) == ["FAILED"] * 3 + ["FINISHED"] * 3


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a certificate")
def test_an_https_server_with_a_private_ca_is_reachable_with_mlflows_tls_settings(tmp_path, monkeypatch):
    """Regression (a review): the /health probe verified TLS against the system CAs only, so a server
    MLflow itself reaches (MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS,
    REQUESTS_CA_BUNDLE) was refused as "cannot be reached ... start it"."""
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"https://127.0.0.1:{server.server_port}"
    settings = ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS", "REQUESTS_CA_BUNDLE")
    try:
        for name in (*settings, "CURL_CA_BUNDLE", "MLFLOW_TRACKING_CLIENT_CERT_PATH"):
            monkeypatch.delenv(name, raising=False)
        with pytest.raises(TrackingError, match="cannot be reached .*CERTIFICATE_VERIFY_FAILED"):
            check_reachable(uri)  # a private CA nobody named: refused, saying why
        for name, value in zip(settings, (str(cert), "true", str(cert)), strict=True):
            with monkeypatch.context() as env:
                env.setenv(name, value)
                check_reachable(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tmp_path / "missing.pem"))
        with pytest.raises(TrackingError, match=r"^TLS certificate .*missing\.pem unusable .*; fix MLFLOW_"):
            check_reachable(uri)
    finally:
        server.shutdown()
        server.server_close()


def test_a_password_in_the_tracking_uri_is_masked_in_messages():
    """Regression (a review): ``https://user:password@host`` went verbatim into error lines, the log and
    gate.json, a DVC metrics file that is pushed beside the results."""
    uri = f"http://bob:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError) as info:
        check_reachable(uri)
    assert "bob:***@127.0.0.1" in str(info.value) and "s3cret" not in str(info.value)
    assert masked_uri("postgresql://u:p@db/mlflow") == "postgresql://u:***@db/mlflow"
    assert masked_uri("https://ghp_token@host/x") == "https://***@host/x"  # a token as the user part
    for plain in ("https://host:5000", "databricks", "sqlite:////a/mlflow.db", "postgresql://u@db/mlflow"):
        assert masked_uri(plain) == plain


def test_a_password_in_params_tracking_uri_is_masked_in_the_runs_tags(tmp_path, model_dirs):
    """Regression (a review): params.yaml ``mlflow.tracking_uri`` went verbatim into the parent run's
    ``setting.mlflow.tracking_uri`` tag, which everyone reading the tracking server sees."""
    cfg = mlflow_cfg(tmp_path)  # where it logs: MLFLOW_TRACKING_URI overrode params.yaml's server
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}))
    inputs.params["mlflow"] = {
        "tracking_uri": "https://alice:s3cret@mlflow.example.com",
        "artifact_root": "s3://ak:sk-s3cret@bucket/mlruns",
        "experiment": cfg.experiment,
    }
    parent_id = promote(inputs, cfg, gate_config({}), decode={})["parent_run_id"]

    tags = client_for(cfg.tracking_uri).get_run(parent_id).data.tags
    assert tags["setting.mlflow.tracking_uri"] == "https://alice:***@mlflow.example.com"
    assert tags["setting.mlflow.artifact_root"] == "s3://ak:***@bucket/mlruns"
    assert tags["setting.mlflow.experiment"] == cfg.experiment
    assert not [k for k, v in tags.items() if "s3cret" in v]


def test_a_model_folder_of_links_is_registered_with_the_linked_files(tmp_path, model_dirs):
    """Regression (a review): with DVC's ``cache.type: symlink`` every file of models/int8 is a link into
    .dvc/cache, and MLflow refused to log the model ("resolved path is outside the artifact
    directory"): promote crashed after logging the runs, nothing registered."""
    linked = tmp_path / "checkout" / "models" / "int8"
    linked.mkdir(parents=True)
    for f in model_dirs["int8"].iterdir():
        (linked / f.name).symlink_to(f)
    cfg = mlflow_cfg(tmp_path)
    inputs = setup_pipeline(tmp_path, {**model_dirs, "int8": linked}, report({"en": 10.0}, {"en": 10.1}))
    result = promote(inputs, cfg, gate_config({}), decode={})

    assert result["promoted"] and result["version"] == 1
    uri = f"models:/{cfg.registered_model}/1"
    got = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl"))) / "artifacts" / "int8"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in model_dirs["int8"].iterdir())
    assert not any(p.is_symlink() for p in got.iterdir())
    assert (got / "model.pt").read_bytes() == (model_dirs["int8"] / "model.pt").read_bytes()


def test_the_parent_run_keeps_the_dvc_lock_it_was_promoted_from(tmp_path, model_dirs):
    """Regression (a review): only a digest of dvc.lock and the HEAD commit were logged; after `dvc
    repro` the new dvc.lock is not committed yet, so neither led back to the outputs judged."""
    cfg = mlflow_cfg(tmp_path)
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}))
    lock = "schema: '2.0'\nstages:\n  convert:\n    outs:\n    - path: models/int8\n      md5: 0123.dir\n"
    inputs.dvc_lock.write_text(lock, encoding="utf-8")
    parent_id = promote(inputs, cfg, gate_config({}), decode={})["parent_run_id"]

    client = client_for(cfg.tracking_uri)
    assert [f.path for f in client.list_artifacts(parent_id, "pipeline")] == ["pipeline/dvc.lock"]
    local = client.download_artifacts(parent_id, "pipeline/dvc.lock", str(tmp_path))
    assert Path(local).read_text(encoding="utf-8") == lock


def test_a_sqlite_uri_with_options_names_its_file(tmp_path, monkeypatch):
    """Regression (a review): SQLAlchemy's ``?timeout=30`` became part of the lock file's name (two
    promotes of one database took different locks) and of the relative path made absolute."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (
        resolve_tracking_uri("sqlite:///m.db?timeout=30", root=tmp_path)
        == f"sqlite:///{tmp_path}/m.db?timeout=30"
    )
    with registry.promotion_lock(f"sqlite:///{tmp_path}/m.db?timeout=30"):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["m.db.promote.lock"]
    check_reachable(f"sqlite:///{tmp_path}/m.db?timeout=30")


def test_opening_a_new_sqlite_store_waits_for_another_process_setting_it_up(tmp_path):
    """Regression (a review): two promotes opening a new mlflow.db at once (``dvc queue start -j 2``)
    both ran MLflow's schema migrations and one failed (sqlite ``duplicate column name: step``, or an
    alembic error); two creating one new experiment, the second failed with ``already exists``. Now
    the store's setup and the experiment's creation take turns on ``<db>.setup.lock``."""
    from whisper_int8.fsutil import file_lock

    db = tmp_path / "m.db"
    uri = f"sqlite:///{db}"
    got: list[str] = []
    with file_lock(tmp_path / "m.db.setup.lock"):  # another process is setting the store up
        worker = threading.Thread(target=lambda: got.append(open_experiment(uri, "exp")[1]))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive() and not db.exists()  # waits: no migrations on a half-made store
    worker.join(60)
    assert got and open_experiment(uri, "exp")[1] == got[0]


def test_the_cli_opening_a_store_being_set_up_waits_for_it(tmp_path, capsys):
    """Regression (a review): `whisper-int8 alias` (or pull, transcribe --model models:/) started while
    a promote was creating a new mlflow.db found the file there and ran MLflow's table creation on it
    at the same time, dying in an alembic traceback (``table _alembic_tmp_experiments already
    exists``). The CLI now opens the store under the same ``<db>.setup.lock``."""
    from whisper_int8 import cli
    from whisper_int8.fsutil import file_lock

    db = tmp_path / "m.db"
    db.touch()  # promote has created the file, not its tables yet
    got: list[int] = []
    args = ["alias", "--tracking-uri", f"sqlite:///{db}"]
    with file_lock(tmp_path / "m.db.setup.lock"):  # the promote setting it up
        worker = threading.Thread(target=lambda: got.append(cli.main(args)))
        worker.start()
        worker.join(3.0)
        assert worker.is_alive() and db.stat().st_size == 0  # waits: no tables made under its feet
    worker.join(60)
    assert got == [2] and "no model whisper-int8 is registered" in capsys.readouterr().err
