"""The promote stage on a real temporary MLflow registry: the alias moves on a pass, stays on a refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from whisper_int8.gate import check_against_champion, check_thresholds, gate_config
from whisper_int8.params import ParamError
from whisper_int8.promotion import mlflow_config, promote
from whisper_int8.registry import champion, check_alias, first_reason
from whisper_int8.tracking_uri import RegistryError

from .conftest import REPO, venv_env
from .eval_fixtures import client_for, fresh_tracking_uri, report, tiny_model_dir
from .test_tracking import free_port, mlflow_cfg, setup_pipeline

MODEL = "whisper-int8-test"


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"fp32": tiny_model_dir(root / "fp32", seed=0), "int8": tiny_model_dir(root / "int8", seed=1)}


def run_promote(
    work: Path,
    rep: dict,
    model_dirs: dict[str, Path],
    uri: str,
    audio: dict | None = None,
    mlflow: dict | None = None,
    evaluate: dict | None = None,
    **gate,
) -> subprocess.CompletedProcess:
    """Run stages/promote.py as DVC would, in ``work`` with its own params.yaml and metrics/."""
    (work / "metrics").mkdir(parents=True, exist_ok=True)
    (work / "metrics" / "eval.json").write_text(json.dumps(rep), encoding="utf-8")
    params = {
        "model": {"source": "package:tiny"},
        "evaluate": {
            "beam_size": None,
            "max_tokens": 4,
            "models": {k: str(v) for k, v in model_dirs.items()},
            **(evaluate or {}),
        },
        "gate": gate,
        "mlflow": {
            "experiment": "exp",
            "registered_model": MODEL,
            "alias": "champion",
            "artifact_root": "mlruns",
            "upstream_artifacts": [str(model_dirs["fp32"] / "model_card.json")],
            **(mlflow or {}),
        },
    }
    if audio is not None:
        params["audio"] = audio
    (work / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    env = {**venv_env(), "MLFLOW_TRACKING_URI": uri}
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / "promote.py")],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )


def test_pass_moves_alias_and_a_refusal_leaves_it(tmp_path, model_dirs):
    uri = fresh_tracking_uri(tmp_path)
    ok = run_promote(tmp_path, report({"en": 10.0, "zh": 20.0}, {"en": 10.2, "zh": 20.3}), model_dirs, uri)
    assert ok.returncode == 0, ok.stderr
    assert "promoted: whisper-int8-test@champion -> version 1" in ok.stdout

    # Forced failure: INT8 is 2 pp worse on English, beyond the 0.5 pp limit.
    rep_bad = report({"en": 10.0, "zh": 20.0}, {"en": 12.0, "zh": 20.0})
    rep_bad["fp32"]["ref_length/zh"] = 150  # one error is 0.67 pp: a note, not a reason
    bad = run_promote(tmp_path, rep_bad, model_dirs, uri)
    assert bad.returncode == 0, bad.stderr  # a refusal is a result, not a crash
    assert (
        "not promoted: wer/en +2.00 pp over FP32 (10.00 -> 12.00; 100 -> 120 errors in 1000 words), "
        "limit 0.5 pp"
    ) in bad.stdout
    assert bad.stdout.rstrip().endswith("(version 1 stays @champion)")

    client = client_for(uri)
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == 1
    v2 = client.get_model_version(MODEL, "2")
    assert v2.tags["validation_status"] == "failed" and "wer/en +2.00 pp" in v2.tags["validation_reasons"]
    assert json.loads(v2.tags["gate_metrics"])["wer_delta/en"] == pytest.approx(2.0)
    assert client.get_model_version(MODEL, "1").tags["validation_status"] == "passed"
    gate = json.loads((tmp_path / "metrics" / "gate.json").read_text())
    assert gate["promoted"] is False and gate["version"] == 2 and gate["champion_version"] == 1
    (note,) = gate["notes"]
    assert note.startswith("cer/zh: one error is 0.667 pp") and note in bad.stderr
    assert (
        v2.tags["validation_notes"] == note
        and "validation_notes" not in client.get_model_version(MODEL, "1").tags
    )
    # The stage's default artifact root is mlruns/ beside params.yaml, not MLflow's own default.
    assert (tmp_path / "mlruns").is_dir()

    # CI mode: the same refusal exits 3 (not a crash's 1 or a bad input's 2). Regression: each rerun
    # of a refused state registered another copy of it (a registry of identical versions); it judges
    # version 2 again instead.
    ci = run_promote(tmp_path, rep_bad, model_dirs, uri, fail_on_reject=True)
    assert ci.returncode == 3 and "not promoted: wer/en +2.00 pp" in ci.stdout
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 2
    assert json.loads((tmp_path / "metrics" / "gate.json").read_text())["version"] == 2
    assert client.get_model_version(MODEL, "2").tags["validation_status"] == "failed"
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == 1


@pytest.mark.parametrize("split", [None, ""])
def test_promote_refuses_an_evaluation_split_the_evaluate_stage_refuses(tmp_path, split):
    """Regression (a review): promote run alone (`python stages/promote.py`, `dvc repro -s promote`)
    after `evaluate.split: null` ended in a TypeError traceback (an empty one read ./manifest.jsonl);
    now the evaluate stage's one-line error, before anything is registered."""
    dirs = {"fp32": tmp_path / "fp32", "int8": tmp_path / "int8"}
    proc = run_promote(tmp_path, {}, dirs, fresh_tracking_uri(tmp_path), evaluate={"split": split})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: params.yaml: evaluate.split={split!r} must be the path of a split (e.g. data/eval)"
    )


