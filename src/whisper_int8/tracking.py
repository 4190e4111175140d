"""MLflow tracking: one experiment, one parent run per pipeline state, one child run per variant.

Why the promote stage (not evaluate) logs everything: DVC restores a stage from its run cache without
executing it, so anything a cached stage would log to MLflow would silently be missing. The promote
stage is ``always_changed`` and reads the files every earlier stage wrote, so each ``dvc repro`` logs.

Why runs are looked up by key: the parent run is tagged ``pipeline_key`` (a digest of ``dvc.lock``
without the promote entry, plus the evaluation report) and each child ``variant``. A re-run of the same
pipeline state finds and updates those runs instead of creating duplicates; a crash leaves the run
marked FAILED and the next attempt reuses it. Any extra runs carrying the same key are deleted.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException

from .tracking_uri import ENV_VARIABLE, TrackingError, check_reachable, masked_uri, setup_lock

log = logging.getLogger(__name__)

KEY_TAG = "pipeline_key"
ROLE_TAG = "role"
VARIANT_TAG = "variant"
PARENT_TAG = "mlflow.parentRunId"
MAX_PARAM_CHARS = 6000
MAX_PARAM_NAME_CHARS = 250
_PARAM_NAME = re.compile(r"[\w./\- :]+")  # what mlflow.utils.validation allows (POSIX)


@dataclass
class PipelineRuns:
    experiment_id: str
    parent_id: str
    children: dict[str, str]  # variant -> run id
    finished: set[str]  # runs a promote of this state completed before


def open_experiment(
    uri: str, name: str, artifact_location: str | None = None, source: str = ENV_VARIABLE
) -> tuple[MlflowClient, str]:
    """Point MLflow at ``uri`` (after a fast reachability check; ``source``: what set it) and return the
    experiment, created if new."""
    check_reachable(uri, source=source)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with setup_lock(uri):  # the client creates a new sqlite store's tables
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            exp = client.get_experiment_by_name(name)
            if exp is None:
                return client, client.create_experiment(name, artifact_location=artifact_location)
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        _check_artifact_location(name, exp.artifact_location, artifact_location)
        return client, exp.experiment_id
    except MlflowException as e:
        raise TrackingError(f"MLflow tracking URI {masked_uri(uri)}: {e.message}") from None
    except ImportError as e:  # a database URI whose driver is not installed (psycopg, pymysql...)
        raise TrackingError(
            f"MLflow tracking URI {masked_uri(uri)}: needs the database driver module {e.name or e}; "
            "install the package that provides it"
        ) from None


def _check_artifact_location(experiment: str, stored: str, wanted: str | None) -> None:
    """MLflow keeps the artifact folder an experiment was created with, as an absolute path. A moved or
    renamed checkout would write its runs' artifacts (and register models) under the old path, created
    afresh, apart from the copied ``mlruns/``: refused. A changed ``mlflow.artifact_root`` only warns."""
    if not (wanted and stored.startswith("file:") and wanted.startswith("file:")) or stored == wanted:
        return
    old = Path(url2pathname(urlparse(stored).path))
    if not old.is_dir():
        raise TrackingError(
            f"MLflow experiment '{experiment}' keeps its artifacts in {old}, which does not exist (a moved "
            f"checkout?). Move that folder back, link it there (mkdir -p {old.parent} && ln -s "
            f"{url2pathname(urlparse(wanted).path)} {old}), or log to a new experiment (params.yaml "
            "mlflow.experiment)"
        )
    log.warning(
        "MLflow experiment '%s' keeps its artifacts in %s (set when it was created), not %s; a new "
        "mlflow.experiment name would use the new folder",
        experiment, old, wanted,
    )  # fmt: skip


def _param_name_ok(name: str) -> bool:
    """MLflow's rule for a parameter name: its characters, and a path that normalizes to itself."""
    return (
        len(name) <= MAX_PARAM_NAME_CHARS
        and _PARAM_NAME.fullmatch(name) is not None
        and posixpath.normpath(name) == name
        and not name.startswith(("/", ".."))
    )


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists become their string form.

    A mapping is logged whole, as one JSON value under its own name, when it is empty (so the key
    is still there to filter on) or when one of its keys cannot be part of an MLflow parameter name:
    keys such as ``audio.sources``' ``local:~/recordings`` are data, not names.
    """
    if isinstance(obj, dict):
        if prefix and (not obj or not all(_param_name_ok(f"{prefix}{k}") for k in obj)):
            return {prefix.rstrip("."): json.dumps(obj, sort_keys=True, default=str)[:MAX_PARAM_CHARS]}
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): str(obj)[:MAX_PARAM_CHARS]}


def upsert_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    parent_id: str | None = None,
) -> tuple[str, bool]:
    """The one active run with all ``tags`` (and ``parent_id``), created if missing, extras deleted; and
    whether it had FINISHED (a promote of this state completed it before)."""
    match = dict(tags)
    if parent_id:
        match[PARENT_TAG] = parent_id
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in match.items())
    runs = client.search_runs(
        [experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY, order_by=["start_time ASC"]
    )
    for extra in runs[1:]:
        log.warning("deleting duplicate run %s (%s)", extra.info.run_id, query)
        client.delete_run(extra.info.run_id)
    if runs:
        run_id = runs[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id, runs[0].info.status == "FINISHED"
    return client.create_run(experiment_id, run_name=run_name, tags=match).info.run_id, False


def _same(held: float | None, value: float) -> bool:
    """``value`` is the metric's latest point already (NaN equals NaN here)."""
    return held is not None and (held == value or (math.isnan(held) and math.isnan(value)))


