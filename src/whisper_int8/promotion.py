"""The promote stage's work: log the pipeline to MLflow, register the INT8 model, apply the gate.

Order matters for re-runs and crashes: runs are found-or-created by pipeline key (see
:mod:`whisper_int8.tracking`), the registered version is found-or-created by the same key, and the
alias moves last, only after the version is fully tagged. A crash before that leaves the alias alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from . import registry, scoring, tracking
from .eval_report import BASELINE, CANDIDATE, deltas_for, read_eval_report
from .fsutil import atomic_write_json, sha256_file
from .gate import GateConfig, check_against_champion, check_thresholds
from .params import ParamError, reject_unknown_keys
from .pyfunc_model import WhisperPyfunc
from .tracking_uri import (
    ENV_VARIABLE,
    artifact_location,
    masked_uri,
    resolve_tracking_uri,
    tracking_uri_source,
)

log = logging.getLogger(__name__)


@dataclass
class PromoteInputs:
    eval_json: Path
    model_dirs: dict[str, Path]  # variant -> model directory
    artifacts: list[Path]  # upstream files/folders for the parent run (model cards, summaries, calibration)
    eval_files: list[Path]  # per-language CSV, charts
    gate_json: Path
    params: dict[str, Any]
    dvc_lock: Path = Path("dvc.lock")
    eval_manifest: Path | None = None  # the split's manifest.jsonl: which clips the figures come from


@dataclass
class MlflowConfig:
    tracking_uri: str
    experiment: str
    registered_model: str
    alias: str
    artifact_location: str | None = None
    tracking_uri_source: str = ENV_VARIABLE  # what an unreachable server's message says to fix


DVC_EXPERIMENT_TAGS = {"DVC_EXP_NAME": "dvc_exp_name", "DVC_EXP_BASELINE_REV": "dvc_exp_baseline_rev"}
# Settings outside the pipeline key (where runs and models are logged, the exit code on a refusal): a
# rerun that changes only them reuses its runs, whose params keep their first values. So they are
# tags, which each promote overwrites, under this prefix ("mlflow." is MLflow's own tag namespace).
SETTING_TAG_PREFIX = "setting."


def _outside_key(name: str) -> bool:
    return name.startswith("mlflow.") or name == "gate.fail_on_reject"


# settings that may hold a URI with a password or token (https://user:password@host)
URI_SETTINGS = ("mlflow.tracking_uri", "mlflow.artifact_root")


def setting_tags(settings: dict[str, str]) -> dict[str, str]:
    """The ``setting.<key>`` tags of the settings outside the pipeline key, a credential in a URI
    masked: everyone who can read the tracking server reads its runs' tags."""
    return {
        SETTING_TAG_PREFIX + k: masked_uri(v) if k in URI_SETTINGS else v
        for k, v in settings.items()
        if _outside_key(k)
    }


MLFLOW_KEYS = {
    "tracking_uri",
    "artifact_root",
    "experiment",
    "registered_model",
    "alias",
    "upstream_artifacts",
}


def mlflow_config(ml: dict[str, Any], where: str) -> MlflowConfig:
    """params ``mlflow`` checked before anything is logged: every problem names its key."""
    reject_unknown_keys(ml, "mlflow", MLFLOW_KEYS, where)
    for key in ("tracking_uri", "artifact_root"):
        if ml.get(key) is not None and (not isinstance(ml[key], str) or not ml[key]):
            raise ParamError(f"{where}: mlflow.{key}={ml[key]!r} must be null (the default) or a URI or path")
    experiment = ml.get("experiment", "whisper-int8")
    if not isinstance(experiment, str) or not experiment.strip():
        raise ParamError(f"{where}: mlflow.experiment={experiment!r} must be a name, e.g. whisper-int8")
    uri = resolve_tracking_uri(ml.get("tracking_uri"))
    return MlflowConfig(
        tracking_uri=uri,
        experiment=experiment,
        registered_model=registry.check_model_name(ml.get("registered_model", "whisper-int8"), where),
        alias=registry.check_alias(ml.get("alias", "champion"), where),
        artifact_location=artifact_location(ml.get("artifact_root"), uri),
        tracking_uri_source=tracking_uri_source(ml.get("tracking_uri"), where=where),
    )


def dvc_lock_digest(path: Path) -> str:
    """sha256 of ``dvc.lock`` without the promote entry (which changes on every promote run)."""
    if not path.is_file():
        return "no-dvc-lock"
    lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    lock.get("stages", {}).pop("promote", None)
    return hashlib.sha256(json.dumps(lock, sort_keys=True).encode()).hexdigest()


def pipeline_key(lock_digest: str, eval_json: Path, promote_inputs: dict[str, Any]) -> str:
    """The pipeline state a parent run and a logged model stand for.

    ``dvc.lock`` covers every stage but promote (its lock entry is written after it runs), so the
    promote stage's own inputs are added: the gate thresholds (which decide), the decoding options
    and the package code a logged model carries (see :func:`registry.package_digest`).
    """
    inputs = json.dumps(promote_inputs, sort_keys=True, default=str)
    return hashlib.sha256(f"{lock_digest}:{sha256_file(eval_json)}:{inputs}".encode()).hexdigest()[:32]