@pytest.mark.parametrize("value", ["models/fp32/model_card.json", [3], {"card": "a.json"}])
def test_upstream_artifacts_must_be_a_list_of_paths(value):
    """A single path written without brackets is refused, not read as one artifact per letter."""
    import importlib.util

    from .test_evaluate import _stage_module

    _stage_module()  # puts _preflight where the stage scripts import it from
    spec = importlib.util.spec_from_file_location("promote_stage", REPO / "stages" / "promote.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    with pytest.raises(ParamError, match=r"^p.yaml: mlflow.upstream_artifacts must be a list of paths$"):
        stage._paths({"upstream_artifacts": value}, "upstream_artifacts", "p.yaml")
    assert stage._paths({}, "upstream_artifacts", "p.yaml") == []
    listed = {"upstream_artifacts": ["a.json"]}
    assert stage._paths(listed, "upstream_artifacts", "p.yaml") == [Path("a.json")]


def test_a_gate_json_that_cannot_be_written_is_refused_before_registering(tmp_path, model_dirs):
    """Regression: promote registered a version and moved the alias, then crashed writing gate.json
    (a traceback, exit 1; the README: an unwritable output is refused before the work)."""
    uri = fresh_tracking_uri(tmp_path)
    (tmp_path / "metrics" / "gate.json").mkdir(parents=True)  # a folder where the file goes
    proc = run_promote(tmp_path, report({"en": 10.0}, {"en": 10.1}), model_dirs, uri)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().endswith("gate.json: is a folder, not a file; not replaced. Give a file path")
    assert client_for(uri).search_model_versions(f"name='{MODEL}'") == []


def test_the_listing_shows_the_gates_first_reason_whole():
    """Regression: `whisper-int8 alias` cut the first reason at the "; " inside its parentheses
    ("wer/fr +2.86 pp over FP32 (18.29 -> 21.14"), the README promising "the gate's first reason"."""
    decision = check_thresholds(
        report({"en": 10.0, "fr": 10.0}, {"en": 12.0, "fr": 13.0}),
        gate_config({"max_overall_wer_delta_pp": 9}),
    )
    first, second = decision.reasons
    assert "; " in first and first.endswith("limit 0.5 pp")
    assert first_reason("; ".join(decision.reasons)) == first
    assert first_reason(second) == second
    assert first_reason("all gate thresholds met") == "all gate thresholds met"
    # a separator outside parentheses ends a reason even where the reason goes on after it
    capped = "evaluated on the first 5 clip(s) of each language only (x); set it to null to promote"
    assert first_reason(capped) == "evaluated on the first 5 clip(s) of each language only (x)"


def test_the_alias_command_lists_versions_and_rolls_back(tmp_path, model_dirs, capsys):
    """Regression: nothing but MLflow's API could move @champion back, or clear it, after a release."""
    from whisper_int8 import cli

    uri = fresh_tracking_uri(tmp_path)
    good, bad = report({"en": 10.0}, {"en": 10.2}), report({"en": 10.0}, {"en": 12.0})
    assert run_promote(tmp_path, good, model_dirs, uri).returncode == 0  # v1, @champion
    assert run_promote(tmp_path, bad, model_dirs, uri).returncode == 0  # v2, refused
    client = client_for(uri)

    def alias(*args: str) -> tuple[int, str]:
        code = cli.main(["--tracking-uri", uri, "alias", "--model", MODEL, *args])
        out = capsys.readouterr()
        return code, out.out + out.err

    code, out = alias()
    assert (
        code == 0
        and out.splitlines()[0].startswith("v2    failed")
        and out.splitlines()[0].endswith(
            "wer/en +2.00 pp over FP32 (10.00 -> 12.00; 100 -> 120 errors in 1000 words), limit 0.5 pp"
        )
    )
    assert out.splitlines()[1].startswith("v1    passed   @champion  all gate thresholds met")
    code, out = alias("--set", "2")
    assert code == 2 and "version 2 did not pass the gate (failed: wer/en +2.00 pp" in out
    assert "pass --force" in out and int(client.get_model_version_by_alias(MODEL, "champion").version) == 1
    assert alias("--delete")[1].startswith(f"{MODEL}@champion removed (was version 1)")
    assert alias("--delete")[1].startswith(f"{MODEL}@champion points at no version: nothing to remove")
    assert cli.main(["--tracking-uri", uri, "pull", "--model", MODEL, "--dest", str(tmp_path / "d")]) == 2
    assert "no version of" in capsys.readouterr().err
    assert alias("--set", "1")[1].startswith(f"{MODEL}@champion -> version 1 (was unset)")
    code, out = alias("--set", "2", "--force")
    assert code == 0 and int(client.get_model_version_by_alias(MODEL, "champion").version) == 2
    code, out = alias("--set", "9")
    assert code == 2 and f"{MODEL} version 9:" in out
    assert alias("--force") == (2, "error: --force goes with --set VERSION\n")


def test_a_pull_after_the_alias_was_removed_says_so(tmp_path, monkeypatch):
    """Regression (a read-through of the README): after `whisper-int8 alias --delete`, which the README
    says makes a fleet's pull fail "saying why", the message counted only the versions the gate
    refused ("2 registered, 1 refused by the gate"), leaving the passed one unexplained."""
    import mlflow

    from whisper_int8.registry import ROLLED_BACK_TAG, why_not

    uri = fresh_tracking_uri(tmp_path)
    client = client_for(uri)
    client.create_registered_model(MODEL)
    for status in ("failed", "passed"):
        version = client.create_model_version(MODEL, source=str(tmp_path), tags={"validation_status": status})
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)  # why_not asks MLflow's current registry, as pull's caller set it
    mlflow.set_registry_uri(uri)
    try:
        before = why_not(f"models:/{MODEL}@champion")
        client.set_model_version_tag(MODEL, version.version, ROLLED_BACK_TAG, "taken off @champion by hand")
        message = why_not(f"models:/{MODEL}@champion")
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert before.startswith(f"no version of {MODEL} holds @champion") and "taken off" not in before
    assert "2 registered, 1 refused by the gate" in message
    assert message.endswith(
        ", 1 taken off @champion by hand (`whisper-int8 alias` lists them; `--set VERSION` points the "
        "alias back)"
    )


