"""Every package module a stage script imports is a DVC dependency of that stage.

Otherwise editing it (the log-Mel front end, the bootstrap intervals) leaves `dvc repro` reusing
outputs the new code would not produce, while promote, which digests the whole package, registers
code that was never evaluated. The import graph is read from the sources (no import side effects).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, venv_env

SRC = REPO / "src" / "whisper_int8"
# Modules that parse params, name errors, print a CLI's messages, write files atomically or resolve
# the tracking URI: what a stage computes does not depend on them, and listing them would rerun every
# stage for a reworded message.
PLUMBING = {
    "cli_common.py",
    "fsutil.py",
    "params.py",
    "stage_files.py",
    "tracking_uri.py",
    "audio/errors.py",
    "audio/__init__.py",
}
# The import hook that keeps numba out and the heap trims change peak memory and nothing else: a
# dependency of the stages that measure it only.
MEMORY_ONLY = {"__init__.py", "lazy_numba.py", "heap.py", "mapped_pages.py", "memory.py"}
MEASURES_MEMORY = {"evaluate", "evaluate_fp32"}
# Per stage, imported but never run by its command (with why).
NOT_RUN = {
    # --baseline-only evaluates models/fp32 and writes its metrics: no INT8 loading, no comparison
    "evaluate_fp32": {"quant/", "eval_report.py", "significance.py"},
    # calibrate.py's Clip type: convert reads the calibration files, never a split's manifest
    "convert": {"audio/manifest.py"},
}


def _file(dotted: str) -> Path | None:
    path = SRC.joinpath(*dotted.split(".")) if dotted else SRC
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def _reexported(package: str, name: str) -> str | None:
    """The submodule whose ``name`` the ``__init__`` of ``package`` imports (``whisper_int8.audio``'s
    ``read_manifest`` is ``audio.manifest``'s): the code a ``from package import name`` runs. The
    :data:`PLUMBING` ``__init__`` files are not followed, so without this the module went unseen."""
    init = _file(package)
    if init is None or init.name != "__init__.py":
        return None
    for node in ast.parse(init.read_text(encoding="utf-8")).body:
        relative = isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
        if relative and any((a.asname or a.name) == name for a in node.names):
            return ".".join(filter(None, [package, node.module]))
    return None


def _imports(source: Path, package: str) -> set[str]:
    """Dotted names (relative to whisper_int8) of the package modules ``source`` imports."""
    found = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = parts[: len(parts) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            elif (node.module or "").split(".")[0] == "whisper_int8":
                module = node.module.partition(".")[2]
            else:
                continue
            names = [module, *(f"{module}.{a.name}".strip(".") for a in node.names)]
            names += [_reexported(module, a.name) or "" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.partition(".")[2] for a in node.names if a.name.startswith("whisper_int8.")]
        else:
            continue
        found |= {n for n in names if n and _file(n)}
    return found


def imported_files(script: Path) -> set[str]:
    """Every package file ``script`` reaches through imports, as paths under src/whisper_int8/ (not
    through the :data:`PLUMBING` modules)."""
    seen: set[str] = set()
    todo = ["", *_imports(script, "")]  # Python runs the package's __init__ before any module of it
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _file(name)
        if str(path.relative_to(SRC)) in PLUMBING:
            continue  # they import the error classes of the rest, not its code paths
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += [n for n in _imports(path, package) if n not in seen]
    return {str(_file(n).relative_to(SRC)) for n in seen}


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.mark.parametrize("stage", [s for s, spec in STAGES.items() if not spec.get("always_changed")])
def test_stage_depends_on_every_module_it_runs(stage):
    spec = STAGES[stage]
    script = REPO / spec["cmd"].split()[1]
    deps = [d.removeprefix("src/whisper_int8/") for d in spec["deps"] if d.startswith("src/whisper_int8")]
    exempt = PLUMBING | NOT_RUN.get(stage, set()) | (set() if stage in MEASURES_MEMORY else MEMORY_ONLY)

    def covered(f: str, paths) -> bool:  # the file itself, or a folder above it
        return any(f == p or f.startswith(p.rstrip("/") + "/") for p in paths)

    missing = sorted(f for f in imported_files(script) if not covered(f, deps) and not covered(f, exempt))
    add = ", ".join(f"src/whisper_int8/{m}" for m in missing)
    assert not missing, f"dvc.yaml stage {stage}: add {add} to its deps"


def _model_size_module() -> str:
    """The file (under src/whisper_int8/) of the function whose bytes ``model_size_mb`` reports, as
    :func:`whisper_int8.evaluate.evaluate_with_model` calls it."""
    import whisper_int8.evaluate as evaluate

    tree = ast.parse((SRC / "evaluate.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Subscript)
            and getattr(node.targets[0].slice, "value", None) == "model_size_mb"
        ):
            call = next(n for n in ast.walk(node.value) if isinstance(n, ast.Call))
            module = getattr(evaluate, call.func.id).__module__
            return str(_file(module.partition(".")[2]).relative_to(SRC))
    raise AssertionError("evaluate.py sets no model_size_mb")


@pytest.mark.parametrize("stage", ["evaluate_fp32", "evaluate"])
def test_the_model_size_is_measured_by_a_dependency_of_the_evaluate_stages(stage):
    """Regression: model_size_mb (and so size_ratio, which the gate judges against max_size_ratio) was
    counted by fsutil.dir_bytes, a module exempt as plumbing: a change to what it counts left
    `dvc repro` reusing eval.json ("Data and pipelines are up to date") with the old figures."""
    deps = [d.removeprefix("src/whisper_int8/") for d in STAGES[stage]["deps"]]
    module = _model_size_module()
    assert module not in PLUMBING and module in deps, f"{stage}: {module} measures model_size_mb"


def test_the_import_graph_is_read_from_the_sources():
    # a test that passes on an empty graph proves nothing: the evaluate script reaches the log-Mel code
    files = imported_files(REPO / "stages" / "evaluate.py")
    assert {
        "__init__.py",
        "evaluate.py",
        "transcribe.py",
        "mel.py",
        "significance.py",
        "quant/cpu.py",
    } <= files


def test_a_name_a_package_re_exports_is_traced_to_its_module():
    """Regression: `from whisper_int8.audio import first_per_language, read_manifest` (the calibrate
    stage's choice of clips) stopped at audio/__init__.py (plumbing), so audio/manifest.py could leave
    calibrate's deps with this test still passing, and an edit to the clip selection not re-run it."""
    assert "audio/manifest.py" in imported_files(REPO / "stages" / "calibrate.py")


def test_evaluate_stages_watch_the_split_and_models_params_yaml_names(dvc_repo, monkeypatch):
    """evaluate.split / evaluate.models set elsewhere: DVC watches those paths, not data/eval and models/."""
    from dvc.repo import Repo

    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["evaluate"]["split"] = "data/eval_large"
    params["evaluate"]["models"] = {"fp32": "models/other_fp32", "int8": "models/int8_sq"}
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(dvc_repo)  # as `dvc status` runs there
    with Repo(str(dvc_repo)) as repo:
        deps = {
            name: {str(Path(d.def_path)) for d in repo.stage.collect(name)[0].deps}
            for name in ("evaluate_fp32", "evaluate", "convert")
        }
    assert {"data/eval_large", "models/other_fp32"} <= deps["evaluate_fp32"]
    assert "models/int8_sq" not in deps["evaluate_fp32"] and "data/eval" not in deps["evaluate_fp32"]
    assert {"data/eval_large", "models/int8_sq"} <= deps["evaluate"] and "models/int8" not in deps["evaluate"]
    assert "models/fp32" in deps["convert"]  # convert measures it for the card's size ratio


def test_every_stage_script_checks_its_environment_before_the_projects_imports():
    """Run by a Python without the venv (dvc repro with the wrong PATH), a stage says so in one line."""
    for script in sorted((REPO / "stages").glob("[!_]*.py")):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = [n.names[0].name if isinstance(n, ast.Import) else n.module for n in imports]
        assert "_preflight" in names, script.name
        before = names[: names.index("_preflight")]  # what runs first: the standard library only
        assert all(name.split(".")[0] in sys.stdlib_module_names for name in before), (script.name, before)


def test_a_stage_run_without_the_venv_says_how_to_get_it():
    import subprocess

    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    probe = "import importlib.util as u; print(u.find_spec('whisper_int8') is None)"
    bare = base.is_file() and subprocess.run([base, "-c", probe], capture_output=True, text=True).stdout
    if bare != "True\n":
        pytest.skip("no Python without the project's packages here")
    proc = subprocess.run([base, str(REPO / "stages" / "fuse.py")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {base} cannot import whisper_int8")
    assert "PATH=$PWD/.venv/bin:$PATH dvc repro" in proc.stderr


def test_a_stage_runs_the_package_of_its_own_checkout(tmp_path):
    """Regression: `dvc exp run --queue/--temp` runs the stages in a copy under .dvc/tmp/exps/, whose
    src/ DVC hashes into the experiment's lock; the venv's editable install imported the workspace's
    package instead (an edit made after queueing ran under a lock recording the queued code)."""
    import shutil
    import subprocess

    copy = tmp_path / "exp-copy"
    for folder in ("stages", "src/whisper_int8"):
        shutil.copytree(REPO / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    common = copy / "src" / "whisper_int8" / "cli_common.py"
    common.write_text(common.read_text().replace('"debug logging"', '"debug logging, this checkout"'))
    proc = subprocess.run(
        [sys.executable, "stages/fuse.py", "--help"], cwd=copy, env=venv_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "debug logging, this checkout" in " ".join(proc.stdout.split())
