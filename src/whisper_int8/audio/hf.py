"""``hf:<dataset>`` sources (e.g. ``google/fleurs``, Common Voice) through the optional ``datasets`` library.

A Hub dataset needs network on first use (then the Hugging Face cache); offline it fails at once with a
clear message instead of hanging on retries. A local folder of parquet files (a snapshot of a Hub
dataset's parquet export) needs no network.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from ..netcheck import unreachable
from ..tracking_uri import in_repository
from .errors import AudioInputError
from .manifest import Item, safe_id
from .wavio import decode_bytes, decode_file

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("raw_transcription", "sentence", "text", "transcription", "normalized_text")
# Where the Hub keeps a dataset converted to parquet (refs/convert/parquet, one folder per config and
# split): what a dataset that ships a loading script is read from, since datasets 4 runs no scripts.
PARQUET_EXPORT = "hf://datasets/{dataset}@refs%2Fconvert%2Fparquet/{config}/{split}/*.parquet"
SCRIPT_REFUSED = "Dataset scripts are no longer supported"


def _hub_address() -> tuple[str, int, str]:
    """Host, port and scheme of the Hub ``datasets`` downloads from: ``HF_ENDPOINT`` (a mirror) or
    huggingface.co."""
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    scheme = "http" if url.scheme == "http" else "https"
    return url.hostname or "huggingface.co", url.port or (80 if scheme == "http" else 443), scheme


def _is_path(dataset: str) -> bool:
    """Whether ``dataset`` can only be a folder: a Hub id is ``name`` or ``owner/name``, so a missing
    ``/data/fleurs`` or ``./fleurs`` is a wrong path, not a dataset to fetch (offline: "cannot reach
    huggingface.co", which sent the user to the folder they had named)."""
    return dataset.startswith(("/", ".", "~")) or "\\" in dataset or dataset.count("/") > 1


def _check_online(dataset: str) -> None:
    offline = ("1", "true", "yes", "on")
    if any(os.environ.get(v, "").lower() in offline for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        return  # the user asked for the local cache
    host, port, scheme = _hub_address()
    error = unreachable(host, timeout_s=3, port=port, scheme=scheme)
    if error is not None:
        where = f"{host}:{port} (HF_ENDPOINT)" if os.environ.get("HF_ENDPOINT") else host
        raise AudioInputError(
            f"hf:{dataset}: cannot reach {where} ({error}); offline, set HF_DATASETS_OFFLINE=1 to use "
            "a cached copy (one that ships a loading script, such as FLEURS: a downloaded copy of its "
            "parquet export, named as hf:<folder>; README), or use the asterisk/kokoro/local sources"
        )


def _audio_path(path: str, roots: list[Path], name: str) -> Path:
    """The file a path-only row names. A relative one is the dataset folder's (its config's subfolder
    first), as a ``local:`` manifest's are the manifest's, then found like a ``local:`` path (the
    current directory, then the repository): read against the current directory only, it was missing
    wherever the stage did not run from the folder's parent (``dvc exp run --temp`` never does)."""
    named = Path(path).expanduser()
    found = next((root / named for root in roots if (root / named).exists()), None)
    found = found or in_repository(named)
    if not found.exists():
        places = [*map(str, roots), "the current directory and the repository"]
        where = f" (looked in {', '.join(places)})" if roots and not named.is_absolute() else ""
        raise AudioInputError(f"{name}: audio {path!r} not found{where}")
    return found


def _parts(config: str | None, split: str, sep: str = ", ") -> str:
    """Config and split as messages and item sources name them: no config is left out, not "None"."""
    return sep.join(p for p in (config, split) if p)


def _load_hub(datasets: Any, dataset: str, config: str | None, split: str, cache: str) -> Any:
    """The Hub dataset's split; its parquet export when it ships a loading script."""
    try:
        return datasets.load_dataset(dataset, config, split=split, cache_dir=cache)
    except RuntimeError as e:
        if SCRIPT_REFUSED not in str(e):
            raise
    files = PARQUET_EXPORT.format(dataset=dataset, config=config or "default", split=split)
    log.warning(
        "hf:%s ships a loading script, which datasets %s does not run; reading the Hub's parquet "
        "export of it: %s", dataset, datasets.__version__, files
    )  # fmt: skip
    try:
        return datasets.load_dataset("parquet", data_files={split: files}, split=split, cache_dir=cache)
    except Exception as e:  # as above: many types
        raise AudioInputError(
            f"hf:{dataset} ({_parts(config, split)}): ships a loading script, which datasets "
            f"{datasets.__version__} does not run, and its parquet export {files} cannot be read: {e}"
        ) from None


def items(dataset: str, language: str, config: str | None, cache: Path, split: str = "test") -> list[Item]:
    """Rows of ``dataset`` (``config``, e.g. ``de_de`` for FLEURS) as items in ``language``.

    ``dataset`` is a Hub name, or a local folder (found like a ``local:`` path): there ``config`` is a
    subfolder when one has its name (the layout of a Hub parquet export snapshot), else a config the
    folder's README declares.
    """
    try:
        import datasets
    except ImportError:
        raise AudioInputError(
            f"hf:{dataset}: the 'datasets' library is not installed; pip install 'whisper-int8[hf]'"
        ) from None
    folder = in_repository(Path(dataset).expanduser())
    roots: list[Path] = []  # where a relative path-only row is found: a local folder (its config first)
    try:
        if folder.is_dir() and config is not None and (folder / config).is_dir():
            roots = [folder.resolve() / config, folder.resolve()]
            ds = datasets.load_dataset(str(folder), data_dir=config, split=split, cache_dir=str(cache / "hf"))
        elif folder.is_dir():
            roots = [folder.resolve()]
            ds = datasets.load_dataset(str(folder), config, split=split, cache_dir=str(cache / "hf"))
        elif _is_path(dataset):
            raise AudioInputError(
                f"hf:{dataset}: folder not found ({folder.resolve()}); name an existing folder of "
                "parquet files, or a Hub dataset as name or owner/name (google/fleurs)"
            )
        else:
            _check_online(dataset)
            ds = _load_hub(datasets, dataset, config, split, str(cache / "hf"))
    except AudioInputError:
        raise
    except Exception as e:  # datasets raises many types (connection, missing config, gated dataset)
        why = f" ({e.__cause__})" if e.__cause__ else ""  # "An error occurred while generating..."
        raise AudioInputError(f"hf:{dataset} ({_parts(config, split)}): cannot load: {e}{why}") from None
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
        name = f"hf:{dataset}/{_parts(config, split, sep='/')}#{n}"

        def load(n: int = n, name: str = name) -> np.ndarray:
            audio = ds[n]["audio"] or {}  # a null cell: a bad item, not an AttributeError ending the build
            if audio.get("bytes"):
                return decode_bytes(audio["bytes"], name)
            if not audio.get("path"):
                raise AudioInputError(f"{name}: no audio (the row's audio has neither bytes nor a path)")
            return decode_file(_audio_path(audio["path"], roots, name))

        out.append(Item(f"{prefix}-{n:06d}", language, str(texts[n] or ""), name, f"see {dataset}", load))
    return out