def test_a_rollback_holds_when_promote_runs_again_and_a_damaged_champion_can_be_moved(
    tmp_path, model_dirs, capsys
):
    """Regression: `dvc repro` after `alias --set 1` judged version 2's state again and moved the alias
    back; a champion with a damaged gate_metrics tag could not be moved off by the command."""
    from whisper_int8 import cli

    uri = fresh_tracking_uri(tmp_path)
    first, second = report({"en": 10.0}, {"en": 10.2}), report({"en": 10.0}, {"en": 10.1})
    assert run_promote(tmp_path, first, model_dirs, uri).returncode == 0  # v1
    assert run_promote(tmp_path, second, model_dirs, uri).returncode == 0  # v2, better: @champion
    client = client_for(uri)
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == 2
    client.set_model_version_tag(MODEL, "2", "gate_metrics", "{not json")
    assert cli.main(["--tracking-uri", uri, "alias", "--model", MODEL, "--set", "1"]) == 0
    assert "@champion -> version 1 (was version 2)" in capsys.readouterr().out
    client.set_model_version_tag(MODEL, "2", "gate_metrics", "{}")
    again = run_promote(tmp_path, second, model_dirs, uri)  # `dvc repro`: version 2's state again
    assert again.returncode == 0 and "version 2 was taken off @champion by hand" in again.stdout
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == 1
    assert cli.main(["--tracking-uri", uri, "alias", "--model", MODEL, "--set", "2", "--force"]) == 0
    assert "rolled_back" not in client.get_model_version(MODEL, "2").tags  # chosen by hand again


