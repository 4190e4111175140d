"""A user's own recordings: a CSV/JSONL manifest, or a folder of audio files with same-named ``.txt`` files.

Manifest columns: ``audio`` (path, relative to the manifest), ``text``, ``language``; optional ``id``
and ``license``. In a folder, a file's language is its parent folder's name when that is a language
code (``recordings/de/x.wav``), otherwise the one language the source is configured with. Without an
``id``, a clip's id comes from its path relative to the manifest or folder (``spk1/001.wav`` ->
``<language>-local-spk1-001``), so same-named files in different folders stay apart.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from .errors import AudioInputError, ErrorPolicy
from .manifest import Item, safe_id
from .wavio import decode_file

AUDIO_EXTENSIONS = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aac"}
LICENSE = "user-provided"


def _rows(path: Path) -> list[dict]:
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel starts with a BOM
                return list(csv.DictReader(f))
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise AudioInputError(f"{path}:{n}: not valid JSON ({e})") from None
        return rows
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise AudioInputError(f"{path}: cannot read the manifest ({e})") from None


def _path_id(language: str, rel: str) -> str:
    """``<language>-local-<rel without suffix, '/' -> '-'>``: unique per file of one manifest or folder."""
    return safe_id(f"{language}-local-{os.path.splitext(rel)[0]}")


def _item(
    item_id: str, language: str, text: str, audio: Path, license: str, named: Path | None = None
) -> Item:
    """``named``: the path as the manifest gives it (recorded), where ``audio`` is resolved (read)."""
    return Item(
        id=item_id,
        language=language,
        text=text.strip(),
        source=f"local:{named or audio}",  # as configured: the same bytes from every clone
        license=license,
        load=lambda: decode_file(audio),
    )


def _unlisted(file: Path | str, language: str, whence: str, spec: Path) -> AudioInputError:
    return AudioInputError(
        f"{file}: language {language} ({whence}) is not listed for local:{spec}; "
        "list it in audio.sources or move the file"
    )


def from_manifest(
    path: Path, policy: ErrorPolicy, languages: list[str] | None = None, known: set[str] | None = None
) -> list[Item]:
    """Rows of a manifest; with ``languages`` / ``known``, a row in a language the source does not list
    / Whisper does not know is a bad item."""
    out = []
    for n, row in enumerate(_rows(path), 1):
        try:
            if not isinstance(row, dict) or not row.get("audio"):
                raise AudioInputError(f"{path}:{n}: row has no 'audio' path")
            if not row.get("language"):
                raise AudioInputError(f"{path}:{n}: row has no 'language' code")
            language = str(row["language"])
            if known is not None and language not in known:
                raise AudioInputError(f"{path}:{n}: language {language!r} is not one Whisper knows")
            if languages is not None and language not in languages:
                raise _unlisted(f"{path}:{n}", language, "from the manifest", path)
            named = path.parent / str(row["audio"])  # as configured (recorded); resolved to read it
            audio = named.resolve()
            text = row.get("text")
            if text is None or not str(text).strip():
                raise AudioInputError(f"{path}:{n}: empty or missing transcript for {audio}")
        except AudioInputError as e:
            policy.handle(e, row.get("language") if isinstance(row, dict) else None)
            continue
        rel = os.path.relpath(named, path.parent)  # also for an absolute path
        item_id = str(row.get("id") or _path_id(str(row["language"]), rel))
        license = str(row.get("license") or LICENSE)
        out.append(_item(item_id, str(row["language"]), str(text), audio, license, named))
    return out


def from_folder(folder: Path, languages: list[str], known: set[str], policy: ErrorPolicy) -> list[Item]:
    out = []
    for audio in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()):
        language = (
            audio.parent.name
            if audio.parent.name in known
            else (languages[0] if len(languages) == 1 else None)
        )
        try:
            if language is None:
                raise AudioInputError(
                    f"{audio}: cannot tell the language; put it in a folder named by its code "
                    "or configure one language for this source"
                )
            if language not in languages:
                raise _unlisted(audio, language, "from its folder", folder)
            transcript = audio.with_suffix(".txt")
            if not transcript.is_file():
                raise AudioInputError(f"{audio}: transcript {transcript.name} is missing")
            try:
                text = transcript.read_text(encoding="utf-8-sig").strip()  # -sig: Notepad's BOM
            except UnicodeDecodeError:
                raise AudioInputError(
                    f"{transcript}: transcript is not UTF-8 text; save it as UTF-8"
                ) from None
            except OSError as e:
                raise AudioInputError(f"{transcript}: cannot read the transcript ({e.strerror})") from None
            if not text:
                raise AudioInputError(f"{transcript}: empty transcript")
        except AudioInputError as e:
            policy.handle(e, language)
            continue
        item_id = _path_id(language, audio.relative_to(folder).as_posix())
        out.append(_item(item_id, language, text, audio, LICENSE))
    return out


def items(spec_path: str, languages: list[str], known: set[str], policy: ErrorPolicy) -> list[Item]:
    """Items from ``local:<spec_path>`` (manifest file or folder)."""
    path = Path(spec_path).expanduser()
    if path.is_dir():
        return from_folder(path, languages, known, policy)
    if not path.exists():
        raise AudioInputError(
            f"local:{spec_path}: not found; give an existing folder or .csv/.jsonl manifest"
        )
    if path.is_file() and path.suffix.lower() in (".csv", ".jsonl", ".json"):
        return from_manifest(path, policy, languages, known)
    raise AudioInputError(f"local:{spec_path}: not a folder or a .csv/.jsonl manifest")
