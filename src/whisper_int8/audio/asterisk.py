"""Real recorded speech: the Asterisk core sound prompts from Debian (professional speakers).

``asterisk-core-sounds-LANG-{g722,wav}`` hold the audio (``g722``: 16 kHz wideband, ``wav``: 8 kHz),
the parent package ``asterisk-core-sounds-LANG`` the transcripts (``name: text`` lines). Packages are
fetched without root (``apt-get download`` + ``dpkg-deb -x``) into the cache, or read from ``/`` when
installed.
"""

from __future__ import annotations

import gzip
import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..fsutil import file_lock
from .errors import AudioInputError
from .manifest import Item
from .wavio import decode_file

log = logging.getLogger(__name__)

LICENSES = {
    "en": "CC-BY-SA-3.0",
    "es": "CC-BY-SA-3.0",
    "fr": "CC-BY-SA-3.0",
    "it": "CC-BY-3.0",
    "ru": "CC-BY-3.0",
}
CODECS = ("g722", "wav")
SOUNDS = Path("usr/share/asterisk/sounds")


def _installed(package: str) -> bool:
    """dpkg's status is "<want> <flag> <state>": files are all there only in "ok installed".

    ``half-installed`` and ``not-installed`` end in "installed" too; ``want`` may be ``hold``.
    """
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.split()[1:] == ["ok", "installed"]


def _located(package: str, cache: Path, probe: str) -> Path | None:
    """Where ``package``'s files lie already: ``/`` when installed, its unpacked copy in the cache, or
    None (to be fetched)."""
    if shutil.which("dpkg-query") and _installed(package) and (Path("/") / probe).exists():
        return Path("/")
    root = cache / "debian" / package
    return root if (root / ".complete").is_file() else None


def ensure_package(package: str, cache: Path, probe: str = "usr/share") -> Path:
    """Return a root directory under which ``package``'s files lie; download and unpack it once.

    An installed package is used in place when ``probe`` exists under ``/`` (slim images often drop
    ``/usr/share/doc`` at install time; then the package is unpacked into the cache instead).
    Processes sharing the cache (parallel ``dvc exp run`` jobs, test workers) take turns on a lock file
    per package: the second finds the first one's copy instead of replacing it under its readers.
    """
    found = _located(package, cache, probe)
    if found is not None:
        return found
    root = cache / "debian" / package
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise AudioInputError(
                f"{package}: cannot fetch the Debian package: {tool} not found (needs a Debian system)"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(root.parent / f".{package}.lock", f"waiting for another process fetching {package}"):
        found = _located(package, cache, probe)
        if found is not None:  # another process fetched it while this one waited
            return found
        _fetch(package, root)
    return root


def _fetch(package: str, root: Path) -> None:
    """Download ``package`` and unpack it into ``root`` (marked complete), replacing any partial copy."""
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{package}.") as tmp:
        log.info("downloading Debian package %s", package)
        proc = subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            cause = (proc.stderr.strip().splitlines() or ["no .deb downloaded"])[-1]
            raise AudioInputError(
                f"{package}: cannot fetch the Debian package ({cause}); run `apt-get update`, "
                f"check the apt sources, or install it with `apt-get install {package}`"
            )
        unpacked = Path(tmp) / "root"
        proc = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AudioInputError(f"{debs[0].name}: cannot unpack ({proc.stderr.strip()})")
        (unpacked / ".complete").write_text(debs[0].name + "\n")
        shutil.rmtree(root, ignore_errors=True)  # a copy whose unpacking was interrupted
        unpacked.rename(root)


def package_version(package: str, cache: Path, probe: str = str(SOUNDS)) -> str | None:
    """The version of ``package`` that :func:`ensure_package` reads (None: not fetched yet).

    Recorded in the audio summary: a Debian update of the prompts changes the corpus, and each
    machine's cache keeps the version it fetched first.
    """
    root = _located(package, cache, probe)
    if root == Path("/"):
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        return proc.stdout.strip() or None
    if root is None:
        return None
    # "<name>_<version>_<arch>.deb"; apt writes an epoch's colon as %3a
    parts = (root / ".complete").read_text().strip().split("_")
    return parts[1].replace("%3a", ":") if len(parts) == 3 else None


def versions(sound_package: str, cache: Path) -> dict[str, str | None]:
    """The versions of ``asterisk-core-sounds-LANG-CODEC`` (the audio) and ``asterisk-core-sounds-LANG``
    (the transcripts) that the clips of that source came from."""
    text_package = sound_package.rsplit("-", 1)[0]
    language = text_package.rsplit("-", 1)[1]
    return {
        text_package: package_version(text_package, cache, _doc(text_package, language)),
        sound_package: package_version(sound_package, cache),
    }


def _doc(text_package: str, language: str) -> str:
    """Where ``text_package`` keeps its transcripts."""
    return f"usr/share/doc/{text_package}/core-sounds-{language}.txt.gz"


def parse_transcripts(path: Path) -> dict[str, str]:
    """``name: text`` lines (``;`` comments) -> {name: text}; bracketed notes like ``[beep]`` removed."""
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            name, text = line.split(":", 1)
            text = re.sub(r"\[[^\]]*\]", " ", text)
            out[name.strip()] = " ".join(text.split())
    return out


def items(
    language: str, cache: Path, codec: str = "g722", min_words: int = 5, max_words: int = 25
) -> list[Item]:
    """Candidate prompts in ``language`` with ``min_words`` to ``max_words`` words, sorted by id.

    The upper bound keeps out the minute-long menu descriptions, which would dominate evaluation time.
    """
    if language not in LICENSES:
        raise AudioInputError(
            f"asterisk: no Asterisk prompts for language {language!r} (have {', '.join(LICENSES)})"
        )
    if codec not in CODECS:
        raise AudioInputError(f"asterisk: codec must be one of {CODECS}, got {codec!r}")
    text_pkg = f"asterisk-core-sounds-{language}"
    doc_rel = _doc(text_pkg, language)
    doc = ensure_package(text_pkg, cache, doc_rel) / doc_rel
    if not doc.is_file():
        raise AudioInputError(f"{doc}: transcript file missing from package {text_pkg}")
    transcripts = parse_transcripts(doc)
    sounds = ensure_package(f"{text_pkg}-{codec}", cache, str(SOUNDS)) / SOUNDS
    voices = sorted(p for p in sounds.glob(f"{language}_*") if p.is_dir())
    if not voices:
        raise AudioInputError(f"{sounds}: no {language}_* voice directory in package {text_pkg}-{codec}")
    out = []
    for name, text in sorted(transcripts.items()):
        audio = voices[0] / f"{name}.{codec}"
        if not min_words <= len(text.split()) <= max_words or not audio.is_file():
            continue
        out.append(
            Item(
                id=f"{language}-asterisk-{name.replace('/', '-')}",
                language=language,
                text=text,
                source=f"asterisk:{text_pkg}-{codec}",
                license=LICENSES[language],
                load=lambda a=audio: decode_file(a, fmt="g722" if codec == "g722" else None),
            )
        )
    log.info("asterisk %s: %d prompts of %d-%d words (%s)", language, len(out), min_words, max_words, codec)
    return out