def test_unreachable_server_exits_2_with_one_line(tmp_path, model_dirs):
    uri = f"http://127.0.0.1:{free_port()}"
    proc = run_promote(tmp_path, report({"en": 10.0}, {"en": 10.0}), model_dirs, uri)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: MLflow tracking server {uri} cannot be reached")
    fix = "start it, or fix MLFLOW_TRACKING_URI, or unset MLFLOW_TRACKING_URI to use the local sqlite"
    assert line.endswith(f"{fix}:///mlflow.db")
    assert "Traceback" not in proc.stderr
    # set in params.yaml (dvc exp run -S mlflow.tracking_uri=...): the message names that key
    proc = run_promote(
        tmp_path, report({"en": 10.0}, {"en": 10.0}), model_dirs, "", mlflow={"tracking_uri": uri}
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("start it, or fix params.yaml: mlflow.tracking_uri")


def test_a_damaged_eval_json_exits_2_with_one_line_not_as_a_refusal(tmp_path, model_dirs):
    """Regression: a hand-edited eval.json without a metric was a KeyError traceback, exit 1; a user
    error exits 2, a refusal under gate.fail_on_reject 3."""
    rep = report({"en": 10.0}, {"en": 10.0})
    del rep["comparison"]["speedup"]
    proc = run_promote(tmp_path, rep, model_dirs, fresh_tracking_uri(tmp_path), fail_on_reject=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    fix = "rerun the evaluate stage (dvc repro evaluate)"
    assert proc.stderr.strip() == f"error: metrics/eval.json: no comparison.speedup in it; {fix}"


def test_not_promoted_when_worse_than_champion(tmp_path, model_dirs):
    cfg = mlflow_cfg(tmp_path)
    first = promote(
        setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}), "a"),
        cfg,
        gate_config({}),
        {},
    )
    assert first["passed"]
    # Within the FP32 thresholds, but worse than the champion's 10.1 % WER.
    second = promote(
        setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.4}), "b"),
        cfg,
        gate_config({}),
        {},
    )
    assert not second["passed"] and any("worse than champion v1" in r for r in second["reasons"])
    client = client_for(cfg.tracking_uri)
    assert int(client.get_model_version_by_alias(cfg.registered_model, "champion").version) == 1
    # A better candidate replaces the champion.
    third = promote(
        setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.0}), "c"),
        cfg,
        gate_config({}),
        {},
    )
    assert third["passed"]
    assert int(client.get_model_version_by_alias(cfg.registered_model, "champion").version) == 3


def test_a_corpus_language_missing_from_the_split_blocks_promotion(tmp_path, model_dirs):
    """`on_error: skip` can drop a whole language: the gate expects every language params ask for."""
    uri = fresh_tracking_uri(tmp_path)
    rep = report({"en": 10.0, "zh": 20.0}, {"en": 10.0, "zh": 20.0})
    proc = run_promote(tmp_path, rep, model_dirs, uri, audio={"languages": ["en", "zh", "de"]})
    assert proc.returncode == 0, proc.stderr
    assert "not promoted: languages without results for both variants: de" in proc.stdout


def test_promote_refuses_corpus_languages_that_are_not_a_list_of_codes(tmp_path, model_dirs):
    """promote alone after an edit: a bare ``en`` once required the languages e and n (fetch_audio,
    which would refuse it first, does not run when its outputs are cached)."""
    uri = fresh_tracking_uri(tmp_path)
    rep = report({"en": 10.0}, {"en": 10.0})
    for languages, says in (("en", "audio.languages must be a non-empty list"), (["EN"], "lower case: en")):
        proc = run_promote(tmp_path, rep, model_dirs, uri, audio={"languages": languages})
        assert proc.returncode == 2, proc.stdout
        assert says in proc.stderr


