"""MLflow model registry: log the INT8 model as a pyfunc, register a version, tag it, move the alias; pull.

A version carries the tags ``validation_status`` (passed|failed), ``validation_reasons`` (and
``validation_notes``), ``gate_metrics`` (JSON, read back when a later candidate is compared with the
champion) and ``pipeline_key``. One version per pipeline state, so the registry is the full record of
gate decisions; a re-run of the same state judges and tags the version registered for it
(:func:`version_for_key`) instead of logging and registering the model a second time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

import whisper_int8

from . import serving_env
from .fsutil import replace_dir, staging_dir
from .gate import Decision
from .params import ParamError
from .pyfunc_model import MODEL_DIR_ARTIFACT, SIGNATURE
from .tracking import KEY_TAG
from .tracking_uri import RegistryError, TrackingError, masked_uri, store_lock

# MLflow's rule for alias names: letters, digits, - and _; "latest" and v<digits> name versions.
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")

log = logging.getLogger(__name__)


EVAL_SET_TAG = "eval_set"
ROLLED_BACK_TAG = "rolled_back"  # `whisper-int8 alias` moved the alias off it: promote leaves it off


@dataclass
class Champion:
    version: str
    metrics: dict[str, float]
    eval_set: str | None  # digest of what it was evaluated on (None: recorded before the tag existed)
    key: str | None  # the pipeline state it was registered for


def package_digest() -> str:
    """sha256 of what a logged model carries besides its weights: the package code and the pins.

    Part of the key under which a logged model is reused, so a fix to the served code is never
    hidden behind an older upload of the same weights.
    """
    h = hashlib.sha256("\n".join(serving_env.requirements() + serving_env.constraints()).encode())
    h.update(code_digest(Path(whisper_int8.__file__).parent).encode())
    return h.hexdigest()


def code_digest(package: Path) -> str:
    """sha256 over the ``.py`` files of a ``whisper_int8`` package folder (installed, or a model's code/)."""
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def logged_code_differs(model_path: Path) -> bool:
    """Whether the package code logged with the pyfunc model at ``model_path`` is not this install's.

    In a process that has imported ``whisper_int8`` already (the CLI), MLflow puts the model's code/
    on sys.path but the imported modules stay: the model then runs this install's code, not its own.
    """
    logged = model_path / "code" / whisper_int8.__name__
    return logged.is_dir() and code_digest(logged) != code_digest(Path(whisper_int8.__file__).parent)


def without_links(model_dir: Path, scratch: Path) -> Path:
    """``model_dir``, or a copy of it under ``scratch`` holding the files its links point to.

    MLflow refuses to log an artifact whose real path is outside the folder logged ("resolved path is
    outside the artifact directory"): a model folder linked from another disk, or DVC's
    ``cache.type: symlink``, which links every output file into ``.dvc/cache``.
    """
    if not model_dir.is_symlink() and not any(p.is_symlink() for p in model_dir.rglob("*")):
        return model_dir
    copy = scratch / model_dir.name
    shutil.copytree(model_dir, copy)  # symlinks=False: the linked files' contents, not the links
    return copy


def log_pyfunc(run_id: str, model_dir: Path, decode: dict[str, Any]) -> str:
    """Log ``model_dir`` as the artifact of a :class:`WhisperPyfunc` in run ``run_id``; returns its URI.

    Models-from-code (:mod:`whisper_int8.pyfunc_entry`): no pickle in the logged model. No input
    example: it would need audio, and MLflow would transcribe it to validate the example. The
    environment: :mod:`whisper_int8.serving_env` (MLflow copies the constraints file into the model).
    """
    with (
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(run_id=run_id),
        warnings.catch_warnings(),
    ):
        pins = Path(tmp, "constraints.txt")
        pins.write_text("\n".join(serving_env.constraints()) + "\n", encoding="utf-8")
        warnings.filterwarnings("ignore", message=".*input example was not provided")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            model_config=decode,
            artifacts={MODEL_DIR_ARTIFACT: str(without_links(model_dir, Path(tmp)))},
            signature=SIGNATURE,
            code_paths=[str(Path(whisper_int8.__file__).parent)],
            pip_requirements=[*serving_env.requirements(), f"-c {pins}"],
        )
    return info.model_uri


