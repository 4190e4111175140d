"""``hf:<dataset>`` sources (e.g. ``google/fleurs``, Common Voice) through the optional ``datasets`` library.

Needs network on first use (then the Hugging Face cache); offline it fails at once with a clear message
instead of hanging on retries.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

from .errors import AudioInputError
from .manifest import Item, safe_id
from .wavio import convert_array

TEXT_COLUMNS = ("raw_transcription", "sentence", "text", "transcription", "normalized_text")


def _check_online(dataset: str) -> None:
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return  # the user asked for the local cache
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError as e:
        raise AudioInputError(
            f"hf:{dataset}: cannot reach huggingface.co ({e}); offline, set HF_DATASETS_OFFLINE=1 to use a "
            "cached copy, or use the asterisk/kokoro/local sources"
        ) from None


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
    texts = ds[column]  # one column only: indexing rows would decode every clip's audio
    prefix = safe_id(f"{language}-hf-{dataset}")  # the dataset in the id: two datasets of one language
    out = []
    for n in range(len(ds)):
        name = f"hf:{dataset}/{config}/{split}#{n}"

        def load(n: int = n, name: str = name) -> np.ndarray:
            audio = ds[n]["audio"]
            return convert_array(np.asarray(audio["array"], np.float32), audio["sampling_rate"], name)

        out.append(Item(f"{prefix}-{n:06d}", language, str(texts[n] or ""), name, f"see {dataset}", load))
    return out
