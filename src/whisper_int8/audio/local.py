"""A user's own recordings: a CSV/JSONL manifest, or a folder of audio files with same-named ``.txt`` files.

Manifest columns: ``audio`` (path, relative to the manifest), ``text``, ``language``; optional ``id``
and ``license``. In a folder, a file's language is the nearest folder above it named by one of the
source's languages (``recordings/de/spk1/x.wav``), otherwise the one language the source is configured
with (a direct parent named by another code is a bad item). Without an
``id``, a clip's id comes from its path relative to the manifest or folder (``spk1/001.wav`` ->
``<language>-local-spk1-001``), so same-named files in different folders stay apart. A relative
path is looked up in the current directory, then in the repository (``DVC_ROOT``: an untracked folder
is not copied into a ``dvc exp run --temp``/``--queue`` workspace), and recorded as configured.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import os
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from whisper.tokenizer import LANGUAGES

from ..languages import language_code
from ..params import ParamError
from ..tracking_uri import in_repository, repo_root
from .errors import AudioInputError, ErrorPolicy
from .manifest import MAX_ID_BYTES, Item, safe_id
from .wavio import decode_file

# a folder's clips (ffmpeg decodes them all); a file with another suffix and a transcript, but no clip
# of the same name beside it (x.TextGrid next to x.wav is a sidecar), is a bad item, not ignored
AUDIO_EXTENSIONS = {
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".webm", ".aac", ".aif", ".aiff",
    ".mp4", ".wma", ".amr", ".3gp", ".caf", ".mka", ".mkv", ".ac3", ".spx",
}  # fmt: skip
LICENSE = "user-provided"
log = logging.getLogger(__name__)
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")  # .json: JSON Lines too, as datasets export it
COLUMNS = ("audio", "text", "language")  # required; id and license are optional


def _not_utf8(values) -> bool:
    """Whether text read with ``surrogateescape`` held bytes that are not UTF-8."""
    return any(isinstance(v, str) and any("\udc80" <= c <= "\udcff" for c in v) for v in values)


def _csv_rows(path: Path, f: TextIO) -> list[tuple[int, dict | AudioInputError]]:
    # skipinitialspace: "a.wav, hello" as people type it; the header's names are stripped, so are the
    # cells (a path " a.wav" is not found, and ', "Hallo, daar"' would not be read as quoted)
    reader = csv.reader(f, skipinitialspace=True)
    found = next(reader, [])
    header = [h.strip().lower() for h in found]  # "Audio", " text" as Excel users write them
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise AudioInputError(
            f"{path}: the header has no {', '.join(missing)} column (found {', '.join(found) or 'nothing'}); "
            "a comma-separated header: audio,text,language[,id,license]"
        )
    rows: list[tuple[int, dict | AudioInputError]] = []
    # the file line a row starts on (blank lines counted, as an editor does), and the last row's
    line = last = reader.line_num + 1
    for cells in reader:
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header) :]):
            # a transcript with an unquoted comma: its words after the comma would be lost
            rows.append((line, AudioInputError(
                f"{path}:{line}: {len(cells)} fields for the header's {len(header)} columns; put a "
                'field that holds a comma in double quotes ("Hallo, hoe gaat het")'
            )))  # fmt: skip
        elif any(c.strip() for c in cells):  # not a blank or all-empty row (",,", as Excel saves)
            rows.append((line, dict(zip(header, cells, strict=False))))
        last, line = line, reader.line_num + 1
    if reader.line_num > last:  # the last row runs over lines: a quoted newline, or a quote never closed
        f.seek(0)
        if "".join(f.readlines()[last - 1 :]).count('"') % 2:
            raise AudioInputError(
                f"{path}:{last}: a double quote opened in this row is never closed, so every later row "
                "would be read into its transcript; close it"
            )
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict | AudioInputError]]:
    rows: list[tuple[int, dict | AudioInputError]] = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            # keys in any case, as the CSV header's ("Audio", "Text")
            rows.append(
                (n, {str(k).strip().lower(): v for k, v in row.items()} if isinstance(row, dict) else row)
            )
        except json.JSONDecodeError as e:
            rows.append((n, AudioInputError(f"{path}:{n}: not valid JSON ({e})")))
    return rows


def _check_not_utf16(path: Path) -> None:
    """Refuse a UTF-16 manifest (PowerShell's ``>`` and Excel's "Unicode Text" write it): read as UTF-8,
    its header is garbage and every JSON line "not valid JSON", which hides the cause."""
    with open(path, "rb") as f:
        if f.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            raise AudioInputError(f"{path}: UTF-16 text, not UTF-8; save the manifest as UTF-8")


def _rows(path: Path) -> list[tuple[int, dict | AudioInputError]]:
    """``(file line, row)`` per row; a row that cannot be read is its error (a bad item, not the file)."""
    try:
        _check_not_utf16(path)
        if path.suffix.lower() == ".csv":
            # -sig: Excel starts with a BOM; surrogateescape: a non-UTF-8 row is a bad item below
            with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
                rows = _csv_rows(path, f)
        else:
            text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
            if text.lstrip().startswith("["):
                raise AudioInputError(
                    f"{path}: a JSON array; a manifest is JSON Lines, one object per line "
                    '({"audio": ..., "text": ..., "language": ...}), or a CSV'
                )
            rows = _jsonl_rows(path, text)
    except (OSError, csv.Error) as e:
        raise AudioInputError(f"{path}: cannot read the manifest ({e})") from None
    return [
        (n, AudioInputError(f"{path}:{n}: not UTF-8 text; save the manifest as UTF-8"))
        if _not_utf8(row.values() if isinstance(row, dict) else [row])
        else (n, row)
        for n, row in rows
    ]


def _path_id(language: str, rel: str) -> str:
    """``<language>-local-<rel without suffix, '/' -> '-'>``: unique per file of one manifest or folder.

    A long one (a file named by its 80-character Chinese transcript) keeps its start and a digest of
    the whole, so ``audio/<id>.wav`` stays a legal file name.
    """
    ident = safe_id(f"{language}-local-{os.path.splitext(rel)[0]}")
    if len(ident.encode()) <= MAX_ID_BYTES:
        return ident
    head = ident.encode()[: MAX_ID_BYTES - 13].decode("utf-8", errors="ignore")
    return f"{head}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def _apart(found: list[tuple[Item, str | None]]) -> list[Item]:
    """The items, ids named by paths (``str``: the path inside the source) made distinct: ``take 1.wav``
    and ``take-1.wav``, or ``x.wav`` and ``x.flac``, give one id, and each such item gets a digest of
    its own path. The same path given twice stays one id (a duplicate, refused later)."""
    paths: dict[str, set[str]] = {}
    for item, rel in found:
        if rel is not None:
            paths.setdefault(item.id, set()).add(rel)
    out = []
    for item, rel in found:
        if rel is not None and len(paths[item.id]) > 1:
            head = item.id.encode()[: MAX_ID_BYTES - 9].decode("utf-8", errors="ignore")
            item = replace(item, id=f"{head}-{hashlib.sha256(rel.encode()).hexdigest()[:8]}")
        out.append(item)
    return out


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


def _field(row: dict, key: str, where: str, required: bool = True) -> str | None:
    """A manifest field as text: a JSON number, list or object there is a bad item, not its repr."""
    value = row.get(key)
    if value is None or value == "":
        if required:
            raise AudioInputError(f"{where}: row has no {key!r}")
        return None
    if isinstance(value, int) and not isinstance(value, bool) and key == "id":
        return str(value)
    if not isinstance(value, str):
        raise AudioInputError(f"{where}: {key!r} must be a string, not {type(value).__name__}")
    return value


def _language(value: str, known: set[str] | None, where: str) -> str:
    """A manifest's language as Whisper's code: also a name or in capitals ("Dutch", "NL" -> "nl")."""
    if known is None:
        return value
    try:
        code = language_code(value.strip())
    except ValueError:
        code = None
    if code not in known:
        raise AudioInputError(
            f"{where}: language {value!r} is not one Whisper knows (a code or a name){_region_hint(value)}"
        )
    return code


def _region_hint(value: str) -> str:
    """What to write for a locale tag ("en-US", "zh_CN", as Common Voice and FLEURS name languages):
    Whisper's codes have no region, and which one a tag means ("zh-HK": zh or yue?) is the user's call."""
    base, tagged, _ = value.strip().replace("_", "-").partition("-")
    try:  # the language part as language_code reads it (names, capitals, jv for jw)
        code = language_code(base) if tagged else None
    except ValueError:
        code = None
    return f"; Whisper's codes name no region or script: write {code}" if code else ""


def _on_disk(audio: Path) -> Path:
    """``audio``, or its name in the other Unicode form when only that one exists: macOS (and its zip
    archives) write "é" decomposed (NFD), a typed manifest composed (NFC), and the two print alike, so
    "audio file not found" named a file the user could see. So is a manifest written on Windows
    (``clips\\a.wav``): its backslashes are separators when no file has them in its name."""
    if audio.exists():
        return audio
    written = (str(audio), str(audio).replace("\\", "/"))
    forms = (Path(unicodedata.normalize(form, text)) for text in written for form in ("NFC", "NFD"))
    return next((other for other in forms if other.exists()), audio)


def _row_folders(manifest: Path) -> tuple[Path, ...]:
    """Where a manifest's relative paths are looked up: beside it as named, then, for a manifest that is a
    symlink (``ln -s /datasets/calls/manifest.csv data/``), beside the file it leads to. The link's folder
    comes first: DVC's symlink cache links a tracked folder's manifest and audio alike, and the cache
    folder the manifest leads to holds none of its files."""
    return tuple(dict.fromkeys((manifest.parent.resolve(), manifest.resolve().parent)))


def _beside(folders: tuple[Path, ...], audio_field: str) -> Path:
    """A row's file in the first of ``folders`` that has it (the first's path when none has)."""
    candidates = [_on_disk((folder / audio_field).resolve()) for folder in folders]
    return next((audio for audio in candidates if audio.exists()), candidates[0])


def from_manifest(
    path: Path,
    policy: ErrorPolicy,
    languages: list[str] | None = None,
    known: set[str] | None = None,
    shown: Path | None = None,
) -> list[Item]:
    """Rows of a manifest; with ``languages`` / ``known``, a row in a language the source does not list
    / Whisper does not know is a bad item. ``shown``: the manifest's path as configured (recorded)."""
    shown = shown or path
    folders = _row_folders(path)
    out: list[tuple[Item, str | None]] = []
    for n, row in _rows(path):
        language = row.get("language") if isinstance(row, dict) else None
        try:
            if isinstance(row, AudioInputError):
                raise row
            where = f"{path}:{n}"
            if not isinstance(row, dict):
                raise AudioInputError(f"{where}: a row is a JSON object, not {type(row).__name__}")
            audio_field = _field(row, "audio", where)
            language = _language(_field(row, "language", where), known, where)
            if languages is not None and language not in languages:
                raise _unlisted(where, language, "from the manifest", path)
            audio = _beside(folders, audio_field)
            text = _field(row, "text", where, required=False)
            if text is None or not text.strip():
                raise AudioInputError(f"{where}: empty or missing transcript for {audio}")
            item_id = _field(row, "id", where, required=False)
            license = _field(row, "license", where, required=False) or LICENSE
        except AudioInputError as e:
            policy.handle(e, language if isinstance(language, str) else None)
            continue
        named = shown.parent / audio_field  # as configured (recorded); ``audio`` is read
        rel = os.path.relpath(path.parent / audio_field, path.parent)  # also for an absolute path
        item = _item(item_id or _path_id(language, rel), language, text, audio, license, named)
        out.append((item, None if item_id else rel))
    return _apart(out)


