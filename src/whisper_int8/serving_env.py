"""The environment logged with the registered model: what a serving host installs to run it.

Requirements: the packages the pyfunc imports, pinned to the versions installed here, and torchao
for a GPU host (pinned by this package's ``gpu`` extra). Constraints:
every package those pull in, pinned the same way, so an environment MLflow builds for the model
(``mlflow models serve`` without ``--env-manager local``, ``mlflow models build-docker``) runs the
libraries the model was evaluated with, not whatever is newest that day. Only that closure, not the
repository's whole constraints.txt: MLflow reads each constraint as a requirement when it checks a
loaded model against its environment, and DVC, pytest or Kokoro would each warn "uninstalled" there.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution, requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

RUNTIME = ("torch", "openai-whisper", "mlflow", "numpy", "pandas")
# PyPI's CUDA torch pins triton and nvidia-* itself (triton 3.7.1 for 2.13.0): a pin taken from a CPU
# host would make a GPU host's install impossible. setuptools: MLflow's python_env.yaml pins the
# build tools, and the repository's constraints.txt does not lock it (pip freeze leaves it out).
UNPINNED = ("triton", "nvidia-", "setuptools")


def _pin(name: str) -> str:
    """``name==version`` as installed, without the local label (torch ``2.13.0+cpu`` -> ``2.13.0``):
    a serving host installs the torch build for its hardware, as MLflow's own inference does."""
    return f"{name}=={distribution(name).version.split('+')[0]}"


def gpu_requirements() -> list[str]:
    """This package's ``gpu`` extra (torchao, pinned in pyproject.toml): imported only where
    ``WHISPER_INT8_DEVICE`` puts the model on a GPU, installed everywhere, so one logged environment
    serves a CPU and a GPU fleet."""
    declared = [Requirement(r) for r in requires(__package__.replace("_", "-")) or []]
    return [
        f"{r.name}{r.specifier}"
        for r in declared
        if r.marker and r.marker.evaluate({"extra": "gpu"}) and not r.marker.evaluate({"extra": ""})
    ]


def requirements() -> list[str]:
    """Pinned from what is installed, so MLflow need not load the model to infer them."""
    return [_pin(name) for name in RUNTIME] + gpu_requirements()


def dependency_closure(names: tuple[str, ...]) -> list[str]:
    """Canonical names of the installed packages that ``names`` need, directly or not, with their
    extras followed and environment markers evaluated here; ``names`` included, sorted."""
    found: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(name, frozenset[str]()) for name in names]
    while todo:
        name, extras = todo.pop()
        if (canonicalize_name(name), extras) in seen:
            continue
        seen.add((canonicalize_name(name), extras))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # optional here (a marker named another platform, or an extra nobody asked for)
        found.add(canonicalize_name(name))
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""})
            if wanted:
                todo.append((req.name, frozenset(req.extras)))
    return sorted(found)


def constraints() -> list[str]:
    """The installed version of every package the requirements pull in (themselves excluded)."""
    direct = {canonicalize_name(n) for n in RUNTIME}
    return [
        _pin(name)
        for name in dependency_closure(RUNTIME)
        if name not in direct and not name.startswith(UNPINNED)
    ]