def eval_set_digest(report: dict[str, Any], manifest: Path | None) -> str:
    """What the error rates were measured on: the split's clips, the evaluation settings, the machine
    and the scorer.

    Two models' error rates are comparable only when this matches (see ``check_against_champion``).
    ``warmup`` changes timings only. The ``host`` (on CUDA also the ``gpu``) and
    ``int8_activation_bits`` do not: the CPU's (the GPU's) kernels and the INT8 activation bits (7 or
    8: from the CPU, WHISPER_INT8_ACTIVATION_BITS and the model's ``quant.weight_bits``) move
    transcripts, so a candidate evaluated on another machine than the champion, or with other
    activation bits, is compared by its increase over FP32 instead. So is
    one scored by another ``scoring.py``, or by other versions of the libraries it normalizes with
    (the evaluate stage records them in ``config.scorer`` when it scores, not when promote runs).
    """
    config = {k: v for k, v in report.get("config", {}).items() if k != "warmup"}
    clips = sha256_file(manifest) if manifest is not None and manifest.is_file() else "unknown"
    scorer = sha256_file(Path(scoring.__file__))
    return hashlib.sha256(json.dumps([config, clips, scorer], sort_keys=True).encode()).hexdigest()[:32]


def git_commit(root: Path = Path(".")) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def upstream_folder(path: Path) -> str:
    """Where the parent run keeps an upstream file: ``upstream/`` plus its folder as params.yaml names it.

    ``models/fp32/model_card.json`` -> ``upstream/models/fp32``: the FP32 and INT8 cards share a file
    name, and one folder would keep only the last. An absolute path keeps its folder's name.
    """
    folder = path.parent
    if folder.is_absolute() or ".." in folder.parts:
        folder = Path(folder.name)
    return "/".join(("upstream", *folder.parts))


def _existing(paths: list[Path]) -> list[Path]:
    missing = [p for p in paths if not p.exists()]
    if missing:
        log.warning("not logged (missing): %s", ", ".join(map(str, missing)))
    return [p for p in paths if p.exists()]


def variant_metrics(report: dict[str, Any], variant: str) -> dict[str, float]:
    """A child run's metrics: its own figures, deltas, speedup and size ratio (1.0 for the baseline)."""
    comp = report["comparison"]
    own = report[variant]
    ratios = (
        {"speedup": comp["speedup"], "size_ratio": comp["size_ratio"]}
        if variant == CANDIDATE
        else {"speedup": 1.0, "size_ratio": 1.0}
    )
    return {**own, **deltas_for(variant, comp), **ratios}