def why_not(uri: str) -> str:
    """What the registry holds instead of ``models:/<name>@<alias>``: after a `make repro` whose gate
    refused the model, the alias is missing although a version is registered."""
    found = re.fullmatch(r"models:/([^/@]+)@(.+)", uri)
    if not found:
        return "check the model URI (`mlflow ui` lists the registered models)"
    name, alias = found.groups()
    client = MlflowClient()
    try:
        client.get_model_version_by_alias(name, alias)
        return "the alias exists: the message above says what failed"
    except MlflowException as e:
        # a missing model: RESOURCE_DOES_NOT_EXIST; a missing alias of one: INVALID_PARAMETER_VALUE
        if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return "check the model name and alias (`mlflow ui` lists them)"
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        versions = []
    if not versions:
        return f"no model {name} is registered there; the promote stage (`dvc repro`) registers one"
    failed = sum(v.tags.get("validation_status") == "failed" for v in versions)
    # after `whisper-int8 alias --delete` a passed version holds no alias either: "N refused by the
    # gate" alone left it unexplained
    removed = sum(ROLLED_BACK_TAG in v.tags for v in versions)
    by_hand = (
        f", {removed} taken off @{alias} by hand (`whisper-int8 alias` lists them; `--set VERSION` "
        "points the alias back)"
        if removed
        else ""
    )
    return (
        f"no version of {name} holds @{alias}: {len(versions)} registered, {failed} refused by the gate "
        "(their validation_reasons tag and metrics/gate.json say why; the alias moves only on a pass)"
        + by_hand
    )


