"""whisper-int8: pull the champion from the MLflow registry, and transcribe with it.

    whisper-int8 pull --model whisper-int8 --alias champion --dest deploy/whisper-int8
    whisper-int8 alias                 # versions, gate results, where @champion points
    whisper-int8 alias --set 3         # roll @champion back to version 3 (one the gate passed)
    whisper-int8 transcribe --model models:/whisper-int8@champion clip.wav [more.wav ...]
    whisper-int8 transcribe --model deploy/whisper-int8 --language en clip.wav

The tracking server is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else ``params.yaml``'s
``mlflow.tracking_uri`` when run in the repository (its root, where promote wrote), else
``sqlite:///mlflow.db`` in the current directory; a database file that is not there is an error, never
created empty. The default model name and alias are ``mlflow.registered_model`` / ``mlflow.alias`` there too
(else whisper-int8 / champion).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .fsutil import lock_if_possible
from .params import positive_int, window_token_cap
from .stdio import exit_if_stdout_closed, printable, tsv_field
from .tracking_uri import (
    SQLITE,
    RegistryError,
    TrackingError,
    check_reachable,
    masked_uri,
    resolve_tracking_uri,
    setup_lock,
    sqlite_file,
    tracking_uri_source,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

USER_ERRORS: tuple[type[BaseException], ...] = (TrackingError, RegistryError, FileNotFoundError, ValueError)
PARAMS = Path("params.yaml")
KEEP_DECODED_BYTES = 64 << 20  # about 17 minutes of 16 kHz float32 audio held between the two passes
DEFAULT_NAME, DEFAULT_ALIAS = "whisper-int8", "champion"
MAX_BEAM = 64  # --beam-size: far past any accuracy gain, well within a laptop's memory for base
log = logging.getLogger("whisper-int8")


def repo_mlflow(path: Path = PARAMS) -> dict[str, str]:
    """``params.yaml``'s ``mlflow`` settings when the CLI runs in the repository: the registry (and model
    name and alias) promote wrote to. Elsewhere (a deployment host, another project's params.yaml
    without that section): nothing, the built-in defaults. Read only by what talks to MLflow."""
    if not path.is_file():
        return {}
    from .params import ParamError, load_params

    ml = load_params(path, sections=False).get("mlflow")  # perhaps another project's file
    if not isinstance(ml, dict):
        return {}
    keys = ("tracking_uri", "registered_model", "alias")
    for key in keys:
        if ml.get(key) is not None and not isinstance(ml[key], str):
            raise ParamError(f"{path}: mlflow.{key} must be a string, got {ml[key]!r}")
    return {k: ml[k] for k in keys if ml.get(k)}


def registered_uri(model: str | None, alias: str | None) -> str:
    """The registry URI for ``--model`` / ``--alias``; either left out: params.yaml's mlflow name / alias
    in the repository, else whisper-int8 / champion."""
    from .registry import model_uri

    if alias is not None and model is not None and model.startswith(("models:/", "runs:/")):
        raise ValueError(f"--alias {alias}: for a registered model name; --model {model} is a URI already")
    repo = repo_mlflow()
    return model_uri(
        model or repo.get("registered_model", DEFAULT_NAME), alias or repo.get("alias", DEFAULT_ALIAS)
    )


# (module, error) raised only once their module is loaded: importing one (torch, whisper) just to catch
# its error would add seconds to every other error.
LOADED_ERRORS = (("model_sources", "ModelSourceError"), ("quant.cpu", "BackendError"))


def user_errors() -> tuple[type[BaseException], ...]:
    """:data:`USER_ERRORS`, plus those of :data:`LOADED_ERRORS` whose module is loaded."""
    loaded = (getattr(sys.modules.get(f"{__package__}.{m}"), name, None) for m, name in LOADED_ERRORS)
    return (*USER_ERRORS, *(e for e in loaded if e is not None))


def _connect(args: argparse.Namespace) -> str:
    """Point MLflow at the registry, read-only: a missing sqlite file is refused, since MLflow would
    create an empty one in whatever directory the command was started from."""
    import mlflow

    configured = repo_mlflow().get("tracking_uri")
    uri = resolve_tracking_uri(configured, explicit=args.tracking_uri)
    db = sqlite_file(uri)  # without SQLAlchemy's ?options, which promote accepts
    if uri.startswith(SQLITE) and not db.is_file():
        raise TrackingError(
            f"{db}: no MLflow database here; run from the repository root "
            "(where make repro wrote mlflow.db) or pass --tracking-uri"
        )
    check_reachable(uri, source=tracking_uri_source(configured, args.tracking_uri))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri.startswith(SQLITE):
        _open_store(uri)
    return uri


def _open_store(uri: str) -> None:
    """Open the sqlite store once, under the lock promote holds while it sets one up (``<db>.setup.lock``).

    MLflow creates the tables of a database file that has none: a command started while a promote was
    creating a new ``mlflow.db`` ran the same migrations at once and died in an alembic traceback (or
    broke the promote's). The stores MLflow keeps per URI are reused by the command afterwards. A lock
    that cannot be taken (a folder this user may not write) is skipped, as a read-only registry needs.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with lock_if_possible(
        setup_lock(uri), f"{uri}: setup lock not taken; not waiting for a promote setting it up"
    ):
        try:
            MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
        except MlflowException as e:  # a store of another MLflow version's schema
            raise TrackingError(f"MLflow tracking URI {masked_uri(uri)}: {e.message}") from None


def cmd_pull(args: argparse.Namespace) -> int:
    from .registry import pull

    _connect(args)
    uri = registered_uri(args.model, args.alias)
    dest = pull(uri, Path(args.dest))
    print(f"pulled {uri} -> {dest}")
    return 0


def cmd_alias(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from .registry import check_alias, check_model_name, move_alias, versions_table

    uri = _connect(args)
    repo = repo_mlflow()
    name = check_model_name(args.model or repo.get("registered_model", DEFAULT_NAME), "--model")
    alias = check_alias(args.alias or repo.get("alias", DEFAULT_ALIAS), "--alias")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if args.force and args.set is None:
        raise ValueError("--force goes with --set VERSION")
    if args.set is not None or args.delete:
        left = move_alias(client, name, alias, None if args.delete else str(args.set), uri, args.force)
        if args.delete and left is None:
            print(f"{name}@{alias} points at no version: nothing to remove")
        else:
            now = "removed" if args.delete else f"-> version {args.set}"
            print(f"{name}@{alias} {now} (was {f'version {left}' if left else 'unset'})")
    print("\n".join(versions_table(client, name, alias)))
    return 0


def model_dir_of(spec: str) -> Path | None:
    """The raw model directory ``spec`` names, or None for an MLflow model (URI or pulled directory)."""
    path = Path(spec)
    if path.is_dir() and not (path / "MLmodel").is_file():
        return path
    if ":/" not in spec and not path.exists():
        raise FileNotFoundError(f"--model {spec}: no such directory, and not a models:/ or runs:/ URI")
    return None


def load_transcriber(
    spec: str, model_dir: Path | None, decode: dict, scratch: Path
) -> Callable[[pd.DataFrame], list[str]]:
    """The raw model directory ``model_dir`` decoding with ``decode``, else the MLflow model ``spec``,
    downloaded into ``scratch`` (from a remote artifact store MLflow would otherwise leave a copy of
    the model in a temp folder at every call)."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from .pyfunc_model import WhisperPyfunc

    if model_dir is not None:
        model = WhisperPyfunc(**decode)
        model.load(model_dir)
        return lambda inputs: model.predict(None, inputs)
    from .registry import logged_code_differs, why_not

    try:
        local = (
            Path(spec)
            if Path(spec).is_dir()
            else Path(mlflow.artifacts.download_artifacts(spec, dst_path=str(scratch)))
        )
        loaded = mlflow.pyfunc.load_model(str(local))
    except MlflowException as e:
        hint = f"; {why_not(spec)}" if spec.startswith("models:/") else ""
        raise RegistryError(f"--model {spec}: cannot be loaded ({e.message}){hint}") from None
    if logged_code_differs(local):
        log.warning(
            "%s was logged with other whisper_int8 code than this install's, and runs this install's "
            "here: its transcripts may differ from `mlflow models serve`'s; install the matching "
            "version, or serve it",
            spec,
        )
    return loaded.predict


def decode_audio(path: str) -> np.ndarray:
    """16 kHz mono samples; an undecodable, empty or too short file is a user error naming it (and
    ffmpeg's reason), found before the model loads or any transcript is printed."""
    from .audio.wavio import check_length, load_audio

    samples = load_audio(path)
    check_length(samples, path)
    return samples


def decode_all(paths: list[str], keep_bytes: int) -> list[np.ndarray | None]:
    """Decode every file now, so a bad one stops the command before the model loads; keep the samples
    of the leading files that fit in ``keep_bytes`` together, and None for the rest (decoded again in
    turn), so a batch of long recordings holds one file at a time rather than all of them."""
    clips: list[np.ndarray | None] = []
    kept = 0
    for path in paths:
        samples = decode_audio(path)
        kept += samples.nbytes
        clips.append(samples if kept <= keep_bytes else None)
    return clips


def cmd_transcribe(args: argparse.Namespace) -> int:
    # Every mistake on the command line is reported before the model is loaded (or downloaded).
    if args.model is None:
        args.model = registered_uri(None, None)  # the champion
    model_dir = model_dir_of(args.model)
    if args.language is not None:
        from .languages import language_code

        args.language = language_code(args.language)  # "auto", "xx": now, not after loading the model
    decode = {"beam_size": args.beam_size, "max_tokens": args.max_tokens}
    given = [f"--{k.replace('_', '-')}" for k, v in decode.items() if v is not None]
    if given and model_dir is None:
        raise ValueError(
            f"{' and '.join(given)}: for a local model directory only (e.g. models/int8); {args.model} is "
            "an MLflow model and decodes with the options it was registered with"
        )
    # exists(), not is_file(): a folder or pipe is there, and load_audio says what it is instead
    missing = [audio for audio in args.audio if not Path(audio).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: audio file not found")
    clips = decode_all(args.audio, KEEP_DECODED_BYTES)  # an undecodable file: before any transcript
    import pandas  # here: the other commands do without it

    if args.model.startswith(("models:/", "runs:/")):
        _connect(args)
    with tempfile.TemporaryDirectory(prefix="whisper-int8-") as scratch:
        predict = load_transcriber(args.model, model_dir, decode, Path(scratch))
        for audio, samples in zip(args.audio, clips, strict=True):
            samples = decode_audio(audio) if samples is None else samples
            # one row holding the array: a dict or record of samples is spread by MLflow into a row per
            # sample (seconds and hundreds of MB per 10 minutes of audio, to gather them again)
            text = predict(pandas.DataFrame({"audio": [samples], "language": [args.language]}))[0]
            name = printable(audio)
            # flushed per file: redirected to a file, a batch killed (kill, timeout) keeps what it printed
            print(
                json.dumps({"audio": name, "text": text}, ensure_ascii=False)
                if args.json
                else f"{tsv_field(name)}\t{tsv_field(text)}",
                flush=True,
            )
    return 0


def beam_width(text: str) -> int:
    """argparse type of ``--beam-size``: 1 to :data:`MAX_BEAM`. Each beam holds its own self-attention
    cache and attention scores, so a mistyped 100000 died in a 300 GB allocation's traceback after the
    model loaded, and a few thousand could take the machine's memory first."""
    value = positive_int(text)
    if value > MAX_BEAM:
        raise argparse.ArgumentTypeError(
            f"{text!r}: at most {MAX_BEAM} (Whisper's own default is 5; wider beams rarely help)"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whisper-int8",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    uri_help = (
        "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else params.yaml mlflow.tracking_uri in the "
        "repository, else sqlite:///mlflow.db)"
    )
    parser.add_argument("--tracking-uri", help=uri_help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # also after the command (`pull --tracking-uri ...`); SUPPRESS: not given there, the top-level value
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", default=argparse.SUPPRESS, help=uri_help)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "pull", parents=[common], help="download a registered model version (by alias) into a directory"
    )
    p.add_argument(
        "--model",
        help="registered model name, or a models:/ or runs:/<run id>/model URI (default: params.yaml "
        "mlflow.registered_model in the repository, else whisper-int8)",
    )
    p.add_argument(
        "--alias", help="alias to pull (default: params.yaml mlflow.alias in the repository, else champion)"
    )
    p.add_argument(
        "--dest", required=True, help="destination directory: new, or an earlier pull (replaced whole)"
    )
    p.set_defaults(func=cmd_pull)
    a = sub.add_parser(
        "alias",
        parents=[common],
        help="list the registered versions and where the alias points; move it back (rollback) or remove it",
    )
    a.add_argument("--model", help="registered model name (default: as for pull)")
    a.add_argument("--alias", help="alias (default: as for pull)")
    move = a.add_mutually_exclusive_group()
    move.add_argument("--set", type=positive_int, metavar="VERSION", help="point the alias at this version")
    move.add_argument("--delete", action="store_true", help="remove the alias (a pull of it then fails)")
    a.add_argument("--force", action="store_true", help="--set a version the gate did not pass")
    a.set_defaults(func=cmd_alias)
    t = sub.add_parser(
        "transcribe", parents=[common], help="transcribe audio files with a registered or local model"
    )
    t.add_argument(
        "--model",
        help="models:/NAME@ALIAS, runs:/..., a pulled directory or a model directory (models/int8); "
        "default: the champion, models:/whisper-int8@champion (params.yaml's mlflow name and alias in "
        "the repository)",
    )
    t.add_argument("--language", help="language code or name, e.g. en or English (default: detect it)")
    t.add_argument(
        "--beam-size",
        type=beam_width,
        help=f"beam size (1-{MAX_BEAM}), for a local model directory only (default: greedy); a registered "
        "model decodes with the options it was registered with",
    )
    t.add_argument(
        "--max-tokens",
        type=window_token_cap,
        help="token cap per 30 s window (1-224), for a local model directory only",
    )
    t.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per file (default: one line per file, its name, a tab, its "
        "transcript; a tab, newline or other control character in either is written as \\t, \\n, \\x1b...)",
    )
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
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C in a long transcription: one line, as the stages say it
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `whisper-int8 transcribe *.wav | head -1`: the reader is gone
        exit_if_stdout_closed()
        raise


if __name__ == "__main__":
    sys.exit(main())
