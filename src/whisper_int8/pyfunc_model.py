"""MLflow pyfunc wrapper: audio in, transcript out, weights loaded from the logged model directory.

Logged as code (:mod:`whisper_int8.pyfunc_entry`, MLflow's models-from-code), not as a pickle: the
decoding options (beam size, token cap) are the logged ``model_config`` and the weights an MLflow
artifact (the INT8 state dict and its JSON configs) that :func:`whisper_int8.model_dir.load_model_dir`
reads in ``load_context``, so loading a registered version unpickles nothing but plain tensors.

The logged model's signature (:data:`SIGNATURE`) is records: ``audio`` (a path to an audio file that
ffmpeg decodes, or 16 kHz mono samples as a list/array of floats) and an optional ``language``; the
output is one transcript string per record. So a loaded model (``mlflow.pyfunc.load_model``) and
``mlflow models serve`` take a dict ``{"audio": ..., "language": "en"}``, a list of them, or a DataFrame
with those columns. ``WhisperPyfunc.predict`` itself, called directly, also takes a bare path or array.
A missing or empty language means auto-detect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import DataType
from mlflow.types.schema import AnyType, ColSpec, Schema

MODEL_DIR_ARTIFACT = "model_dir"
DEVICE_VARIABLE = "WHISPER_INT8_DEVICE"  # cpu (default), auto, cuda or cuda:N where the model is served
# Explicit: MLflow infers none from the predict type hints, and registries such as Unity Catalog refuse a
# model without one. ``audio`` is Any because a path (string) and samples (float list) both serve.
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(AnyType(), "audio"), ColSpec(DataType.string, "language", required=False)]),
    outputs=Schema([ColSpec(DataType.string)]),
)


def check_audio(audio: Any) -> str | np.ndarray:
    """A path (decoded later by ffmpeg at 16 kHz) or an array / list taken as 16 kHz mono samples."""
    if isinstance(audio, str | Path):
        if not Path(audio).is_file():
            raise FileNotFoundError(f"audio file not found: {audio}")
        return str(audio)
    array = np.asarray(audio, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"audio array must be 1-D 16 kHz mono samples, got shape {array.shape}")
    return array


def _is_sample(value: Any) -> bool:
    """One number: a sample of a waveform, not a clip (a path, an array, a record)."""
    return isinstance(value, int | float | np.number)


def as_requests(model_input: Any) -> list[tuple[Any, str | None]]:
    """Normalize every accepted input form to ``[(audio, language or None), ...]``."""
    if isinstance(model_input, pd.DataFrame):
        if "audio" not in model_input.columns:
            raise ValueError(f"input DataFrame needs an 'audio' column, got {list(model_input.columns)}")
        audio = model_input["audio"]
        if len(audio) and all(map(_is_sample, audio)):
            # MLflow spreads {"audio": [samples], "language": "en"} into one row per sample: one clip
            langs = model_input["language"].dropna().unique() if "language" in model_input else []
            model_input = {"audio": audio.to_numpy(np.float32), "language": langs[0] if len(langs) else None}
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
            requests.append((item["audio"], lang if isinstance(lang, str) and lang else None))
        else:
            requests.append((item, None))
    return requests


class WhisperPyfunc(mlflow.pyfunc.PythonModel):
    """Transcribe with the Whisper model stored in the ``model_dir`` artifact."""

    def __init__(self, beam_size: int | None = None, max_tokens: int | None = None) -> None:
        self.decode = {"beam_size": beam_size, "max_tokens": max_tokens}

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = context.model_config or {}
        self.decode = {k: config.get(k, v) for k, v in self.decode.items()}
        self.load(Path(context.artifacts[MODEL_DIR_ARTIFACT]))

    def load(self, model_dir: Path) -> None:
        from whisper_int8.model_dir import load_model_dir, resolve_device

        # the serving host's choice, not the model's: CPU unless the fleet asks for its GPU
        device = resolve_device(os.environ.get(DEVICE_VARIABLE, "cpu"), DEVICE_VARIABLE)
        self.model = load_model_dir(model_dir, device=device)

    # Annotated as DataFrame (what serving passes); the schema is SIGNATURE, and direct callers may pass
    # any form listed in the module docstring.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        from whisper_int8.transcribe import transcribe_clip

        return [
            transcribe_clip(self.model, check_audio(audio), language, **self.decode)["text"]
            for audio, language in as_requests(model_input)
        ]