def test_champion_on_another_evaluation_set_is_compared_by_deltas(tmp_path, model_dirs):
    cfg = mlflow_cfg(tmp_path)

    def run(tag: str, base: float, cand: float, manifest: str) -> dict:
        inputs = setup_pipeline(tmp_path, model_dirs, report({"en": base}, {"en": cand}), tag)
        inputs.eval_manifest = tmp_path / f"manifest-{manifest}.jsonl"
        inputs.eval_manifest.write_text(f'{{"id": "{manifest}"}}\n', encoding="utf-8")
        return promote(inputs, cfg, gate_config({}), {})

    assert run("a", 10.0, 10.3, "A")["passed"]
    # Harder clips: higher error rates than the champion's, but a smaller loss against FP32.
    assert run("b", 14.0, 14.1, "B")["passed"]
    worse = run("c", 12.0, 12.4, "C")  # +0.4 pp against the champion's +0.1 on its own set
    assert not worse["passed"]
    assert (
        "wer_delta/en 0.40 worse than champion v2 (0.10, measured on another evaluation set)"
        in " | ".join(worse["reasons"])
    )
    same = run("d", 14.0, 14.15, "B")  # back on the champion's set: absolute rates are compared
    assert not same["passed"]
    assert "wer/en 14.15 worse than champion v2 (14.10), tolerance" in " | ".join(same["reasons"])


def test_unreadable_champion_metrics_are_a_clear_error(tmp_path, model_dirs):
    cfg = mlflow_cfg(tmp_path)
    first = promote(
        setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.0})), cfg, gate_config({}), {}
    )
    client = client_for(cfg.tracking_uri)
    many = {f"wer/l{i:03d}": 1.0 / 3 for i in range(400)}  # far beyond 5,000 characters of JSON
    client.set_model_version_tag(
        cfg.registered_model, str(first["version"]), "gate_metrics", json.dumps(many)
    )
    assert champion(client, cfg.registered_model, "champion").metrics == many  # stored whole
    for damaged in ('{"wer/en": 1', "[]"):  # (a review) valid JSON of another kind failed later
        client.set_model_version_tag(cfg.registered_model, str(first["version"]), "gate_metrics", damaged)
        with pytest.raises(RegistryError, match="tag gate_metrics is not a JSON object"):
            champion(client, cfg.registered_model, "champion")


