"""MLflow pyfunc wrapper: audio in, transcript out, weights loaded from the logged model directory.

Logged as code (:mod:`whisper_int8.pyfunc_entry`, MLflow's models-from-code), not as a pickle: the
decoding options (beam size, token cap) are the logged ``model_config`` and the weights an MLflow
artifact (the INT8 state dict and its JSON configs) that :func:`whisper_int8.model_dir.load_model_dir`
reads in ``load_context``, so loading a registered version unpickles nothing but plain tensors.

The logged model's signature (:data:`SIGNATURE`) is records: ``audio`` (a path to an audio file that
ffmpeg decodes, in :data:`AUDIO_DIR_VARIABLE`'s folder when the server sets it, or mono samples as a
list/array of floats in [-1, 1]), an optional ``language`` and an optional ``sample_rate`` of those
samples (16000 when left out; others are resampled by ffmpeg); the output is one transcript string per
record. So a loaded model (``mlflow.pyfunc.load_model``) and ``mlflow models serve`` take a dict
``{"audio": ..., "language": "en"}``, a list of them, or a DataFrame with those columns.
``WhisperPyfunc.predict`` itself, called directly, also takes a bare path or array. A missing or empty
language means auto-detect. A request the model cannot take (a missing file, integer PCM, NaN samples, an
unknown language) is an :class:`InputError`: ``mlflow models serve`` answers it with HTTP 400 and its
one-line message, where any other exception is a generic one.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types import DataType
from mlflow.types.schema import AnyType, ColSpec, Schema

log = logging.getLogger(__name__)

MODEL_DIR_ARTIFACT = "model_dir"
DEVICE_VARIABLE = "WHISPER_INT8_DEVICE"  # cpu (default), auto, cuda or cuda:N where the model is served
# Where the model is served: requests with longer audio are refused (unset: no limit). A REST client
# times out (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT, 60 s) while the worker goes on transcribing.
MAX_SECONDS_VARIABLE = "WHISPER_INT8_MAX_AUDIO_SECONDS"
# Where the model is served: requests may name files in this folder (and its subfolders) only, a
# relative path taken there (unset: any file the server process can read, by any client that reaches
# it: the transcript of every recording on the host, and whether any other path exists).
AUDIO_DIR_VARIABLE = "WHISPER_INT8_AUDIO_DIR"
SAMPLE_RATE = 16000
# Float samples are in [-1, 1]; beyond this peak they are integer PCM (int16: up to 32767), which
# Whisper reads as confident nonsense. Above 1 a little: resampling and gain overshoot.
MAX_PEAK = 2.0
MIN_RATE, MAX_RATE = 1000, 384000  # Hz: what sample_rate can be
MAX_CHANNELS = 8  # records of this many numbers or fewer, all alike: the frames of multi-channel audio
# Explicit: MLflow infers none from the predict type hints, and registries such as Unity Catalog refuse a
# model without one. ``audio`` is Any because a path (string) and samples (float list) both serve.
SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec(AnyType(), "audio"),
            ColSpec(DataType.string, "language", required=False),
            # Any: MLflow refuses a long column holding the NaN of records without it, and an integer
            # in a double column; :func:`check_audio` checks it
            ColSpec(AnyType(), "sample_rate", required=False),
        ]
    ),
    outputs=Schema([ColSpec(DataType.string)]),
)


class InputError(MlflowException, ValueError):
    """A request the model cannot take. MLflow's scoring server answers an MlflowException with its
    message and error code (HTTP 400 here) and any other exception with a generic "unexpected error";
    a ValueError too, so the CLI reports it as one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def _missing(value: Any) -> bool:
    """None, or the NaN pandas puts in a column where a record lacks the field."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _rate(value: Any) -> int | None:
    if _missing(value):
        return None
    value = value.item() if isinstance(value, np.generic) else value  # a DataFrame cell: numpy's
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or value % 1 or not MIN_RATE <= value <= MAX_RATE:  # 16 (kHz): resampled 1000-fold
        raise ValueError(
            f"sample_rate={value!r} must be the samples' rate in Hz, an integer from {MIN_RATE} to "
            f"{MAX_RATE} such as 8000"
        )
    return int(value)


def check_audio(
    audio: Any,
    sample_rate: Any = None,
    max_seconds: float | None = None,
    used: float = 0.0,
    audio_dir: Path | None = None,
) -> np.ndarray:
    """One record's audio as 16 kHz mono float32: a path decoded by ffmpeg, or float samples in
    [-1, 1] at ``sample_rate`` (16 kHz when None), resampled by ffmpeg. Longer than ``max_seconds``
    less the ``used`` seconds of the request's records before it: refused before any decoding or
    resampling (a file: ffmpeg stops just past the limit). ``audio_dir``: a path must name a file in
    that resolved folder (:func:`served_path`)."""
    from whisper_int8.audio.errors import AudioInputError
    from whisper_int8.audio.wavio import check_length, check_regular, load_audio, resample

    rate = _rate(sample_rate)
    if max_seconds is not None and used >= max_seconds:
        raise ValueError(
            f"the records before it hold {used:.1f} s of audio, this server's {MAX_SECONDS_VARIABLE}="
            f"{max_seconds:g}: send fewer records"
        )
    if _missing(audio):
        raise ValueError("the 'audio' field is missing (null): give a file path or a list of samples")
    if isinstance(audio, str | Path):
        shown = _shown(audio)
        if rate is not None:
            raise ValueError(f"sample_rate is for a list of samples; {shown} is a file, which gives its own")
        path = served_path(audio, audio_dir)
        encoded = (  # base64 audio sent for a path, most likely
            " (a path on the server: encoded audio in a string is not read; send the samples as a "
            "list of floats)"
            if len(str(audio)) > 255
            else ""
        )
        try:
            check_regular(path, f"audio: {shown}")
        except FileNotFoundError:
            raise FileNotFoundError(f"audio file not found: {shown}{encoded}") from None
        except AudioInputError as e:
            raise AudioInputError(f"{e}{encoded}") from None
        # one sample over the time left: refused
        cap = None if max_seconds is None else max_seconds - used + 1 / SAMPLE_RATE
        samples, name = load_audio(path, max_seconds=cap), str(audio)
        _check_max_seconds(samples.size / SAMPLE_RATE, max_seconds, "s of audio or more", used)
    else:
        try:
            sent = np.asarray(audio)  # its own type first: integers are PCM whatever their peak
            samples, name = sent.astype(np.float32, copy=False), "audio samples"
        except (TypeError, ValueError):
            raise ValueError(_not_samples(audio)) from None
        if samples.ndim != 1:
            raise ValueError(f"audio array must be 1-D mono samples, got shape {samples.shape}")
        bad = int(samples.size - np.isfinite(samples).sum())
        if bad:
            raise ValueError(
                f"audio samples must be finite numbers; {bad} of {samples.size} are NaN or infinite"
            )
        _check_max_seconds(samples.size / (rate or SAMPLE_RATE), max_seconds, "s of audio", used)
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        # integers (numpy's, or JSON numbers without a point), not all 0: integer PCM, which a peak of
        # 2 LSB or less (dither, a pause) does not give away; heard 16384 times too loud, it is decoded
        integers = sent.dtype.kind in "iu" and peak > 0
        if peak > MAX_PEAK or integers:
            found = f"their peak is {peak:g}" if peak > MAX_PEAK else f"they are integers (peak {peak:g})"
            raise ValueError(
                f"audio samples must be floats in [-1, 1]; {found}, as in integer PCM: divide 16-bit "
                "samples by 32768"
            )
        if samples.size and rate not in (None, SAMPLE_RATE):
            samples = resample(samples, rate, name).astype(np.float32) / 32768.0
    check_length(samples, name, "" if isinstance(audio, str | Path) else "; a clip is a list of samples")
    return samples


def served_path(audio: str | Path, audio_dir: Path | None) -> Path:
    """The file a request's path names: with the server's :data:`AUDIO_DIR_VARIABLE` (``audio_dir``,
    resolved), only one inside that folder once links are followed, a relative path taken there; any
    other is refused before it is looked up, so a client learns nothing of the rest of the host."""
    if audio_dir is None:
        return Path(audio)
    try:
        path = (audio_dir / audio).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a link loop (Python < 3.13)
        path = None
    if path is None or not path.is_relative_to(audio_dir):
        raise ValueError(
            f"audio: {_shown(audio)} is outside the folder this server reads audio files from "
            f"({AUDIO_DIR_VARIABLE}); name a file in it (a relative path is taken there) or send samples"
        )
    return path


def audio_dir() -> Path | None:
    """:data:`AUDIO_DIR_VARIABLE` as a resolved folder, None when unset or empty."""
    from whisper_int8.params import ParamError

    value = os.environ.get(AUDIO_DIR_VARIABLE, "").strip()
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ParamError(
            f"{AUDIO_DIR_VARIABLE}={value!r} must be an existing folder (the audio files requests may "
            "name), or unset"
        )
    return folder.resolve()


def _not_samples(audio: Any) -> str:
    """Why ``audio`` is neither a path nor samples: a list names what it holds (a list of paths: a
    batch sent as one record, which MLflow keeps whole for ``{"inputs": {"audio": [a, b]}}``)."""
    if isinstance(audio, list | tuple) and audio:
        if all(isinstance(a, str | Path) for a in audio):
            return (
                f"audio: a list of {len(audio)} file paths in one record ({_shown(audio[0])!r}, ...); send "
                'one record per file ({"dataframe_records": [{"audio": path}, ...]})'
            )
        odd = next((a for a in audio if not _is_sample(a)), audio[0])
        return f"audio must be a file path or a list of numbers, got a list holding {type(odd).__name__}"
    return f"audio must be a file path or a list of numbers, got {type(audio).__name__}"


def _shown(path: str | Path, most: int = 120) -> str:
    """``path`` for a message: a long string (base64 audio sent for a path) cut, not echoed whole."""
    text = str(path)
    return text if len(text) <= most else f"{text[:most]}... ({len(text)} characters)"


def _check_max_seconds(seconds: float, max_seconds: float | None, what: str, used: float) -> None:
    if max_seconds is not None and used + seconds > max_seconds:
        total = f", {used + seconds:.1f} s with the records before it" if used else ""
        raise ValueError(
            f"{seconds:.1f} {what}{total}, over this server's {MAX_SECONDS_VARIABLE}="
            f"{max_seconds:g}; send shorter clips{' or fewer records' if used else ''}"
        )


def _is_sample(value: Any) -> bool:
    """One number: a sample of a waveform, not a clip (a path, an array, a record; True is no sample)."""
    return isinstance(value, int | float | np.number) and not isinstance(value, bool | np.bool_)


def _first(frame: pd.DataFrame, column: str) -> Any:
    values = frame[column].dropna().unique() if column in frame else []
    return values[0] if len(values) else None


def as_requests(model_input: Any) -> list[tuple[Any, str | None, Any]]:
    """Normalize every accepted input form to ``[(audio, language or None, sample_rate or None), ...]``."""
    if isinstance(model_input, pd.DataFrame):
        if "audio" not in model_input.columns:
            raise ValueError(f"input DataFrame needs an 'audio' column, got {list(model_input.columns)}")
        audio = model_input["audio"]
        lists = len(audio) > 1 and all(isinstance(a, list | np.ndarray) for a in audio)
        widths = {len(a) for a in audio} if lists else set()
        if len(widths) == 1 and 1 < (width := widths.pop()) <= MAX_CHANNELS:
            # MLflow spreads {"audio": frames x channels} into one row per frame
            raise ValueError(
                f"audio: {len(audio)} records of {width} numbers each, as in the frames of multi-channel "
                "audio: send mono samples (average the channels), or a file path"
            )
        if len(audio) and all(map(_is_sample, audio)):
            # MLflow spreads {"audio": [samples], "language": "en"} into one row per sample: one clip
            model_input = {
                # its dtype kept, inferred in an object column (one sliced from a mixed one, or
                # astype(object)): integers are PCM (check_audio), whatever column holds them
                "audio": audio.infer_objects().to_numpy(),
                "language": _first(model_input, "language"),
                "sample_rate": _first(model_input, "sample_rate"),
            }
        else:
            model_input = model_input.to_dict(orient="records")
    single_array = isinstance(model_input, list) and model_input and _is_sample(model_input[0])
    if isinstance(model_input, dict | str | Path | np.ndarray) or single_array:
        model_input = [model_input]
    requests = []
    for item in model_input:
        if isinstance(item, dict):
            if "audio" not in item:
                raise ValueError(f"each input record needs an 'audio' field, got {sorted(item)}")
            lang = item.get("language")
            if not (_missing(lang) or isinstance(lang, str)):
                raise ValueError(f"language must be a code or name such as 'en' or 'English', got {lang!r}")
            requests.append(
                (item["audio"], None if _missing(lang) or not lang else lang, item.get("sample_rate"))
            )
        else:
            requests.append((item, None, None))
    return requests


def max_audio_seconds() -> float | None:
    """:data:`MAX_SECONDS_VARIABLE` as a number of seconds, None when unset or empty."""
    from whisper_int8.params import ParamError

    value = os.environ.get(MAX_SECONDS_VARIABLE, "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ParamError(f"{MAX_SECONDS_VARIABLE}={value!r} must be a number of seconds > 0, or unset")
    return seconds


class WhisperPyfunc(mlflow.pyfunc.PythonModel):
    """Transcribe with the Whisper model stored in the ``model_dir`` artifact."""

    def __init__(self, beam_size: int | None = None, max_tokens: int | None = None) -> None:
        self.decode = {"beam_size": beam_size, "max_tokens": max_tokens}

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from whisper_int8.transcribe import decode_options

        # the logged options, or what `load_model(..., model_config=...)` or the serving host's
        # MLFLOW_PYFUNC_INFERENCE_CONFIG override (MLflow drops unknown keys with a warning): checked
        # now, not as a TypeError at the first request
        config = context.model_config or {}
        self.decode = decode_options({**self.decode, **config}, "the model's model_config", prefix="")
        self.load(Path(context.artifacts[MODEL_DIR_ARTIFACT]))

    def load(self, model_dir: Path) -> None:
        from whisper_int8.model_dir import activation_bits_of, load_model_dir, resolve_device

        # the serving host's choices, not the model's: CPU unless the fleet asks for its GPU
        device = resolve_device(os.environ.get(DEVICE_VARIABLE, "cpu"), DEVICE_VARIABLE)
        self.max_seconds = max_audio_seconds()
        self.audio_dir = audio_dir()
        if shutil.which("ffmpeg") is None:  # mlflow models build-docker images have none
            log.warning(
                "ffmpeg not found on PATH: only 16 kHz mono WAV files and 16 kHz samples can be "
                "transcribed here (other requests fail with HTTP 500); install ffmpeg where the model runs"
            )
        if device == "cpu":  # a bad WHISPER_INT8_ACTIVATION_BITS: the server does not start, no request fails
            activation_bits_of(model_dir)
        self.model = load_model_dir(model_dir, device=device)

    def _checked(
        self, index: int, count: int, audio: Any, language: str | None, rate: Any, used: float
    ) -> np.ndarray:
        """The record's samples, or an :class:`InputError` naming it in a batch. ``used``: seconds of
        the records before it, which count against the server's limit too."""
        from whisper_int8.audio.errors import FfmpegMissingError
        from whisper_int8.languages import check_language

        try:
            check_language(self.model, language)
            samples = check_audio(audio, rate, self.max_seconds, used, self.audio_dir)
        except FfmpegMissingError as e:  # the server's fault, not the request's: HTTP 500 with the fix
            raise MlflowException(str(e), error_code=INTERNAL_ERROR) from None
        except (ValueError, FileNotFoundError) as e:
            raise InputError(f"record {index} of {count}: {e}" if count > 1 else str(e)) from None
        return samples

    # Annotated as DataFrame (what serving passes); the schema is SIGNATURE, and direct callers may pass
    # any form listed in the module docstring.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        from whisper_int8.transcribe import transcribe_clip

        try:
            requests = as_requests(model_input)
        except ValueError as e:
            raise InputError(str(e)) from None
        # every record checked (and decoded) before the first is transcribed: a bad one costs no work;
        # the server's limit bounds the request's audio, all records together
        clips: list[np.ndarray] = []
        for i, request in enumerate(requests, 1):
            used = sum(c.size for c in clips) / SAMPLE_RATE
            clips.append(self._checked(i, len(requests), *request, used))
        return [
            transcribe_clip(self.model, samples, language, **self.decode)["text"]
            for samples, (_, language, _) in zip(clips, requests, strict=True)
        ]
