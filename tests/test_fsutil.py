"""Atomic outputs: a replaced folder is an earlier output, never other files; a killed stage cleans up."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from whisper_int8.fsutil import OutputConflictError, atomic_dir, atomic_outputs

from .conftest import sigint_as_a_terminal_sends_it, venv_env


def _write(dest, **files: str) -> None:
    with atomic_dir(dest) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


def test_an_earlier_output_is_replaced_whole(tmp_path):
    _write(tmp_path / "out", a="1", b="1")
    _write(tmp_path / "out", a="2", b="2", c="2")
    assert {p.name: p.read_text() for p in (tmp_path / "out").iterdir()} == {"a": "2", "b": "2", "c": "2"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_linked_output_keeps_its_link_and_replaces_the_target(tmp_path):
    """Regression (a review): the first write replaced the link itself with a folder and left a
    `.out.old` link that rmtree could not remove; every later write then failed (Not a directory)."""
    (tmp_path / "releases" / "v1").mkdir(parents=True)
    (tmp_path / "out").symlink_to(tmp_path / "releases" / "v1", target_is_directory=True)
    for n in ("1", "2"):
        _write(tmp_path / "out", a=n)
        assert (tmp_path / "out").is_symlink() and (tmp_path / "releases" / "v1" / "a").read_text() == n
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "releases"]
    assert [p.name for p in (tmp_path / "releases").iterdir()] == ["v1"]  # no temp or .old left


def test_a_folder_of_other_files_is_refused_and_kept(tmp_path):
    """A mistyped --out (models instead of models/int8) must not delete the other stages' outputs."""
    (tmp_path / "models" / "fp32").mkdir(parents=True)
    (tmp_path / "models" / "fp32" / "model.pt").write_text("weights")
    (tmp_path / "models" / "int8.pt").write_text("old")
    with pytest.raises(OutputConflictError, match=r"models: holds fp32, which this output does not; not rep"):
        _write(tmp_path / "models", **{"int8.pt": "new"})
    assert (tmp_path / "models" / "fp32" / "model.pt").read_text() == "weights"
    assert (tmp_path / "models" / "int8.pt").read_text() == "old"
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputConflictError, match="notes.txt: exists and is not a directory"):
        _write(tmp_path / "notes.txt", a="1")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "notes.txt"]  # no temp folder left


def test_outputs_written_together_are_all_replaced_or_none(tmp_path):
    """Regression: nested atomic_dir blocks replaced the inner output before the outer one was refused."""
    _write(tmp_path / "a", x="old")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mine.txt").write_text("not an output")
    refused = pytest.raises(OutputConflictError, match="b: holds mine.txt")
    with refused, atomic_outputs([tmp_path / "b", tmp_path / "a"]) as ((b, a), _):
        (a / "x").write_text("new")
        (b / "y").write_text("new")
    assert (tmp_path / "a" / "x").read_text() == "old"
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    with atomic_outputs([tmp_path / "a", tmp_path / "c"]) as ((a, c), _):
        (a / "x").write_text("new")
        (c / "z").write_text("new")
    assert (tmp_path / "a" / "x").read_text() == (tmp_path / "c" / "z").read_text() == "new"


def test_ctrl_c_between_two_outputs_of_a_set_replaces_both_then_stops(tmp_path, monkeypatch):
    """Regression (a review): each folder held the signals for its own swap only, so a Ctrl+C during
    the calibration split's swap stopped the build before the eval split's: a new calibration split
    beside the old eval split (whose texts it may share) and the old summary."""
    from whisper_int8 import fsutil

    with atomic_outputs([tmp_path / "a", tmp_path / "b"]) as ((a, b), _):
        (a / "x").write_text("old")
        (b / "y").write_text("old")
    real = fsutil.replace_dir

    def interrupted(src, dest):
        real(src, dest)
        signal.raise_signal(signal.SIGINT)  # as a Ctrl+C arriving during the first swap

    monkeypatch.setattr(fsutil, "replace_dir", interrupted)
    outputs = fsutil.atomic_outputs((tmp_path / "a", tmp_path / "b"), (tmp_path / "summary.json",))
    with pytest.raises(KeyboardInterrupt), outputs as ((a, b), (summary,)):
        (a / "x").write_text("new")
        (b / "y").write_text("new")
        summary.write_text("new")
    assert [(tmp_path / f).read_text() for f in ("a/x", "b/y", "summary.json")] == ["new"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "summary.json"]


