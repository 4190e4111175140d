"""The corpus format: ``<split>/manifest.jsonl`` (one clip per line) next to ``<split>/audio/<id>.wav``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import AudioInputError

MANIFEST = "manifest.jsonl"
FIELDS = ("id", "language", "audio", "text", "duration", "sha256", "source", "license")
_ID_CHARS = r"\w.-"
ID_RE = re.compile(f"[{_ID_CHARS}]+")  # an id is a file name (audio/<id>.wav): no separator, no path
# <id>.wav and its temp name (fsutil.atomic_write_bytes: .<id>.wav.<8 random>.tmp, 18 bytes more)
# must stay within a file system's 255-byte name limit
MAX_ID_BYTES = 255 - 18


def safe_id(text: str) -> str:
    """``text`` as an id: every run of characters outside ``ID_RE`` (``/``, spaces...) becomes ``-``."""
    return re.sub(f"[^{_ID_CHARS}]+", "-", text)


@dataclass(frozen=True)
class Item:
    """A candidate clip from a source: its audio is decoded only if the item is selected."""

    id: str
    language: str
    text: str
    source: str
    license: str
    load: Callable[[], np.ndarray]  # -> 16 kHz mono int16; raises AudioInputError


@dataclass(frozen=True)
class Clip:
    """One manifest row. ``audio`` is relative to the split directory in the file, absolute once read."""

    id: str
    language: str
    audio: str
    text: str
    duration: float
    sha256: str
    source: str
    license: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)


def read_manifest(split_dir: Path | str) -> list[Clip]:
    """Read ``split_dir/manifest.jsonl``; audio paths come back absolute. Raises naming the bad line."""
    path = Path(split_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: manifest not found; run the fetch_audio stage (dvc repro fetch_audio)"
        )
    clips = []
    lines: dict[str, int] = {}
    # "\n" only, as JSON Lines ends a line: splitlines() also splits at U+2028, U+0085..., which
    # json.dumps(ensure_ascii=False) leaves unescaped in a transcript, so the row read as two halves
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AudioInputError(f"{path}:{n}: not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise AudioInputError(f"{path}:{n}: not a JSON object (one clip per line)")
        missing = [f for f in FIELDS if f not in row]
        if missing:
            raise AudioInputError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
        row = {f: row[f] for f in FIELDS}
        _check_row(row, f"{path}:{n}")
        if row["id"] in lines:
            raise AudioInputError(f"{path}:{n}: id {row['id']!r} repeats line {lines[row['id']]}")
        lines[row["id"]] = n
        audio = (Path(split_dir) / row["audio"]).resolve()
        if not audio.is_file():
            raise AudioInputError(
                f"{path}:{n}: audio {row['audio']!r} not found ({audio}); rerun fetch_audio"
            )
        row["audio"] = str(audio)
        clips.append(Clip(**row))
    return clips


def _check_row(row: dict, where: str) -> None:
    """Every field of the type :class:`Clip` says, the text non-empty and the duration positive."""
    wrong = [f for f in FIELDS if f != "duration" and not isinstance(row[f], str)]
    if wrong:
        raise AudioInputError(f"{where}: field(s) {', '.join(wrong)} must be strings")
    duration = row["duration"]
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not duration > 0:
        raise AudioInputError(f"{where}: duration {duration!r} must be a number of seconds > 0")
    if not row["text"].strip():
        raise AudioInputError(f"{where}: empty transcript")


def first_per_language(clips: list[Clip], per_language: int | None) -> list[Clip]:
    """The first ``per_language`` clips of each language in manifest order (all when None)."""
    if per_language is None:
        return clips
    counts: dict[str, int] = {}
    kept = []
    for clip in clips:
        counts[clip.language] = counts.get(clip.language, 0) + 1
        if counts[clip.language] <= per_language:
            kept.append(clip)
    return kept
