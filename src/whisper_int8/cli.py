"""``whisper-int8``: pull the champion from the MLflow registry, and transcribe with it.

    whisper-int8 pull --model whisper-int8 --alias champion --dest deploy/whisper-int8
    whisper-int8 transcribe --model models:/whisper-int8@champion clip.wav [more.wav ...]
    whisper-int8 transcribe --model deploy/whisper-int8 --language en clip.wav

The tracking server is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the
current directory (the repository root after ``make repro``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .tracking_uri import RegistryError, TrackingError, check_reachable, resolve_tracking_uri

USER_ERRORS = (TrackingError, RegistryError, FileNotFoundError, ValueError)


def _connect(args: argparse.Namespace) -> str:
    import mlflow

    uri = resolve_tracking_uri(explicit=args.tracking_uri)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def cmd_pull(args: argparse.Namespace) -> int:
    from .registry import model_uri, pull

    _connect(args)
    uri = model_uri(args.model, args.alias)
    dest = pull(uri, Path(args.dest))
    print(f"pulled {uri} -> {dest}")
    return 0


def load_transcriber(spec: str, decode: dict):
    """A ``models:/`` or ``runs:/`` URI, a pulled pyfunc directory (has MLmodel), or a raw model directory."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from .pyfunc_model import WhisperPyfunc

    path = Path(spec)
    if path.is_dir() and not (path / "MLmodel").is_file():
        model = WhisperPyfunc(**decode)
        model.load(path)
        return lambda inputs: model.predict(None, inputs)
    if "://" not in spec and ":/" not in spec and not path.exists():
        raise FileNotFoundError(f"--model {spec}: no such directory, and not a models:/ or runs:/ URI")
    try:
        loaded = mlflow.pyfunc.load_model(spec)
    except MlflowException as e:
        raise RegistryError(f"--model {spec}: cannot be loaded ({e.message})") from None
    return loaded.predict


def cmd_transcribe(args: argparse.Namespace) -> int:
    if args.model.startswith(("models:/", "runs:/")):
        _connect(args)
    predict = load_transcriber(args.model, {"beam_size": args.beam_size, "max_tokens": args.max_tokens})
    for audio in args.audio:
        if not Path(audio).is_file():
            raise FileNotFoundError(f"{audio}: audio file not found")
        text = predict([{"audio": str(audio), "language": args.language}])[0]
        print(
            json.dumps({"audio": audio, "text": text}, ensure_ascii=False)
            if args.json
            else f"{audio}\t{text}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-int8",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pull", help="download a registered model version (by alias) into a directory")
    p.add_argument(
        "--model",
        default="whisper-int8",
        help="registered model name or models:/ URI (default: whisper-int8)",
    )
    p.add_argument("--alias", default="champion", help="alias to pull (default: champion)")
    p.add_argument("--dest", required=True, help="destination directory")
    p.set_defaults(func=cmd_pull)
    t = sub.add_parser("transcribe", help="transcribe audio files with a registered or local model")
    t.add_argument(
        "--model",
        default="models:/whisper-int8@champion",
        help="models:/NAME@ALIAS, runs:/..., a pulled directory or a model directory (models/int8)",
    )
    t.add_argument("--language", help="language code (default: auto-detect)")
    t.add_argument("--beam-size", type=int, help="beam size for a local model directory (default: greedy)")
    t.add_argument("--max-tokens", type=int, help="token cap per 30 s window for a local model directory")
    t.add_argument("--json", action="store_true", help="print one JSON object per file")
    t.add_argument("audio", nargs="+", help="audio files (anything ffmpeg decodes)")
    t.set_defaults(func=cmd_transcribe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