def test_a_registry_that_fails_to_answer_is_an_error_not_an_empty_registry(tmp_path, model_dirs, monkeypatch):
    """Regression (a review): any error searching the versions read as "none of this state", so a
    promote registered a duplicate version; a refused alias change was a traceback in `alias`."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import (
        PERMISSION_DENIED,
        RESOURCE_DOES_NOT_EXIST,
        TEMPORARILY_UNAVAILABLE,
    )

    from whisper_int8 import registry
    from whisper_int8.tracking_uri import TrackingError

    cfg = mlflow_cfg(tmp_path)
    promote(
        setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.0})), cfg, gate_config({}), {}
    )
    client = client_for(cfg.tracking_uri)
    name = cfg.registered_model
    assert registry.version_for_key(client, "never-registered", "k") is None

    def missing(*args, **kwargs):
        raise MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST)

    monkeypatch.setattr(client, "search_model_versions", missing)  # a store that says so
    assert registry.version_for_key(client, name, "k") is None

    def unavailable(*args, **kwargs):
        raise MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(client, "search_model_versions", unavailable)
    with pytest.raises(TrackingError, match=f"^{name}: the registry's versions cannot be read: busy$"):
        registry.version_for_key(client, name, "k")

    def denied(*args, **kwargs):
        raise MlflowException("no permission", error_code=PERMISSION_DENIED)

    monkeypatch.setattr(client, "delete_registered_model_alias", denied)
    with pytest.raises(RegistryError, match=f"^{name}@champion: the registry refused the change: no perm"):
        registry.move_alias(client, name, "champion", None, cfg.tracking_uri)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


@pytest.mark.parametrize("alias", ["v1", "V12", "latest", "Latest", "prod alias", "", None, 3, "a/b"])
def test_an_alias_mlflow_would_refuse_is_refused_before_anything_is_registered(alias):
    with pytest.raises(ParamError, match=r"params.yaml: mlflow.alias=.*use letters, digits"):
        check_alias(alias)
    assert check_alias("champion-2_b") == "champion-2_b"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("registered_model", None, "mlflow.registered_model=None: use letters"),
        ("registered_model", "a/b", "mlflow.registered_model='a/b': use letters"),
        ("registered_model", "..", "mlflow.registered_model='..': use letters"),
        ("experiment", None, "mlflow.experiment=None must be a name"),
        ("experiment", " ", "mlflow.experiment=' ' must be a name"),
        ("tracking_uri", 5, "mlflow.tracking_uri=5 must be null"),
        ("tracking_uri", "", "mlflow.tracking_uri='' must be null"),
        ("artifact_root", ["a"], "mlflow.artifact_root=['a'] must be null"),
        ("registerd_model", "x", "unknown mlflow key(s) ['registerd_model']; allowed: alias, artifact_root"),
    ],
)
def test_bad_mlflow_params_are_refused_naming_the_key(key, value, message):
    ml = {"experiment": "exp", "registered_model": MODEL, key: value}
    with pytest.raises(ParamError) as e:
        mlflow_config(ml, "p.yaml")
    assert str(e.value).startswith(f"p.yaml: {message}")
    assert mlflow_config({"registered_model": "team.whisper-int8_v2"}, "p.yaml").experiment == "whisper-int8"


def test_a_bad_model_name_stops_promote_before_anything_is_logged(tmp_path, model_dirs):
    """MLflow itself refuses it only when registering, after the runs are logged (then marked FAILED)."""
    uri = fresh_tracking_uri(tmp_path)
    rep = report({"en": 10.0}, {"en": 10.0})
    out = run_promote(tmp_path, rep, model_dirs, uri, mlflow={"registered_model": "team/whisper"})
    assert out.returncode == 2 and out.stderr.startswith("error: params.yaml: mlflow.registered_model=")
    assert [e.name for e in client_for(uri).search_experiments()] in ([], ["Default"])
    assert not (tmp_path / "metrics" / "gate.json").exists()


def test_eval_set_digest_separates_hosts_and_scorers_but_not_warmup(tmp_path, monkeypatch):
    from whisper_int8 import promotion

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"id": "en-0"}\n', encoding="utf-8")
    rep = {"config": {"split": "data/eval", "warmup": 1, "host": "AVX2; int8 activations 7-bit"}}
    digest = promotion.eval_set_digest(rep, manifest)
    warm = {"config": {**rep["config"], "warmup": 3}}
    vnni = {"config": {**rep["config"], "host": "AVX512_VNNI; int8 activations 8-bit"}}
    assert promotion.eval_set_digest(warm, manifest) == digest
    assert promotion.eval_set_digest(vnni, manifest) != digest
    scorer = tmp_path / "scoring.py"
    scorer.write_text("# another normalizer\n", encoding="utf-8")
    monkeypatch.setattr(promotion.scoring, "__file__", str(scorer))
    other_scorer = promotion.eval_set_digest(rep, manifest)
    assert other_scorer != digest
    # (a review) so do the libraries it normalizes with, as the evaluate stage recorded them when it scored
    newer = {"config": {**rep["config"], "scorer": "num2words 99.0"}}
    assert promotion.eval_set_digest(newer, manifest) not in (digest, other_scorer)


def _waiting_on(lock: Path) -> bool:
    """Whether some process or thread is blocked in flock() on ``lock`` (Linux: ``->`` in /proc/locks)."""
    inode = lock.stat().st_ino
    return any("->" in line and f":{inode} " in line for line in Path("/proc/locks").read_text().splitlines())


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="needs Linux /proc/locks")
def test_a_rollback_made_while_promote_waits_for_the_lock_holds(tmp_path, model_dirs):
    """Regression (a review): promote read its version's tags before taking the promote lock, so a
    `whisper-int8 alias --set 1` it waited for (tagging version 2 rolled_back) was undone by the
    promote of version 2's state moving the alias back with the stale tags."""
    import fcntl
    import threading
    import time

    from whisper_int8 import registry

    cfg = mlflow_cfg(tmp_path)
    first = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.2}), "a")
    second = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}), "b")
    assert promote(first, cfg, gate_config({}), {})["passed"]
    assert promote(second, cfg, gate_config({}), {})["passed"]  # better: version 2 @champion
    client = client_for(cfg.tracking_uri)
    lock = Path(cfg.tracking_uri.removeprefix("sqlite:///") + ".promote.lock")
    result: dict = {}
    with open(lock, "a") as held:  # the alias command holds the lock...
        fcntl.flock(held, fcntl.LOCK_EX)
        rerun = threading.Thread(  # ...while `dvc repro` promotes version 2's state again
            target=lambda: result.update(promote(second, cfg, gate_config({}), {}))
        )
        rerun.start()
        deadline = time.monotonic() + 120
        while not _waiting_on(lock):
            assert rerun.is_alive() and time.monotonic() < deadline, "promote never waited for the lock"
            time.sleep(0.05)
        before = client.get_model_version_by_alias(cfg.registered_model, "champion")
        registry._move(client, cfg.registered_model, "champion", "1", before, force=False)  # the rollback
    rerun.join()
    assert not result["passed"] and "version 2 was taken off @champion by hand" in result["reasons"][0]
    assert int(client.get_model_version_by_alias(cfg.registered_model, "champion").version) == 1