def log_values(
    client: MlflowClient,
    run_id: str,
    params: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, Any] | None = None,
) -> None:
    """Log in one batch; a re-run of a pipeline state is safe. Params MLflow already holds are skipped
    (they are immutable), and so is a metric whose latest value is the same: a rerun would otherwise add
    an identical point to its history each time (the UI's charts of a reused run)."""
    held = client.get_run(run_id).data
    existing = held.params
    new_params = [Param(k, str(v)) for k, v in (params or {}).items() if k not in existing]
    changed = {k: v for k, v in (params or {}).items() if k in existing and existing[k] != str(v)}
    if changed:
        log.warning("run %s keeps its first values for changed params %s", run_id, sorted(changed))
    now = int(time.time() * 1000)
    batch_metrics = [
        Metric(k, float(v), now, 0)
        for k, v in (metrics or {}).items()
        if not _same(held.metrics.get(k), float(v))
    ]
    batch_tags = [RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()]
    for i in range(0, max(len(new_params), len(batch_metrics), len(batch_tags)), 100):
        client.log_batch(
            run_id,
            metrics=batch_metrics[i : i + 100],
            params=new_params[i : i + 100],
            tags=batch_tags[i : i + 100],
        )


def replace_tags(client: MlflowClient, run_id: str, tags: dict[str, str | None]) -> None:
    """Set each tag to its value; one whose value is None is removed (where the run has it)."""
    held = client.get_run(run_id).data.tags
    log_values(client, run_id, tags={k: v for k, v in tags.items() if v is not None})
    for key in [k for k, v in tags.items() if v is None and k in held]:
        client.delete_tag(run_id, key)


def log_files(client: MlflowClient, run_id: str, files: Iterable[tuple[Path, str]]) -> None:
    """Log ``(local path, artifact folder)`` pairs; a folder is logged whole. Same path again overwrites."""
    for path, folder in files:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"{folder}/{path.name}")
        else:
            client.log_artifact(run_id, str(path), folder)


def start_pipeline_runs(
    client: MlflowClient, experiment_id: str, key: str, variants: Iterable[str], run_name: str
) -> PipelineRuns:
    """The parent run ``run_name`` and a child per variant, ``<variant>-<run_name's suffix>``: two
    pipeline states' INT8 runs side by side in MLflow's Compare view are told apart by name."""
    parent, parent_finished = upsert_run(
        client, experiment_id, run_name, {KEY_TAG: key, ROLE_TAG: "pipeline"}
    )
    suffix = run_name.rpartition("-")[2]
    found = {
        v: upsert_run(
            client,
            experiment_id,
            f"{v}-{suffix}",
            {KEY_TAG: key, ROLE_TAG: "variant", VARIANT_TAG: v},
            parent,
        )
        for v in variants
    }
    children = {v: run_id for v, (run_id, _) in found.items()}
    finished = {run_id for run_id, done in [(parent, parent_finished), *found.values()] if done}
    return PipelineRuns(experiment_id, parent, children, finished)


def finish(client: MlflowClient, runs: PipelineRuns, ok: bool) -> None:
    """FINISHED, or FAILED; a failed rerun of a state leaves the runs an earlier promote completed
    FINISHED (their values are this state's: a rerun logs the same ones again)."""
    for run_id in [*runs.children.values(), runs.parent_id]:
        client.set_terminated(run_id, status="FINISHED" if ok or run_id in runs.finished else "FAILED")