STAGE = """
import time
from whisper_int8.cli_common import run, stage_parser
from whisper_int8.fsutil import atomic_dir

def main(args):
    with atomic_dir("out") as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        print("writing", flush=True)
        time.sleep(60)

run(main, stage_parser("a stage killed while writing"))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stage_killed_with_sigterm_or_ctrl_c_leaves_no_temp_output(tmp_path, signum):
    """Ctrl+C (SIGINT) too, and in one line: a KeyboardInterrupt traceback per process before."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "half.bin").write_bytes(b"earlier")
    proc = subprocess.Popen(
        [sys.executable, "-c", STAGE], cwd=tmp_path, env=venv_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_a_terminal_sends_it,
    )  # fmt: skip
    assert proc.stdout.readline() == "writing\n"
    assert len(list(tmp_path.glob(".out.*.tmp"))) == 1
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == 128 + signum
    if signum == signal.SIGINT:
        assert proc.stderr.read() == "interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "half.bin").read_bytes() == b"earlier"


def test_an_output_where_nothing_can_be_written_is_refused_before_the_work():
    """Regression: the folder checks passed /sys/p.json (root may write anywhere by
    its permission bits), and the write failed with a traceback after the run."""
    from whisper_int8.fsutil import check_dir_output, check_file_output

    with pytest.raises(OutputConflictError, match=r"^/proc: cannot write there \(.*\); give another path"):
        check_file_output("/proc/p.json")
    with pytest.raises(OutputConflictError, match=r"^/proc: cannot write there"):
        check_dir_output("/proc/no/such/out")


def test_file_lock_makes_the_second_holder_wait_and_works_on_a_read_only_lock_file(tmp_path, caplog):
    """Processes sharing a cache take turns (flock, so threads with their own descriptor too); a lock
    file another user created (not writable here) still locks."""
    import logging
    import os
    import threading

    from whisper_int8.fsutil import file_lock

    path = tmp_path / ".work.lock"
    order: list[str] = []

    def second_holder() -> None:
        with file_lock(path, "waiting for the first"):
            order.append("second")

    with caplog.at_level(logging.INFO, logger="whisper_int8.fsutil"):
        with file_lock(path):
            second = threading.Thread(target=second_holder)
            second.start()
            second.join(timeout=0.5)
            assert second.is_alive()  # waits
            order.append("first")
        second.join(timeout=10)
    assert order == ["first", "second"] and "waiting for the first" in caplog.text
    os.chmod(path, 0o444)
    with file_lock(path):  # read access suffices
        pass