def test_a_champion_whose_gate_metrics_are_not_numbers_is_a_clear_error(tmp_path, model_dirs):
    """Regression (a review): a gate_metrics tag edited to hold a string or null crashed promote with a
    TypeError traceback (exit 1) when the candidate was compared with it."""
    cfg = mlflow_cfg(tmp_path)
    first = promote(
        setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.0}), "a"),
        cfg,
        gate_config({}),
        {},
    )
    client = client_for(cfg.tracking_uri)
    for i, damaged in enumerate(('{"wer/en": "10.0"}', '{"wer/en": null}', '{"wer/en": true}')):
        client.set_model_version_tag(cfg.registered_model, str(first["version"]), "gate_metrics", damaged)
        inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}), f"b{i}")
        with pytest.raises(RegistryError, match="tag gate_metrics is not a JSON object of numbers"):
            promote(inputs, cfg, gate_config({}), {})
    assert len(client.search_model_versions(f"name='{cfg.registered_model}'")) == 1  # nothing registered


def test_a_champion_the_gate_never_judged_is_not_replaced_unchecked(tmp_path, model_dirs):
    """Regression (a review): a version registered by another tool (no gate_metrics tag) holding
    @champion was replaced by any candidate within the thresholds, the comparison with the champion
    silently empty; the candidate is refused, saying what to do, and the alias stays."""
    cfg = mlflow_cfg(tmp_path)
    client = client_for(cfg.tracking_uri)
    client.create_registered_model(cfg.registered_model)
    exp = client.create_experiment("another-tool", artifact_location=(tmp_path / "other").as_uri())
    run = client.create_run(exp)
    client.log_artifact(run.info.run_id, str(model_dirs["int8"] / "model_card.json"), "model")
    foreign = client.create_model_version(
        cfg.registered_model, f"runs:/{run.info.run_id}/model", run.info.run_id
    )
    client.set_registered_model_alias(cfg.registered_model, "champion", foreign.version)
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.4}), "a")
    result = promote(inputs, cfg, gate_config({}), {})
    assert not result["passed"] and result["champion_version"] == 1
    assert result["reasons"][0].startswith("champion v1 records no gate metrics to compare with")
    assert "whisper-int8 alias --delete" in result["reasons"][0]
    assert int(client.get_model_version_by_alias(cfg.registered_model, "champion").version) == 1
    assert check_against_champion({"wer/en": 10.4, "error_rate/overall": 10.4}, {}, 0.0, "v1")


def test_a_rerun_of_the_champions_state_tags_it_as_judged(tmp_path, model_dirs):
    """Regression (a review): a version forced onto @champion (`alias --set N --force`) after the gate
    refused it kept validation_status=failed when a rerun of its state passed ("promoted: ...
    -> version 2" and gate.json passed, while `whisper-int8 alias` listed it failed)."""
    from whisper_int8 import registry

    cfg = mlflow_cfg(tmp_path)
    client = client_for(cfg.tracking_uri)
    assert promote(
        setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.0}), "a"),
        cfg,
        gate_config({}),
        {},
    )["passed"]
    second = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.3}), "b")
    assert not promote(second, cfg, gate_config({}), {})["passed"]  # worse than version 1
    registry.move_alias(client, cfg.registered_model, "champion", "2", cfg.tracking_uri, force=True)
    again = promote(second, cfg, gate_config({}), {})
    assert again["passed"] and again["version"] == 2
    tags = client.get_model_version(cfg.registered_model, "2").tags
    assert (tags["validation_status"], tags["validation_reasons"]) == ("passed", "all gate thresholds met")
    assert int(client.get_model_version_by_alias(cfg.registered_model, "champion").version) == 2


