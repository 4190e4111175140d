"""constraints.txt: the pinned environment `make setup` installs within, consistent with pyproject.toml."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    """Canonical name -> pinned version, refusing anything but ``name==version`` lines."""
    found: dict[str, str] = {}
    for n, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier  # exactly one specifier
        assert spec.operator == "==" and not req.marker and not req.url, f"constraints.txt:{n}: {line}"
        assert "+" not in spec.version, f"constraints.txt:{n}: a build label matches one platform only"
        name = canonicalize_name(req.name)
        assert name not in found, f"constraints.txt:{n}: {req.name} pinned twice"
        found[name] = spec.version
    return found


def test_every_direct_dependency_is_pinned_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = pins()
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} (pyproject.toml) is not in constraints.txt: run make lock"
        assert req.specifier.contains(locked[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={locked[name]}, outside pyproject.toml's {req.specifier}: "
            "run make lock"
        )


def test_torchs_cuda_companions_are_left_to_torch():
    """PyPI's CUDA torch 2.13.0 pins triton==3.7.1; the CPU venv resolves openai-whisper's triton>=2 to
    the newest, and that pin made a GPU host's `make setup` ResolutionImpossible."""
    held = [n for n in pins() if n == "triton" or n.startswith("nvidia-")]
    assert not held, f"constraints.txt pins {held}: leave them to torch (make lock drops them)"


def test_the_installed_environment_is_the_pinned_one():
    """What `make setup` installed: a constraints.txt edited without reinstalling fails here."""
    differ = []
    for name, pinned in pins().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue  # another platform's package (a marker left it out here)
        if Version(installed).public != Version(pinned).public:
            differ.append(f"{name} {installed} (pinned {pinned})")
    assert not differ, "installed versions differ from constraints.txt; run make setup: " + ", ".join(differ)
