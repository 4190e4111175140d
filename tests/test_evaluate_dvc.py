"""evaluate + promote under DVC: promote always runs, and a run-cache restore updates the matching run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import run_dvc, venv_env
from .eval_fixtures import client_for, fresh_tracking_uri, speech_split, tiny_int8_dir, tiny_model_dir

STAGES = ("repro", "--single-item", "evaluate_fp32", "evaluate", "promote")


def set_warmup(repo: Path, warmup: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"].update(warmup=warmup, max_tokens=4, device="cpu")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def parents(repo: Path) -> list:
    client = client_for(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("whisper-int8")
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("role") == "pipeline"]


@pytest.mark.integration
def test_promote_never_skipped_and_run_cache_reuses_the_run(dvc_repo, monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the default URI is under test here
        monkeypatch.delenv(var, raising=False)
    # Upstream outputs as the earlier stages would leave them (tiny models, a one-clip split).
    speech_split(dvc_repo / "data" / "eval", [("en", "good morning everybody")])
    (dvc_repo / "data" / "audio_summary.json").write_text('{"clips": {"en": 1}}')
    tiny_model_dir(dvc_repo / "models" / "fp32")
    tiny_int8_dir(dvc_repo / "models" / "int8")
    (dvc_repo / "models" / "calibration").mkdir(parents=True)
    (dvc_repo / "models" / "calibration" / "sensitivity.json").write_text("{}")
    fresh_tracking_uri(dvc_repo)  # the default sqlite:///mlflow.db at the repo root, already migrated
    set_warmup(dvc_repo, 1)

    first = run_dvc(dvc_repo, *STAGES)
    assert "promoted" in first.stdout  # "promoted: ..." or "not promoted: ..."
    gate1 = json.loads((dvc_repo / "metrics" / "gate.json").read_text())
    assert (dvc_repo / "mlruns").is_dir() and len(parents(dvc_repo)) == 1

    # A param change re-evaluates: a second parent run.
    set_warmup(dvc_repo, 2)
    run_dvc(dvc_repo, *STAGES)
    assert len(parents(dvc_repo)) == 2

    # Back to the first params: evaluate comes from the run cache without executing; promote still
    # runs and finds the first parent run instead of creating a third.
    set_warmup(dvc_repo, 1)
    restored = run_dvc(dvc_repo, *STAGES)
    assert "Stage 'evaluate' is cached - skipping run, checking out outputs" in restored.stdout
    assert "Running stage 'promote'" in restored.stdout
    assert len(parents(dvc_repo)) == 2
    gate3 = json.loads((dvc_repo / "metrics" / "gate.json").read_text())
    # and the version registered for it: one version per pipeline state, not one per promote
    assert gate3["parent_run_id"] == gate1["parent_run_id"] and gate3["version"] == gate1["version"]
    shown = json.loads(run_dvc(dvc_repo, "metrics", "show", "--json").stdout)
    files = next(iter(shown.values()))["data"]
    assert "wer/en" in files["metrics/eval.json"]["data"]["int8"]
    assert files["metrics/gate.json"]["data"]["passed"] is gate3["passed"]

    # Another INT8 model: only INT8 is evaluated again, the stored FP32 evaluation is reused.
    shutil.rmtree(dvc_repo / "models" / "int8")
    tiny_int8_dir(dvc_repo / "models" / "int8", seed=1)
    requant = run_dvc(dvc_repo, *STAGES)
    assert "Stage 'evaluate_fp32' didn't change, skipping" in requant.stdout
    assert "Running stage 'evaluate'" in requant.stdout and "Running stage 'promote'" in requant.stdout

    # A stored FP32 evaluation made with other settings is refused, naming them.
    baseline = dvc_repo / "metrics" / "baseline_fp32.json"
    stored = json.loads(baseline.read_text())

    def evaluate_with_stored(**config) -> subprocess.CompletedProcess:
        baseline.write_text(json.dumps({**stored, "config": {**stored["config"], **config}}))
        return subprocess.run(
            [sys.executable, "stages/evaluate.py", "--baseline", str(baseline)],
            cwd=dvc_repo, env=venv_env(), capture_output=True, text=True,
        )  # fmt: skip

    proc = evaluate_with_stored(warmup=5)
    assert proc.returncode == 2 and "FP32 evaluation made with other settings (warmup)" in proc.stderr
    # ... and so is one timed on another machine: its latencies would set the speedup.
    proc = evaluate_with_stored(host="another CPU; 64 cpus; 64 threads; torch 2.13.0")
    assert proc.returncode == 2 and "other settings (host); run `dvc repro --force" in proc.stderr
