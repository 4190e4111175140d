"""The served model's environment: the closure of its requirements over installed package metadata."""

from __future__ import annotations

from pathlib import Path

from whisper_int8.serving_env import dependency_closure


def dist(site: Path, name: str, *requires: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    lines = [f"Name: {name}", "Version: 1.0", *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("Metadata-Version: 2.1\n" + "\n".join(lines) + "\n")


def test_the_closure_follows_extras_and_markers(tmp_path, monkeypatch):
    dist(tmp_path, "top_pkg", "Mid.Pkg[fast]", "skipped; python_version < '3'", "absent-pkg")
    dist(tmp_path, "mid_pkg", "fast-dep; extra == 'fast'", "slow-dep; extra == 'slow'", "top-pkg")
    dist(tmp_path, "fast_dep")
    dist(tmp_path, "slow_dep")
    dist(tmp_path, "skipped")
    monkeypatch.syspath_prepend(str(tmp_path))
    # an extra asked for is followed, one not asked for is not; a marker false here drops its
    # package; a requirement not installed (optional on this platform) is left out; cycles end
    assert dependency_closure(("top_pkg",)) == ["fast-dep", "mid-pkg", "top-pkg"]