def test_two_writers_of_one_output_take_turns(tmp_path, monkeypatch):
    """Regression (left by a review): two `pull`s into one folder at once shared replace_dir's .old name,
    and the second failed renaming a dest the first had moved aside (FileNotFoundError, ENOTEMPTY)."""
    import os
    import threading
    import time

    from whisper_int8 import fsutil

    (tmp_path / "out").mkdir()
    replace = os.replace

    def slow_replace(a, b) -> None:  # widens the window between a writer's two renames
        replace(a, b)
        time.sleep(0.2)

    monkeypatch.setattr(os, "replace", slow_replace)
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            with fsutil.staging_dir(tmp_path / "out") as tmp:
                (tmp / "new").mkdir()
                (tmp / "new" / "f.txt").write_text(text)
                fsutil.replace_dir(tmp / "new", tmp_path / "out")
        except BaseException as e:  # noqa: BLE001 (reported by the assert below)
            errors.append(e)

    writers = [threading.Thread(target=write, args=(text,)) for text in ("a", "b")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=30)
    assert not errors, errors
    assert (tmp_path / "out" / "f.txt").read_text() in ("a", "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no lock file, no .old left
    with fsutil.file_lock(tmp_path):  # a directory is locked as it is
        pass


def test_an_output_in_a_folder_it_may_write_but_not_list_is_still_written(tmp_path, monkeypatch):
    """Regression (a review): replace_dir's lock opens the output's folder, which needs read access; in
    one this user may write but not list (mode -wx: a drop box), every stage output and `pull --dest`
    written there before the lock existed failed with PermissionError. It goes on unlocked."""
    import errno
    import os

    from whisper_int8 import fsutil

    drop = tmp_path / "drop"
    (drop / "out").mkdir(parents=True)
    (drop / "out" / "f.txt").write_text("old")
    if os.geteuid() == 0:  # root opens any folder: refused here as the kernel refuses another user
        real_open = os.open

        def unlistable(path, flags, *args, **kwargs):
            if os.fspath(path) == os.fspath(drop):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", unlistable)
    else:
        drop.chmod(0o300)
    try:
        with fsutil.atomic_dir(drop / "out") as tmp:
            (tmp / "f.txt").write_text("new")
    finally:
        drop.chmod(0o700)
    assert (drop / "out" / "f.txt").read_text() == "new"


STOPPED_BETWEEN_THE_RENAMES = """
import os, signal, sys
from pathlib import Path
from whisper_int8 import fsutil
from whisper_int8.cli_common import exit_on_sigterm

exit_on_sigterm()
root = Path(sys.argv[1])
replace = os.replace
calls = []

def replace_then_stopped(a, b):
    replace(a, b)
    calls.append(1)
    if len(calls) == 1:  # dest moved aside, the new output not yet in place
        os.kill(os.getpid(), signal.SIGTERM)

os.replace = replace_then_stopped
fsutil.replace_dir(root / "new", root / "out")
"""


def test_a_stage_stopped_between_the_two_renames_still_has_its_output(tmp_path):
    """Regression (a review): SIGTERM or Ctrl+C after replace_dir moved the old output aside and before
    it put the new one in place left no output at dest (the old one in .out.old)."""
    for name, text in (("out", "old"), ("new", "new")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f.txt").write_text(text)
    script = tmp_path / "stop.py"
    script.write_text(STOPPED_BETWEEN_THE_RENAMES)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          env=venv_env())  # fmt: skip
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert (tmp_path / "out" / "f.txt").read_text() == "new"


def test_sha256_file_hashes_every_chunk(tmp_path):
    """A file longer than one read: a digest of the first chunk only would pass every small-file test."""
    import hashlib

    from whisper_int8.fsutil import sha256_file

    data = bytes(range(256)) * 40
    (tmp_path / "f.bin").write_bytes(data)
    assert sha256_file(tmp_path / "f.bin", chunk=1000) == hashlib.sha256(data).hexdigest()


def test_a_file_write_that_fails_half_way_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    """A full disk while writing: the file keeps its earlier content (never half a new one), and the
    temp file is removed."""
    import errno
    from pathlib import Path

    from whisper_int8.fsutil import atomic_write_bytes

    (tmp_path / "eval.json").write_bytes(b"old")
    real = Path.write_bytes

    def disk_full(self, data):
        real(self, data[:2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(tmp_path / "eval.json", b"new content")
    monkeypatch.undo()
    assert (tmp_path / "eval.json").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_json_text_is_the_one_layout_sorted_indented_utf8_with_a_final_newline():
    from whisper_int8.fsutil import json_text

    assert json_text({"b": 1, "a": "für"}) == '{\n  "a": "für",\n  "b": 1\n}\n'


def test_a_linked_output_is_staged_beside_its_target(tmp_path):
    """The temp folder lies beside the folder the link points to, so the final rename stays on one
    file system (a link to another disk: staged beside the link, the rename failed with EXDEV)."""
    (tmp_path / "disk" / "v1").mkdir(parents=True)
    (tmp_path / "out").symlink_to(tmp_path / "disk" / "v1", target_is_directory=True)
    with atomic_dir(tmp_path / "out") as tmp:
        assert tmp.parent == tmp_path / "disk"
        (tmp / "a").write_text("1")
    assert (tmp_path / "disk" / "v1" / "a").read_text() == "1"


def test_a_file_output_that_is_a_folder_is_refused_before_any_output_is_replaced(tmp_path):
    _write(tmp_path / "a", x="old")
    (tmp_path / "summary.json").mkdir()
    refused = pytest.raises(OutputConflictError, match="summary.json: is a folder, not a file")
    with refused, atomic_outputs([tmp_path / "a"], [tmp_path / "summary.json"]) as ((a,), (summary,)):
        (a / "x").write_text("new")
        summary.write_text("{}")
    assert (tmp_path / "a" / "x").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "summary.json"]


def test_the_files_of_a_set_are_put_in_place_after_its_folders(tmp_path, monkeypatch):
    """The last file (the metrics file DVC reads) marks a complete set: it never appears before the
    folders written with it."""
    from whisper_int8 import fsutil

    real = fsutil.replace_dir
    seen: list[bool] = []

    def replace_dir(src, dest):
        seen.append((tmp_path / "summary.json").exists())
        real(src, dest)

    monkeypatch.setattr(fsutil, "replace_dir", replace_dir)
    with fsutil.atomic_outputs([tmp_path / "a"], [tmp_path / "summary.json"]) as ((a,), (summary,)):
        (a / "x").write_text("new")
        summary.write_text("{}")
    assert seen == [False] and (tmp_path / "summary.json").read_text() == "{}"


def test_outputs_get_a_normal_files_permissions_and_the_umask_is_kept(tmp_path):
    """mkstemp and mkdtemp create 0600 and 0700: other users (a serving account, CI's cache) could not
    read the outputs."""
    import os

    from whisper_int8.fsutil import atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "card.json", {})
        _write(tmp_path / "out", a="1")
        assert os.umask(0o022) == 0o022  # left as it was
    finally:
        os.umask(old)
    assert (tmp_path / "card.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    ("n", "listed"), [(5, "e0, e1, e2, e3, e4, which"), (7, "e0, e1, e2, e3, e4 and 2 more, which")]
)
def test_a_refused_folder_names_its_first_five_other_entries(tmp_path, n, listed):
    (tmp_path / "out").mkdir()
    for i in range(n):
        (tmp_path / "out" / f"e{i}").write_text("mine")
    with pytest.raises(OutputConflictError, match=f"out: holds {listed} this output does not"):
        _write(tmp_path / "out", a="1")


@pytest.mark.parametrize("left", ["folder", "link"])
def test_an_old_output_left_by_an_interrupted_swap_does_not_block_the_next(tmp_path, left):
    """A `.out.old` left behind (a stage killed with SIGKILL after its first rename, or a link that an
    older version left there): removed first, else every later rename onto it failed (ENOTEMPTY,
    ENOTDIR)."""
    _write(tmp_path / "out", a="1")
    old = tmp_path / ".out.old"
    if left == "folder":
        old.mkdir()
        (old / "a").write_text("older")
    else:
        (tmp_path / "elsewhere").mkdir()
        old.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    _write(tmp_path / "out", a="2")
    assert (tmp_path / "out" / "a").read_text() == "2" and not old.exists() and not old.is_symlink()


def test_outputs_in_folders_not_yet_made_are_written(tmp_path):
    from whisper_int8.fsutil import atomic_write_json

    atomic_write_json(tmp_path / "metrics" / "new" / "eval.json", {"wer": 0.1})
    _write(tmp_path / "models" / "new" / "int8", a="1")
    assert (tmp_path / "metrics" / "new" / "eval.json").read_text() == '{\n  "wer": 0.1\n}\n'
    assert (tmp_path / "models" / "new" / "int8" / "a").read_text() == "1"


def test_a_file_given_as_a_folder_of_outputs_is_refused_before_the_work(tmp_path):
    from whisper_int8.fsutil import check_dir_output

    (tmp_path / "int8").write_text("a file")
    with pytest.raises(OutputConflictError, match="int8: exists and is not a directory; give a folder"):
        check_dir_output(tmp_path / "int8")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "notes.txt").write_text("mine")
    check_dir_output(tmp_path / "models")  # no names: any folder
    with pytest.raises(OutputConflictError, match="models: holds notes.txt, which this output does not"):
        check_dir_output(tmp_path / "models", ("int8.pt",))


