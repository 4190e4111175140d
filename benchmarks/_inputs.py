"""Input checks the benchmark scripts share: a bad path stops in one line, before any model is loaded.

Errors are ``whisper_int8.cli_common.USER_ERRORS`` types, so a script run through ``cli_common.run``
prints the message and exits 2. Torch-free at import: speed.py's faster-whisper worker imports its
script, and with it this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from whisper_int8.audio import Clip, first_per_language, read_manifest
from whisper_int8.audio.errors import AudioInputError


def require_model_dir(path: Path | str, option: str, kind: str = "any") -> Path:
    """``path`` if it holds a model directory of this pipeline, by its files only: ``kind`` ``fp32``
    (models/fp32), ``fused`` (models/fused) or ``any`` (those or an int8 one).

    The same files ``whisper_int8.model_dir.load_model_dir`` looks for; nothing is read, so a worker or
    a later conversion that loads it cannot be the first to find a typo, and an INT8 directory given
    as the FP32 reference cannot run under the FP32 row's name.
    """
    from whisper_int8.fuse import FUSED_WEIGHTS  # torch: only where a model path is checked
    from whisper_int8.quant.convert import QUANT_CONFIG
    from whisper_int8.stage_files import CHECKPOINT

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{option} {path}: no such directory; give a model directory (models/...)")
    names = {"fp32": (CHECKPOINT,), "fused": (FUSED_WEIGHTS,)}.get(
        kind, (QUANT_CONFIG, FUSED_WEIGHTS, CHECKPOINT)
    )
    if not any((root / name).is_file() for name in names):
        what = "a model directory" if kind == "any" else f"the {kind} model directory (models/{kind})"
        raise FileNotFoundError(f"{option} {path}: not {what}: no {', '.join(names)} in it")
    return root


def require_out_file(path: Path | str | None, option: str) -> None:
    """Refuse an output path that cannot take a file (a folder) before the run, not after it."""
    from whisper_int8.fsutil import OutputConflictError, check_file_output

    if path is not None:
        try:
            check_file_output(path)
        except OutputConflictError as e:
            raise OutputConflictError(f"{option} {e}") from None


def require_activation_bits(
    weight_bits: Iterable[int], env: Mapping[str, str] | None = None, option: str | None = None
) -> None:
    """Refuse a ``WHISPER_INT8_ACTIVATION_BITS`` that INT8 layers of these ``weight_bits`` cannot run in a
    process given ``env`` too (``option``'s: ``--isa avx2`` caps fbgemm below VNNI): a typo, or 8 beside
    8-bit weights without VNNI. A worker met it at its first INT8 layer, after the conversions; here it
    stops before them, in one line (ActivationBitsError: a user error)."""
    from whisper_int8.cpu import ActivationBitsError, activation_bits

    env = dict(env or {})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # activation_bits reads the environment, as the worker's own
    try:
        for bits in sorted(set(weight_bits)):
            activation_bits(bits)
    except ActivationBitsError as e:
        raise ActivationBitsError(f"{option}: {e}" if option else str(e)) from None
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def split_clips(
    split: Path | str, per_language: int | None = None, option: str = "--split", scored: bool = True
) -> list[Clip]:
    """The first ``per_language`` clips of each language of ``split``; a split with none is an error, and
    so is a clip whose transcript cannot be scored when the caller scores them (``scored``)."""
    try:
        clips = first_per_language(read_manifest(split), per_language)
    except FileNotFoundError as e:  # its message names the manifest and the stage that writes it
        raise FileNotFoundError(f"{option}: {e}") from None
    if not clips:
        raise AudioInputError(f"{option} {split}: its manifest lists no clips; give a built split")
    if scored:
        from whisper_int8.scoring import check_references  # torch (whisper's normalizers): only here

        check_references(clips, f"{option} {split}")
    return clips