def promote(
    inputs: PromoteInputs, cfg: MlflowConfig, gate: GateConfig, decode: dict[str, Any]
) -> dict[str, Any]:
    """Log runs, register the candidate, judge it, tag it, move the alias if it passed.

    Returns what it writes to gate.json: the decision, its reasons and metrics, the version, the champion.
    """
    report = read_eval_report(inputs.eval_json)
    # what the fleet will pull must load as the served pyfunc loads it: a model directory missing a file
    # is refused before any logging
    WhisperPyfunc().load(inputs.model_dirs[CANDIDATE])
    lock_digest = dvc_lock_digest(inputs.dvc_lock)
    deciding = {k: v for k, v in asdict(gate).items() if k != "fail_on_reject"}  # exit code only
    key = pipeline_key(
        lock_digest,
        inputs.eval_json,
        {"gate": deciding, "decode": decode, "package": registry.package_digest()},
    )
    eval_set = eval_set_digest(report, inputs.eval_manifest)
    client, exp_id = tracking.open_experiment(
        cfg.tracking_uri, cfg.experiment, cfg.artifact_location, cfg.tracking_uri_source
    )
    runs = tracking.start_pipeline_runs(client, exp_id, key, [BASELINE, CANDIDATE], f"pipeline-{key[:8]}")
    log.info(
        "MLflow %s: experiment %s, parent run %s",
        masked_uri(cfg.tracking_uri),
        cfg.experiment,
        runs.parent_id,
    )
    ok = False
    try:
        settings = {
            **tracking.flatten(inputs.params),
            **tracking.flatten({"gate": asdict(gate)}),  # as applied (require_languages resolved)
        }
        params = {k: v for k, v in settings.items() if not _outside_key(k)} | {"dvc_lock_sha256": lock_digest}
        tags = setting_tags(settings)
        tracking.log_values(
            client, runs.parent_id, params=params, metrics=report["comparison"],
            tags={**tags, "git_commit": git_commit()},  # the last commit this state was promoted from
        )  # fmt: skip
        upstream = [(p, upstream_folder(p)) for p in _existing(inputs.artifacts)]
        tracking.log_files(client, runs.parent_id, upstream)
        tracking.log_files(client, runs.parent_id, [(p, "evaluation") for p in _existing(inputs.eval_files)])
        # the hashes of every stage's inputs and outputs (`dvc checkout` restores them): git_commit is
        # HEAD, which holds this state only once the dvc.lock that `dvc repro` just wrote is committed
        tracking.log_files(client, runs.parent_id, [(p, "pipeline") for p in _existing([inputs.dvc_lock])])
        for variant, run_id in runs.children.items():
            model_dir = inputs.model_dirs[variant]
            # the INT8 child carries what shapes the INT8 model too (the model, its calibration and
            # conversion settings): INT8 children compare across experiments in the UI
            shaping = {k: inputs.params.get(k) or {} for k in ("model", "calibrate", "quant")}
            quant = tracking.flatten(shaping) if variant == CANDIDATE else {}
            tracking.log_values(
                client,
                run_id,
                params={"variant": variant, "model_dir": str(model_dir), **report.get("config", {}), **quant},
                metrics=variant_metrics(report, variant),
            )
            cards = [
                p for p in (model_dir / "model_card.json", model_dir / "quant_config.json") if p.is_file()
            ]
            # not "model": that name is the pyfunc's, and runs:/<id>/model would download both
            tracking.log_files(client, run_id, [(p, "model_card") for p in cards])

        # one version per pipeline state: a rerun (a refused state, `dvc repro` by a teammate) judges and
        # tags the version registered for it before, without logging or registering the model again
        earlier = registry.version_for_key(client, cfg.registered_model, key)
        uri = (
            earlier.source
            if earlier
            else registry.log_pyfunc(runs.children[CANDIDATE], inputs.model_dirs[CANDIDATE], decode)
        )
        decision = check_thresholds(report, gate)
        for note in decision.notes:
            log.warning("gate: %s", note)
        with registry.promotion_lock(cfg.tracking_uri):
            current = registry.champion(client, cfg.registered_model, cfg.alias)
            if decision.passed and current is not None and current.key == key:
                # this pipeline state is the champion already: no new version, the alias stays put
                # (a fleet watching it would otherwise redeploy the same weights after every repro)
                log.info("%s@%s is version %s already", cfg.registered_model, cfg.alias, current.version)
                version = client.get_model_version(cfg.registered_model, current.version)
                # judged again like any rerun: a version put there by `alias --set --force` keeps no
                # "failed" tag from its first judgement while gate.json says it passed
                registry.tag_decision(client, cfg.registered_model, version.version, decision, eval_set)
            else:
                # looked up again under the lock, not `earlier`: a promote of the same state may have
                # registered it meanwhile, and `whisper-int8 alias` (which this lock waited for) may have
                # tagged it rolled_back; stale tags would move the alias back over a rollback
                version = registry.version_for_key(client, cfg.registered_model, key)
                version = version or registry.register(client, cfg.registered_model, uri, key)
                rolled_back = version.tags.get(registry.ROLLED_BACK_TAG)
                if decision.passed and rolled_back:
                    decision.reasons.append(
                        f"version {version.version} was {rolled_back} (whisper-int8 alias); "
                        f"`whisper-int8 alias --set {version.version} --force` puts it back"
                    )
                    decision.passed = False
                if decision.passed and current is not None:
                    decision.reasons += check_against_champion(
                        decision.metrics,
                        current.metrics,
                        gate.champion_tolerance_pp,
                        f"v{current.version}",
                        same_eval_set=current.eval_set == eval_set,
                    )
                    decision.passed = not decision.reasons
                registry.apply_decision(
                    client, cfg.registered_model, cfg.alias, version.version, decision, eval_set
                )

        result = {
            **decision.as_dict(),
            "registered_model": cfg.registered_model,
            "version": int(version.version),
            "alias": cfg.alias,
            "champion_version": int(version.version)
            if decision.passed
            else (current and int(current.version)),
            "promoted": decision.passed,
            "pipeline_key": key,
            "eval_set": eval_set,
            "gate_config": asdict(gate),
            "parent_run_id": runs.parent_id,
            "tracking_uri": masked_uri(cfg.tracking_uri),
        }
        # `dvc exp run`: the experiment's name and baseline commit, so a run leads back to `dvc exp show`;
        # on every run of this state, and removed when the last promote was not an experiment's
        exp_tags = {tag: os.environ.get(var) for var, tag in DVC_EXPERIMENT_TAGS.items()}
        for run_id in (runs.parent_id, *runs.children.values()):
            tracking.replace_tags(client, run_id, exp_tags)
        gate_tags = {"validation_status": decision.status, "model_version": version.version}
        for run_id in (runs.parent_id, runs.children[CANDIDATE]):
            tracking.log_values(
                client, run_id, metrics={"gate_passed": float(decision.passed)}, tags=gate_tags
            )
        # last: a promote stopped before this leaves the gate.json of the runs' last completed promote
        atomic_write_json(inputs.gate_json, result)
        for run_id in (runs.parent_id, runs.children[CANDIDATE]):
            tracking.log_files(client, run_id, [(inputs.gate_json, "gate")])
        ok = True
        return result
    finally:
        tracking.finish(client, runs, ok)