def test_outputs_that_are_one_path_written_two_ways_overlap(tmp_path):
    """A link, or `..`, naming the same folder as another output: the second write would replace the first."""
    from whisper_int8.fsutil import check_apart

    (tmp_path / "data" / "calibration").mkdir(parents=True)
    (tmp_path / "calib").symlink_to(tmp_path / "data" / "calibration", target_is_directory=True)
    for other in (tmp_path / "calib", tmp_path / "data" / "eval" / ".." / "calibration"):
        with pytest.raises(OutputConflictError, match="overlapping outputs"):
            check_apart(tmp_path / "data" / "calibration", other)
    inner, outer = tmp_path / "data" / "calibration", tmp_path / "data"
    for pair in ((inner, outer), (outer, inner)):  # one inside the other, in either order
        with pytest.raises(OutputConflictError, match="overlapping outputs"):
            check_apart(*pair)
    check_apart(tmp_path / "data" / "calibration", tmp_path / "data" / "eval")


def test_dir_digest_is_the_content_whatever_the_folders_place_or_listing_order(tmp_path, monkeypatch):
    """The FP32 baseline stores it: a copy of the same model elsewhere (a CI clone, a dvc checkout that
    lists its files in another order) must match, other weights must not; no folder: None."""
    from pathlib import Path

    from whisper_int8.fsutil import dir_digest

    for root in ("a", "b"):
        (tmp_path / root / "sub").mkdir(parents=True)
        (tmp_path / root / "model.pt").write_bytes(b"weights")
        (tmp_path / root / "sub" / "card.json").write_text("{}")
    first = dir_digest(tmp_path / "a")
    real = Path.rglob
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: reversed(list(real(self, pattern))))
    assert dir_digest(tmp_path / "b") == first
    (tmp_path / "b" / "model.pt").write_bytes(b"weighTs")  # same size
    assert dir_digest(tmp_path / "b") != first
    assert dir_digest(tmp_path / "nosuch") is None