def test_the_alias_command_reads_a_sqlite_uri_with_options(tmp_path, model_dirs, capsys):
    """Regression (review of 19ebe04): promote took ``sqlite:///mlflow.db?timeout=30`` (README: options
    kept), but `whisper-int8 alias` / `pull` looked for a file named ``mlflow.db?timeout=30`` and said
    "no MLflow database here"."""
    from whisper_int8 import cli

    uri = fresh_tracking_uri(tmp_path)
    assert run_promote(tmp_path, report({"en": 10.0}, {"en": 10.2}), model_dirs, uri).returncode == 0
    code = cli.main(["--tracking-uri", f"{uri}?timeout=30", "alias", "--model", MODEL])
    out = capsys.readouterr()
    assert code == 0 and "no MLflow database here" not in out.err, out.err
    assert out.out.splitlines()[0].startswith("v1    passed   @champion")


def test_a_champion_removed_by_hand_stays_removed_when_promote_runs_again(tmp_path, model_dirs):
    """`whisper-int8 alias --delete` (the fleet's pull then fails saying why) holds over a `dvc repro` of
    the removed version's state, as a rollback to another version does: with no champion left to
    compare with, only the rolled_back tag keeps the alias off."""
    from whisper_int8 import registry

    cfg = mlflow_cfg(tmp_path)
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}), "a")
    assert promote(inputs, cfg, gate_config({}), {})["passed"]
    client = client_for(cfg.tracking_uri)
    registry.move_alias(client, cfg.registered_model, "champion", None, cfg.tracking_uri)
    again = promote(inputs, cfg, gate_config({}), {})
    assert not again["passed"] and again["champion_version"] is None
    assert again["reasons"][0].startswith("version 1 was taken off @champion by hand")
    assert registry.champion(client, cfg.registered_model, "champion") is None


def test_champion_tolerance_is_the_one_promote_applies(tmp_path, model_dirs):
    """gate.champion_tolerance_pp: a candidate this much worse than the champion still replaces it."""
    cfg = mlflow_cfg(tmp_path)
    gate = gate_config({"champion_tolerance_pp": 0.5})
    first = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.1}), "a")
    assert promote(first, cfg, gate, {})["passed"]
    second = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 10.4}), "b")  # 0.3 pp worse
    result = promote(second, cfg, gate, {})
    assert result["passed"] and result["version"] == result["champion_version"] == 2, result["reasons"]
    holder = client_for(cfg.tracking_uri).get_model_version_by_alias(cfg.registered_model, "champion")
    assert int(holder.version) == 2


def test_a_rerun_of_a_registered_state_does_not_log_the_model_again(tmp_path, model_dirs, monkeypatch):
    """The version registered for a pipeline state is judged again from its logged model: a rerun
    (a refused state, `dvc repro` by a teammate) does not upload the model a second time."""
    from whisper_int8 import registry

    cfg = mlflow_cfg(tmp_path)
    inputs = setup_pipeline(tmp_path, model_dirs, report({"en": 10.0}, {"en": 12.0}), "a")
    assert not promote(inputs, cfg, gate_config({}), {})["passed"]
    logged = []
    log_pyfunc = registry.log_pyfunc
    monkeypatch.setattr(registry, "log_pyfunc", lambda *a: logged.append(a) or log_pyfunc(*a))
    assert promote(inputs, cfg, gate_config({}), {})["version"] == 1
    assert logged == []
    monkeypatch.setattr(registry, "log_pyfunc", lambda *a: logged.append(a) or log_pyfunc(*a))
    assert promote(inputs, cfg, gate_config({}), {})["version"] == 1
    assert logged == []


def test_the_pipeline_key_ignores_the_promote_entry_of_dvc_lock(tmp_path):
    """Each promote rewrites its own dvc.lock entry (gate.json's new hash): were it in the digest, every
    `dvc repro` after a promote would be a new pipeline state, registering a new version of the same model."""
    from whisper_int8.promotion import dvc_lock_digest

    lock = tmp_path / "dvc.lock"

    def digest(stages: dict) -> str:
        lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}), encoding="utf-8")
        return dvc_lock_digest(lock)

    evaluate = {"cmd": "python stages/evaluate.py", "outs": [{"path": "metrics/eval.json", "md5": "a1"}]}
    promote_entry = {"cmd": "python stages/promote.py", "outs": [{"path": "metrics/gate.json", "md5": "b1"}]}
    before = digest({"evaluate": evaluate})
    assert digest({"evaluate": evaluate, "promote": promote_entry}) == before
    assert digest({"evaluate": evaluate, "promote": {**promote_entry, "outs": [{"md5": "b2"}]}}) == before
    assert digest({"evaluate": {**evaluate, "outs": [{"path": "metrics/eval.json", "md5": "a2"}]}}) != before
