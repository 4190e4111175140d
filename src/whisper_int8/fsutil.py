"""Atomic file and directory writes, and hashing: a failing stage never leaves half-written outputs."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: Path | str, waiting: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` against other processes and threads (each opens its own).

    For work on a cache that several processes share (parallel ``dvc exp run`` jobs, test workers):
    the second waits and then finds the first one's result. The file is created when missing and left
    behind (removing it would race with a waiter); read access is enough, so a cache another user
    created works too. An existing directory is locked as it is (nothing left in it or beside it).
    ``waiting``: logged when another holder makes this one wait.
    """
    fd = os.open(path, os.O_RDONLY | (0 if os.path.isdir(path) else os.O_CREAT), 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                log.info("%s", waiting)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    with _staging_file(path) as tmp:
        tmp.write_bytes(data)
        os.replace(tmp, path)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any) -> str:
    """The one JSON layout of every file the pipeline writes (stable diffs, readable non-ASCII)."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write_json(path: Path | str, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


@contextlib.contextmanager
def staging_dir(dest: Path | str) -> Iterator[Path]:
    """Yield a new temp directory beside ``dest`` (same filesystem, so a rename is atomic); it is
    removed on exit, whatever is left in it."""
    dest = resolved(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OutputConflictError(ValueError):
    """An output path holds something the stage did not write; it is left as it was."""


@contextlib.contextmanager
def atomic_dir(dest: Path | str) -> Iterator[Path]:
    """Yield a temp directory beside ``dest``; on success it replaces ``dest`` whole.

    On error the temp directory is removed and ``dest`` (if it existed) is untouched. So is a ``dest``
    holding anything the new output does not (a mistyped ``--out models``): only an earlier output of
    the same kind is replaced, never a folder of other files.
    """
    with atomic_outputs([dest]) as ((tmp,), _):
        yield tmp


@contextlib.contextmanager
def atomic_outputs(
    dirs: Sequence[Path | str] = (), files: Sequence[Path | str] = ()
) -> Iterator[tuple[tuple[Path, ...], tuple[Path, ...]]]:
    """Outputs that belong together (a stage's folders and files): all replaced, or none.

    Yields a temp directory per folder of ``dirs`` and a temp file per path of ``files``, each beside
    its output. Once the block is done every output is checked (a folder as in :func:`atomic_dir`, a
    file path must not be a folder), and only when each may be replaced are they all put in place:
    folders first, then files in their order (so a last file, the metrics file DVC reads, marks a
    complete set), SIGINT and SIGTERM held until the last. An error in the block (a full disk while
    writing the third file) leaves every output as it was: written one by one, such an error left new
    splits beside an old summary, or new CSVs beside an old eval.json.
    """
    dir_paths, file_paths = [Path(d) for d in dirs], [Path(f) for f in files]
    with contextlib.ExitStack() as stack:
        dir_tmps = tuple(stack.enter_context(staging_dir(d)) for d in dir_paths)
        file_tmps = tuple(stack.enter_context(_staging_file(f)) for f in file_paths)
        yield dir_tmps, file_tmps
        for dest, tmp in zip(dir_paths, dir_tmps, strict=True):
            _check_replaceable(dest, {p.name for p in tmp.iterdir()})
        for path in file_paths:
            check_file_output(path)
        with _signals_held():  # Ctrl+C between two outputs would leave a mixed set
            for dest, tmp in zip(dir_paths, dir_tmps, strict=True):
                replace_dir(tmp, dest)
            for path, tmp in zip(file_paths, file_tmps, strict=True):
                os.replace(tmp, path)


@contextlib.contextmanager
def _staging_file(path: Path) -> Iterator[Path]:
    """A new empty temp file beside ``path`` with a normal file's permissions; removed on exit unless it
    was renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        yield Path(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _check_replaceable(dest: Path, names: Collection[str]) -> None:
    """Raise unless ``dest`` is absent or a directory whose entries are all among the output's ``names``."""
    if not dest.exists():
        return
    if not dest.is_dir():
        raise OutputConflictError(
            f"{dest}: exists and is not a directory; not replaced. Give another output path"
        )
    extra = sorted({p.name for p in dest.iterdir()} - set(names))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise OutputConflictError(
            f"{dest}: holds {shown}, which this output does not; not replaced, nothing deleted. "
            "Give a new or empty folder, or one this stage wrote before"
        )


def check_file_output(path: Path | str) -> None:
    """Raise unless ``path`` can take a file written by :func:`atomic_write_bytes` (absent or a file)."""
    path = Path(path)
    if path.is_dir():
        raise OutputConflictError(f"{path}: is a folder, not a file; not replaced. Give a file path")
    _check_parents(path)


def check_dir_output(path: Path | str, names: Collection[str] | None = None) -> None:
    """Raise unless ``path`` can be a folder of outputs (absent or a folder): checked before the work.

    ``names``: the entries the output will hold; a folder holding anything else (a mistyped ``--out``)
    is refused now, as :func:`atomic_dir` would refuse it after the work.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputConflictError(f"{path}: exists and is not a directory; give a folder for the outputs")
    if names is not None:
        _check_replaceable(path, names)
    _check_parents(path)


def check_apart(*paths: Path | str) -> None:
    """Raise if two outputs are one path or one lies inside the other: the second would replace the first."""
    resolved = [(Path(p), Path(p).resolve()) for p in paths]
    for i, (a, ra) in enumerate(resolved):
        for b, rb in resolved[i + 1 :]:
            if ra == rb or ra.is_relative_to(rb) or rb.is_relative_to(ra):
                raise OutputConflictError(f"{a} and {b}: overlapping outputs; give each its own path")


def _check_parents(path: Path) -> None:
    """The nearest existing folder above ``path`` takes files: a write there is tried, since a
    permission bit does not tell (root, a read-only or special file system)."""
    parent = next((p for p in path.parents if p.exists()), Path.cwd())
    if not parent.is_dir():
        raise OutputConflictError(f"{parent}: exists and is not a directory; cannot write {path}")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-check-"):
            pass
    except OSError as e:
        raise OutputConflictError(
            f"{parent}: cannot write there ({e.strerror}); give another path for {path}"
        ) from None


def resolved(dest: Path | str) -> Path:
    """``dest``, or the path a symlink there points to: the link stays and its target is replaced (a
    deployment's ``current -> releases/v3``, an output folder linked to another disk)."""
    dest = Path(dest)
    return Path(os.path.realpath(dest)) if dest.is_symlink() else dest


def _remove(path: Path) -> None:
    if path.is_symlink():  # left by a version that replaced a link itself: rmtree refuses links
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def lock_if_possible(lock: contextlib.AbstractContextManager[None], unlocked: str) -> Iterator[None]:
    """``lock`` held over the block, or the block run without it where it cannot be taken (an OSError:
    a lock file in a folder this user may not write or list); ``unlocked``: logged then, with why.
    For locks that only make a second process wait its turn, so a read-only place still works."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock)
        except OSError as e:
            log.debug("%s (%s)", unlocked, e.strerror or e)
        yield


def _parent_lock(dest: Path) -> contextlib.AbstractContextManager[None]:
    """:func:`file_lock` on ``dest``'s folder, or none where it cannot be taken: a folder this user may
    write but not list (mode -wx, a drop box) cannot be opened to be locked, and the output written
    there before the lock existed must still be (it failed with PermissionError); only a second
    writer's turn is then not waited for."""
    return lock_if_possible(
        file_lock(dest.parent),
        f"{dest.parent}: not locked; writing {dest.name} without waiting for another writer",
    )


def replace_dir(src: Path, dest: Path) -> None:
    """Put the directory ``src`` at ``dest`` (a sibling path, or of the path a link at ``dest`` points
    to: :func:`resolved`), replacing a directory there whole."""
    os.chmod(src, 0o777 & ~_umask())
    dest = resolved(dest)
    # Two writers of one dest (two `whisper-int8 pull`s of a fleet's host) take turns: they would share
    # the .old name, and the second's rename of a dest the first had just moved aside failed.
    with _parent_lock(dest):
        if not dest.exists():
            os.replace(src, dest)
            return
        old = dest.with_name(f".{dest.name}.old")
        _remove(old)
        with _signals_held():  # Ctrl+C or SIGTERM between the renames would leave no output at dest
            os.replace(dest, old)
            os.replace(src, dest)
        _remove(old)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM held back until the block is done, then raised again: a stage stopped there
    exits after it, not half-way. Their Python handlers are swapped for a recorder (a blocked signal
    mask would not do: another thread, torch's or OpenMP's, takes the signal, and Python still runs the
    handler in the main thread). Only the main thread sets handlers; elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not None]
    previous = {s: signal.signal(s, lambda signum, _frame: received.append(signum)) for s in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received:
            signal.raise_signal(signum)


def dir_digest(root: Path | str) -> str | None:
    """What a directory holds (every file's path and sha256), short: the FP32 evaluation stores its
    model's, so a baseline is refused once the directory holds another model, not only once another
    directory is named. About 0.3 s for Whisper base. None for a directory that is not there."""
    root = Path(root)
    if not root.is_dir():
        return None
    files = sorted(p for p in root.rglob("*") if p.is_file())
    rows = [(p.relative_to(root).as_posix(), sha256_file(p)) for p in files]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