def version_for_key(client: MlflowClient, name: str, key: str) -> ModelVersion | None:
    """The latest version registered for the same pipeline state, if any."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        # not "none": a registry that failed to answer would get a duplicate version of this state
        raise TrackingError(f"{name}: the registry's versions cannot be read: {e.message}") from None
    matches = [v for v in versions if v.tags.get(KEY_TAG) == key]
    return max(matches, key=lambda v: int(v.version)) if matches else None


def register(client: MlflowClient, name: str, model_uri: str, key: str) -> ModelVersion:
    mv = mlflow.register_model(model_uri, name, tags={KEY_TAG: key})
    log.info("registered %s version %s", name, mv.version)
    return client.get_model_version(name, mv.version)


def check_model_name(name: Any, where: str = "params.yaml") -> str:
    """``mlflow.registered_model`` as MLflow and a ``models:/<name>@<alias>`` URI both accept it.

    MLflow refuses a bad name only when registering, after the runs are logged; and YAML's null
    would otherwise register a model called "None".
    """
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name) or set(name) == {"."}:
        raise ParamError(
            f"{where}: mlflow.registered_model={name!r}: use letters, digits, '.', '-' and '_' "
            "(no '/', ':', '@' or spaces: it goes into models:/<name>@<alias>), e.g. whisper-int8"
        )
    return name


def check_alias(alias: Any, where: str = "params.yaml") -> str:
    """``mlflow.alias`` as MLflow will accept it, checked before anything is logged or registered.

    MLflow refuses a bad alias only when it moves it, after the version is registered and tagged.
    """
    if (
        not isinstance(alias, str)
        or not _ALIAS.fullmatch(alias)
        or alias.lower() == "latest"
        or re.fullmatch(r"[vV]\d+", alias)
    ):
        raise ParamError(
            f"{where}: mlflow.alias={alias!r}: use letters, digits, - and _ (not 'latest' nor v<number>, "
            "which name versions), e.g. champion"
        )
    return alias


def _by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points to, or None when there is none yet. Other registry errors raise."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        # No such model: RESOURCE_DOES_NOT_EXIST; a model without that alias: INVALID_PARAMETER_VALUE.
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise TrackingError(f"{name}@{alias} cannot be read: {e.message}") from None


def champion(client: MlflowClient, name: str, alias: str) -> Champion | None:
    """The version ``alias`` points to, with what the gate recorded on it; None when there is none."""
    mv = _by_alias(client, name, alias)
    if mv is None:
        return None
    try:
        metrics = json.loads(mv.tags.get("gate_metrics", "{}"))
        # the values are compared with the candidate's: a string or null would be a TypeError there
        if not isinstance(metrics, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()
        ):
            raise json.JSONDecodeError("not an object of numbers", "", 0)
    except json.JSONDecodeError:
        raise RegistryError(
            f"{name} version {mv.version} (@{alias}): tag gate_metrics is not a JSON object of numbers; fix "
            f"or delete the tag, or move the alias (`mlflow ui`) to a version promoted by this pipeline"
        ) from None
    return Champion(mv.version, metrics, mv.tags.get(EVAL_SET_TAG), mv.tags.get(KEY_TAG))


def promotion_lock(tracking_uri: str) -> contextlib.AbstractContextManager[None]:
    """One promote at a time from reading the champion to moving the alias, for a sqlite registry.

    Two promotes sharing ``mlflow.db`` (``dvc queue start -j 2``) would each compare with the same old
    champion and both move the alias: the later one wins, even if it is worse than the other. The lock
    is a file beside the database (``<db>.promote.lock``). A tracking server has no such lock (MLflow
    has no compare-and-set on aliases): promote against one server one run at a time.
    """
    # released when the file closes, also if the process dies
    return store_lock(tracking_uri, "promote", "waiting for another promote on this registry")


# Human-readable tags are cut to fit any store; gate_metrics and eval_set are read back, never cut
# (MLflow 3 allows 100,000 characters per model-version tag).
REASONS_MAX_CHARS = 5000


def apply_decision(
    client: MlflowClient, name: str, alias: str, version: str, decision: Decision, eval_set: str
) -> None:
    """Tag the version with the gate result; move ``alias`` to it only when it passed."""
    tag_decision(client, name, version, decision, eval_set)
    if decision.passed:
        client.set_registered_model_alias(name, alias, version)


def tag_decision(client: MlflowClient, name: str, version: str, decision: Decision, eval_set: str) -> None:
    """Tag the version with the gate result (``validation_status``, reasons, notes, metrics, eval set)."""
    tags = {
        "validation_status": decision.status,
        "validation_reasons": ("; ".join(decision.reasons) or "all gate thresholds met")[:REASONS_MAX_CHARS],
        "gate_metrics": json.dumps(decision.metrics, sort_keys=True),
        EVAL_SET_TAG: eval_set,
    }
    if decision.notes:
        tags["validation_notes"] = "; ".join(decision.notes)[:REASONS_MAX_CHARS]
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)


def first_reason(reasons: str) -> str:
    """The first of the gate's reasons joined by ``"; "``. A reason holds ``"; "`` itself, inside its
    parentheses (``wer/fr +2.86 pp over FP32 (18.29 -> 21.14; 32 -> 37 errors ...), limit 0.5 pp``):
    only a separator outside them ends it, so the listing does not cut a reason mid-figure."""
    depth = 0
    for i, char in enumerate(reasons):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth <= 0 and reasons.startswith("; ", i):
            return reasons[:i]
    return reasons


def versions_table(client: MlflowClient, name: str, alias: str) -> list[str]:
    """One line per registered version, newest first: its gate status, the alias where it points, and
    the gate's first reason; what to read before moving the alias by hand."""
    try:
        versions = client.search_model_versions(f"name='{name}'", order_by=["version_number DESC"])
    except MlflowException as e:
        raise TrackingError(f"registered model {name} cannot be read: {e.message}") from None
    if not versions:
        raise RegistryError(f"no model {name} is registered; the promote stage (`dvc repro`) registers one")
    holder = _by_alias(client, name, alias)  # not champion(): a damaged tag must not stop a rollback
    lines = []
    for v in versions:
        status = v.tags.get("validation_status", "unjudged")
        mark = f"@{alias}" if holder and str(holder.version) == str(v.version) else ""
        reason = first_reason(v.tags.get("validation_reasons", ""))
        lines.append(f"v{v.version:<4} {status:<8} {mark:<{len(alias) + 1}}  {reason}".rstrip())
    return lines


