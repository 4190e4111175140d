"""Stage promote: log the pipeline to MLflow, register the INT8 model, move the alias if the gate passes.

Always runs (``always_changed`` in dvc.yaml): DVC's run cache must never skip the logging or the gate.
A refusal exits 0 and prints ``not promoted: <reasons>``; with ``gate.fail_on_reject`` it exits 3
(:data:`~whisper_int8.gate.REFUSED_EXIT`), which a CI job can tell from a bad input (2) and a crash (1).
"""

from dataclasses import replace
from pathlib import Path

import _preflight  # noqa: F401  (without the venv: one line saying how, not a traceback)

from whisper_int8.cli_common import run, stage_parser
from whisper_int8.evaluate import eval_split, model_dirs
from whisper_int8.fsutil import check_file_output
from whisper_int8.gate import REFUSED_EXIT, gate_config
from whisper_int8.languages import corpus_languages
from whisper_int8.params import ParamError, load_params, section
from whisper_int8.promotion import PromoteInputs, mlflow_config, promote
from whisper_int8.transcribe import decode_options


def _paths(ml: dict, key: str, where: str) -> list[Path]:
    value = ml.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParamError(f"{where}: mlflow.{key} must be a list of paths")
    return [Path(v) for v in value]


def main(args) -> int:
    params = load_params(args.params)
    ml = section(params, "mlflow", args.params)
    ev = section(params, "evaluate", args.params)
    gate = gate_config(section(params, "gate", args.params), args.params)
    audio = section(params, "audio", args.params) if "audio" in params else {}
    if gate.require_languages is True and "languages" in audio:
        # Every language the corpus asks for, not just those that made it into the split: a source
        # that failed under `on_error: skip` must not let an untested model through.
        gate = replace(gate, require_languages=corpus_languages(audio, args.params))
    cfg = mlflow_config(ml, args.params)
    eval_json = Path(args.metrics) / "eval.json"
    if not eval_json.is_file():
        raise FileNotFoundError(f"{eval_json}: not found; run the evaluate stage first (dvc repro evaluate)")
    gate_json = Path(args.metrics) / "gate.json"
    check_file_output(gate_json)  # before a version is registered and the alias moved, not after
    inputs = PromoteInputs(
        eval_json=eval_json,
        model_dirs=model_dirs(ev, args.params),
        artifacts=_paths(ml, "upstream_artifacts", args.params),
        eval_files=[
            Path(args.metrics) / n
            for n in (
                "per_language.csv",
                "latency.csv",
                "per_language.png",
                "latency.png",
                "eval.json",
                "transcripts.json",
            )
        ],
        gate_json=gate_json,
        params=params,
        eval_manifest=eval_split(ev, args.params) / "manifest.jsonl",
    )
    result = promote(inputs, cfg, gate, decode_options(ev, args.params))
    if result["passed"]:
        print(f"promoted: {cfg.registered_model}@{cfg.alias} -> version {result['version']}")
        return 0
    held = result["champion_version"]
    stays = f"version {held} stays @{cfg.alias}" if held else f"no version holds @{cfg.alias}"
    print(f"not promoted: {'; '.join(result['reasons'])} ({stays})")
    return REFUSED_EXIT if gate.fail_on_reject else 0


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.add_argument(
        "--metrics", default="metrics", help="folder with eval.json; gate.json goes there too"
    )
    run(main, parser)
