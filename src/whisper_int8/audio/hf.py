"""``hf:<dataset>`` sources (e.g. ``google/fleurs``, Common Voice) through the optional ``datasets`` library.

Needs network on first use (then the Hugging Face cache); offline it fails at once with a clear message
instead of hanging on retries.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..netcheck import unreachable
from .errors import AudioInputError
from .manifest import Item, safe_id
from .wavio import decode_bytes, decode_file

TEXT_COLUMNS = ("raw_transcription", "sentence", "text", "transcription", "normalized_text")


def _check_online(dataset: str) -> None:
    offline = ("1", "true", "yes", "on")
    if any(os.environ.get(v, "").lower() in offline for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        return  # the user asked for the local cache
    error = unreachable("huggingface.co", timeout_s=3)
    if error is not None:
        raise AudioInputError(
            f"hf:{dataset}: cannot reach huggingface.co ({error}); offline, set HF_DATASETS_OFFLINE=1 to use "
            "a cached copy, or use the asterisk/kokoro/local sources"
        )


def items(dataset: str, language: str, config: str | None, cache: Path, split: str = "test") -> list[Item]:
    """Rows of ``dataset`` (``config``, e.g. ``de_de`` for FLEURS) as items in ``language``."""
    try:
        import datasets
    except ImportError:
        raise AudioInputError(
            f"hf:{dataset}: the 'datasets' library is not installed; pip install 'whisper-int8[hf]'"
        ) from None
    _check_online(dataset)
    try:
        ds = datasets.load_dataset(dataset, config, split=split, cache_dir=str(cache / "hf"))
    except Exception as e:  # datasets raises many types (connection, missing config, gated dataset)
        raise AudioInputError(f"hf:{dataset} ({config}, {split}): cannot load: {e}") from None
    column = next((c for c in TEXT_COLUMNS if c in ds.column_names), None)
    if column is None or "audio" not in ds.column_names:
        raise AudioInputError(
            f"hf:{dataset}: needs an 'audio' column and one of {TEXT_COLUMNS}; has {ds.column_names}"
        )
    # the encoded files, decoded by ffmpeg like every other source: datasets' own decoding needs
    # torchcodec since datasets 4, which the [hf] extra does not pull in
    ds = ds.cast_column("audio", datasets.Audio(decode=False))
    texts = ds[column]  # one column only: indexing rows would decode every clip's audio
    prefix = safe_id(f"{language}-hf-{dataset}")  # the dataset in the id: two datasets of one language
    out = []
    for n in range(len(ds)):
        name = f"hf:{dataset}/{config}/{split}#{n}"

        def load(n: int = n, name: str = name) -> np.ndarray:
            audio = ds[n]["audio"]
            return decode_bytes(audio["bytes"], name) if audio.get("bytes") else decode_file(audio["path"])

        out.append(Item(f"{prefix}-{n:06d}", language, str(texts[n] or ""), name, f"see {dataset}", load))
    return out