def move_alias(
    client: MlflowClient, name: str, alias: str, version: str | None, tracking_uri: str, force: bool = False
) -> str | None:
    """Point ``alias`` at ``version`` (a rollback), or remove it (None); returns the version it left.

    Only a version the gate passed, unless ``force``: a fleet pulling ``@alias`` trusts that it did.
    Under the promote lock, so a promote running meanwhile does not compare with a stale champion.
    """
    with promotion_lock(tracking_uri):
        before = _by_alias(client, name, alias)
        try:
            _move(client, name, alias, version, before, force)
        except MlflowException as e:  # a server's 403 or 5xx: one line, not a traceback
            raise RegistryError(f"{name}@{alias}: the registry refused the change: {e.message}") from None
    return str(before.version) if before else None


def _move(
    client: MlflowClient, name: str, alias: str, version: str | None, before: ModelVersion | None, force: bool
) -> None:
    """:func:`move_alias`'s change, the promote lock held."""
    if version is not None:
        try:
            mv = client.get_model_version(name, version)
        except MlflowException as e:
            raise RegistryError(f"{name} version {version}: {e.message}") from None
        status = mv.tags.get("validation_status")
        if status != "passed" and not force:
            reasons = mv.tags.get("validation_reasons", "not judged by the gate")
            raise RegistryError(
                f"{name} version {version} did not pass the gate ({status or 'unjudged'}: {reasons}); "
                f"pass --force to point @{alias} at it anyway"
            )
        client.set_registered_model_alias(name, alias, version)
        if ROLLED_BACK_TAG in mv.tags:  # chosen by hand again
            client.delete_model_version_tag(name, version, ROLLED_BACK_TAG)
    elif before is not None:
        client.delete_registered_model_alias(name, alias)
    if before is not None and str(before.version) != str(version):
        # the next `dvc repro` of its pipeline state would judge it again and move the alias back
        client.set_model_version_tag(name, before.version, ROLLED_BACK_TAG, f"taken off @{alias} by hand")


def model_uri(spec: str, alias: str | None = None) -> str:
    """``whisper-int8`` + alias -> ``models:/whisper-int8@champion``; a full ``models:/`` URI is kept."""
    if spec.startswith(("models:/", "runs:/")):
        return spec
    return f"models:/{spec}@{alias}" if alias else f"models:/{spec}"


def pull(uri: str, dest: Path) -> Path:
    """Download the pyfunc model at ``uri`` into ``dest`` (MLmodel, weights, code); returns ``dest``.

    Atomic: ``dest`` is replaced whole once the download is complete, so a failed or interrupted pull
    leaves the previously pulled model as it was, never a mix of two versions. Only a previous pull
    (a directory with an MLmodel file) or an empty directory is replaced: anything else at ``dest`` is
    refused, not deleted. A symlink at ``dest`` stays, and the directory it points to is replaced.
    """
    dest = Path(os.path.abspath(dest))  # "." names no directory to stage a download beside
    # an empty folder is replaced too, but not the one a shell stands in, nor a mount point
    empty = dest.is_dir() and not any(dest.iterdir()) and not os.path.ismount(dest)
    here = dest.is_dir() and Path.cwd().resolve().is_relative_to(dest.resolve())
    # the current directory is never replaced, even a pulled one: the shell would stand in an unlinked one
    if here or (dest.exists() and not (dest / "MLmodel").is_file() and not empty):
        why = "exists and is not a pulled model (no MLmodel file)"
        why = "is or holds the current directory" if here else why
        raise RegistryError(
            f"{dest}: {why}; pull into a new directory or one an earlier pull wrote, which is replaced"
        )
    store = masked_uri(mlflow.get_tracking_uri())
    try:
        with staging_dir(dest) as tmp:
            # runs:/<id>/model lands in tmp/model, models:/ in tmp itself: use the path MLflow returns.
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
            if not (got / "MLmodel").is_file():
                raise RegistryError(
                    f"{uri}: downloaded from {store} but has no MLmodel file; not a pyfunc model"
                )
            replace_dir(got, dest)
    except MlflowException as e:
        raise RegistryError(f"{uri}: cannot be pulled from {store} ({e.message}); {why_not(uri)}") from None
    except OSError as e:
        raise TrackingError(f"{uri}: download from {store} failed: {e}") from None
    return dest