def _files(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted, and under symlinked folders that lead outside it (one inside
    is listed under its real path already; each real folder is read once, so a link cycle ends)."""
    inside = os.path.realpath(folder)
    seen: set[str] = set()
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(
            d
            for d in dirs
            if not os.path.islink(os.path.join(root, d))
            or os.path.commonpath([inside, os.path.realpath(os.path.join(root, d))]) != inside
        )
        # hidden files and folders are no clips: macOS's ._x.wav beside x.wav on a copied volume
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root, f) for f in files if not f.startswith(".")]
    return sorted(found)


def _folder_language(audio: Path, folder: Path, languages: list[str], known: set[str]) -> str | None:
    """The nearest folder above ``audio`` (up to ``folder``) named by one of the source's languages
    (``nl/spk1/x.wav``); else the direct parent's name when it is another code Whisper knows (a bad
    item: a language the source does not list). A folder named ``it`` or ``no`` higher up is not read
    as a language the source does not list."""
    for parent in audio.parents:
        if parent == folder:  # the source folder's own name is no language (local:/data/hi: [en])
            break
        if parent.name.lower() in languages:  # NL/ as nl/
            return parent.name.lower()
    # another language's code, in any case: a bad item that says how it was read (UK/ as Ukrainian),
    # never a clip labelled with the source's one language (DE/ under a source of [nl])
    direct = audio.parent.name.lower()
    return direct if audio.parent != folder and direct in known else None


def _is_text(path: Path) -> bool:
    return path.suffix.lower() == ".txt"


def from_folder(
    folder: Path, languages: list[str], known: set[str], policy: ErrorPolicy, shown: Path | None = None
) -> list[Item]:
    """Clips of a folder; ``shown``: the folder's path as configured (recorded as the source)."""
    files = _files(folder)
    clips = {f.with_suffix("") for f in files if f.suffix.lower() in AUDIO_EXTENSIONS}
    # stem -> transcript; x.TXT (Windows tools) counts, x.txt wins when both are there
    texts = {f.with_suffix(""): f for f in sorted(files, key=lambda f: f.suffix == ".txt") if _is_text(f)}
    others = {f.with_suffix("") for f in files if not _is_text(f)} - clips
    orphans = sorted(texts.keys() - clips - others)
    if orphans:  # a clip deleted or not copied: its transcript alone is no item
        log.info(
            "%s: %d transcript(s) with no audio beside them, e.g. %s",
            shown or folder,
            len(orphans),
            texts[orphans[0]],
        )
    if not clips and not texts.keys() & others:
        raise AudioInputError(
            f"{shown or folder}: no audio files in the folder (read: {', '.join(sorted(AUDIO_EXTENSIONS))}, "
            "each with a same-named .txt transcript)"
        )
    out: list[tuple[Item, str | None]] = []
    for audio in files:
        known_suffix = audio.suffix.lower() in AUDIO_EXTENSIONS
        stem = audio.with_suffix("")
        if not known_suffix and (_is_text(audio) or stem not in texts or stem in clips):
            continue  # not audio, or a sidecar of a clip (x.TextGrid, x.json next to x.wav)
        language = _folder_language(audio, folder, languages, known) or (
            languages[0] if len(languages) == 1 else None
        )
        try:
            if not known_suffix:
                raise AudioInputError(
                    f"{audio}: has a transcript but {audio.suffix or 'no suffix'} is not an audio suffix "
                    f"read here ({', '.join(sorted(AUDIO_EXTENSIONS))}); convert it, e.g. to .flac"
                )
            if language is None:
                raise AudioInputError(
                    f"{audio}: cannot tell the language; put it in a folder named by its code "
                    "or configure one language for this source"
                )
            if language not in languages:
                named = audio.parent.name
                whence = (
                    "from its folder"
                    if named == language
                    else f"from its folder {named}/: {LANGUAGES[language]}"
                )
                raise _unlisted(audio, language, whence, folder)
            transcript = texts.get(stem)
            if transcript is None:
                raise AudioInputError(f"{audio}: transcript {stem.name}.txt is missing")
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
        rel = audio.relative_to(folder)
        item_id = _path_id(language, rel.as_posix())
        out.append((_item(item_id, language, text, audio, LICENSE, (shown or folder) / rel), rel.as_posix()))
    return _apart(out)


def check_source(spec_path: str, where: str = "params.yaml") -> Path:
    """The folder or manifest ``local:<spec_path>`` names. A wrong path is a mistake in the params, not a
    bad item: refused before any work, whatever ``audio.on_error`` says."""
    path = in_repository(Path(spec_path).expanduser())
    if not path.exists():
        places = dict.fromkeys(str(p.resolve()) for p in (Path.cwd(), repo_root()))
        looked = "" if path.is_absolute() else f" (looked in {' and '.join(places)})"
        raise ParamError(
            f"{where}: audio.sources: local:{spec_path}: not found{looked}; give an existing folder or "
            ".csv/.jsonl manifest"
        )
    if not path.is_dir() and not (path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES):
        raise ParamError(f"{where}: audio.sources: local:{spec_path}: not a folder or a .csv/.jsonl manifest")
    return path


def items(spec_path: str, languages: list[str], known: set[str], policy: ErrorPolicy) -> list[Item]:
    """Items from ``local:<spec_path>`` (manifest file or folder)."""
    shown = Path(spec_path).expanduser()
    path = check_source(spec_path)
    if path.is_dir():
        return from_folder(path, languages, known, policy, shown)
    return from_manifest(path, policy, languages, known, shown)
