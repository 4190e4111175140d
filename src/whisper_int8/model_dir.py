"""Load any model directory of this pipeline (fp32, fused or int8) into a transcribe-ready Whisper."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from whisper.model import ModelDimensions, Whisper

from .fsutil import sha256_file
from .fuse import FUSED_WEIGHTS, fused_skeleton, materialize
from .heap import release_freed
from .languages import model_languages
from .mapped_pages import drop_table_pages_after_lookups, unmap_resident_pages
from .model_sources import ModelSourceError, check_heads
from .params import ParamError
from .quant.config import DEFAULTS, WEIGHT_BITS, parse_quant_config, resolve_backend
from .quant.convert import FORMAT, INT8_WEIGHTS, QUANT_CONFIG, build_int8
from .quant.cpu import set_engine
from .stage_files import CARD, CHECKPOINT, CONVERT_STAGE, FUSE_STAGE, load_fp32, load_tensors, read_json


def check_languages(model: Whisper, languages: set[str], split: Path | str) -> None:
    """Refuse clips in languages ``model`` has no token for, before any audio is read.

    An English-only model (tiny.en, base.en, ...) would decode every clip as English and score it
    against a foreign reference (error rates in the hundreds, INT8-versus-FP32 deltas of pure noise);
    a 99-language model has no yue token, and whisper's tokenizer fails obscurely on it.
    """
    others = sorted(set(languages) - set(model_languages(model)))
    if others and not model.is_multilingual:
        raise ParamError(
            f"{split}: holds {', '.join(others)} clips, but the model is English-only (an .en model "
            "such as tiny.en): set audio.languages: [en] with its audio.sources, or choose a "
            "multilingual model.source"
        )
    if others:
        raise ParamError(
            f"{split}: holds {', '.join(others)} clips, which this model has no language token for "
            f"({model.num_languages} languages; yue needs large-v3 or turbo): drop them from "
            "audio.languages or choose another model.source"
        )


def resolve_device(device: object, name: str) -> str:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` as torch takes it; anything else,
    or a GPU this machine lacks, is an error naming ``name`` (the param or variable that gave it)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    cuda = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    if not cuda:
        raise ParamError(f"{name}={device!r} must be auto, cpu or cuda[:N]")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if int(cuda.group(1) or 0) >= count:
        raise ParamError(
            f"{name}={device!r}: this machine has {count} CUDA device(s) (torch {torch.__version__}); "
            "use auto or cpu"
        )
    return str(device)


def load_model_dir(path: Path | str, device: str = "cpu") -> Whisper:
    """Load a model directory of this pipeline (see :func:`_load`), leaving no load-time garbage resident."""
    model = _load(Path(path), device)
    release_freed()  # the state dict and packing buffers
    return model


def load_fused_dir(path: Path | str) -> Whisper:
    """The fuse stage's output, refusing any other model directory.

    Calibrate hooks and convert replaces the fused ``nn.Linear`` layers: an FP32 or INT8 directory has
    none (or only its float leftovers), which would surface as a bare QuantError or as calibration
    statistics "from another model".
    """
    return load_model_dir(check_fused_dir(path))


def check_fused_dir(path: Path | str) -> Path:
    """``path`` if it holds the fuse stage's output (by its files; nothing is loaded)."""
    root = Path(path)
    if not root.is_dir():
        raise ModelSourceError(
            f"{root}: model directory not found; give the fuse stage's output (models/fused)"
        )
    if not (root / FUSED_WEIGHTS).is_file():
        found = "an INT8 model" if (root / QUANT_CONFIG).is_file() else f"no {FUSED_WEIGHTS}"
        raise ModelSourceError(
            f"{root}: not a fused model directory ({found}); give the fuse stage's output "
            "(models/fused: dvc repro fuse)"
        )
    return root


def model_bytes(path: Path | str) -> int:
    """Total size of the files of a model directory: ``model_size_mb`` and the gate's ``size_ratio``.

    Here, not in the plumbing of ``fsutil``: what it counts is a figure the evaluate stages report, so
    its module must be one of their DVC dependencies (a change to it must rerun them)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def activation_bits_of(path: Path | str) -> int | None:
    """Bits this CPU gives the per-call int8 activations of the model in ``path`` (None: not INT8).

    They follow the weights' bits (``quant.weight_bits``; 8 in a config written before the key):
    :func:`whisper_int8.cpu.activation_bits`.
    """
    from .cpu import activation_bits

    qcfg = Path(path) / QUANT_CONFIG
    if not qcfg.is_file():
        return None
    saved = read_json(qcfg, CONVERT_STAGE)
    config = saved.get("config") if isinstance(saved, dict) else None
    bits = config.get("weight_bits", 8) if isinstance(config, dict) else None
    if isinstance(bits, bool) or bits not in WEIGHT_BITS:
        raise ModelSourceError(
            f"{qcfg}: not a quant_config.json this version reads (config.weight_bits: 7 or 8); "
            f"rerun {CONVERT_STAGE}"
        )
    return activation_bits(bits)


def fused_digest(root: Path | str) -> str:
    """The sha256 of ``root``'s fused.pt: the one its model card records (every load checks the file
    against it: a large-v3 fused.pt is read once, not three times), else computed (an older card)."""
    root = Path(root)
    card = read_json(root / CARD, FUSE_STAGE) if (root / CARD).is_file() else None
    recorded = card.get("weights_sha256") if isinstance(card, dict) else None
    return recorded if isinstance(recorded, str) else sha256_file(root / FUSED_WEIGHTS)


def _not_describing(card: Path, weights: Path, error: Exception, rerun: str) -> ModelSourceError:
    """A description (quant_config.json, the fused model card) and weights that do not fit together.

    The cause is the error's first line, or for load_state_dict's ("Error(s) in loading state_dict
    for Whisper:") the first of its own lines, which say which tensor does not fit and how."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    cause = lines[0][:200]
    return ModelSourceError(f"{card}: does not describe {weights.name} ({cause}); rerun {rerun}")


def _described(card_path: Path, card: dict, weights: Path, rerun: str) -> ModelDimensions:
    """The dimensions ``card`` gives, its alignment heads checked against them, and ``weights``' digest
    when the card records one: a damaged or swapped file stops here, not in load_state_dict or as wrong
    logits."""
    if "weights_sha256" in card and weights.is_file() and sha256_file(weights) != card["weights_sha256"]:
        raise ModelSourceError(
            f"{weights}: not the weights {card_path.name} was written with (sha256 differs: damaged, "
            f"or from another run); rerun {rerun}"
        )
    try:
        dims = ModelDimensions(**card["dims"])
    except (KeyError, TypeError) as e:
        raise _not_describing(card_path, weights, e, rerun) from None
    check_heads(card.get("alignment_heads"), dims, card_path)
    return dims


def _weights_in(root: Path, card_path: Path, name: object) -> Path:
    """The weights file ``card_path`` names, a file of ``root`` itself: a path that leads out of the
    model directory (``../x.pt``, ``/abs/x.pt``) would load weights the directory does not hold, so
    the model would pass promote's load here and be registered without them."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise ModelSourceError(
            f"{card_path}: weights {name!r} is not a file name in {root} (convert writes {INT8_WEIGHTS!r} "
            f"beside the config); rerun {CONVERT_STAGE}"
        )
    return root / name


def _built(card: Path, weights: Path, rerun: str, build: Callable[[], Whisper]) -> Whisper:
    """``build()``, its errors from weights that do not fit ``card`` (names, shapes, layers another
    conversion wrote) turned into one line naming both files."""
    try:
        return build()
    except (KeyError, TypeError, AttributeError) as e:
        raise _not_describing(card, weights, e, rerun) from None
    except RuntimeError as e:
        if type(e) is not RuntimeError:  # out of memory, ModelSourceError, BackendError: their own message
            raise
        raise _not_describing(card, weights, e, rerun) from None  # load_state_dict: names or shapes


def _load(root: Path, device: str) -> Whisper:
    """Load ``models/fp32`` (model.pt), ``models/fused`` (fused.pt) or ``models/int8`` (int8.pt + config).

    The result supports ``whisper.transcribe(model, audio)`` / ``model.transcribe`` (on CUDA with
    ``fp16=False`` unless the weights are half: fused and INT8 layers do not cast FP32 weights to fp16
    input). INT8 on CUDA goes through the torchao backend with the saved int8 weights (eager fbgemm
    kernels are CPU-only); the static scheme is CPU-only.
    """
    if not root.is_dir():
        raise ModelSourceError(f"{root}: model directory not found")
    if (root / QUANT_CONFIG).is_file():
        card_path = root / QUANT_CONFIG
        qcfg = read_json(card_path, CONVERT_STAGE)
        found = qcfg.get("format") if isinstance(qcfg, dict) else f"a JSON {type(qcfg).__name__}"
        if found != FORMAT:
            raise ModelSourceError(f"{card_path}: format {found!r} is not {FORMAT!r}")
        weights = _weights_in(root, card_path, qcfg.get("weights", INT8_WEIGHTS))
        _described(card_path, qcfg, weights, CONVERT_STAGE)
        try:  # the values this load acts on, as convert checked them (keys of other versions: left be)
            settings = qcfg["config"]
            parse_quant_config({k: settings[k] for k in DEFAULTS if k in settings}, str(card_path))
            backend_name = settings["backend"]
        except (KeyError, TypeError) as e:
            raise _not_describing(card_path, weights, e, CONVERT_STAGE) from None
        except ParamError as e:
            raise ModelSourceError(f"{e}; rerun {CONVERT_STAGE}") from None
        try:
            backend = resolve_backend(backend_name, device)
        except ParamError:  # converted for the other kind of device
            kind = "a CUDA GPU" if backend_name == "torchao" else "the CPU"
            raise ModelSourceError(
                f"{card_path}: converted for {kind} (quant.backend: {backend_name}), loaded on {device}: "
                f"load it on {kind} (evaluate.device, or WHISPER_INT8_DEVICE where it is served), or convert "
                "it again with quant.backend: auto (dvc repro convert), which runs on either"
            ) from None
        state = load_tensors(weights, CONVERT_STAGE, mapped=backend != "torchao")
        model = _built(
            card_path,
            weights,
            CONVERT_STAGE,
            lambda: build_int8(qcfg, state, pack=backend != "torchao", origin=str(card_path)),
        )
        if backend == "torchao":
            from .quant.cuda import to_torchao

            return to_torchao(model, qcfg["config"]["scheme"], device)
        set_engine(backend)
        mapped = unmap_resident_pages(weights, state)
        emb = model.decoder.token_embedding
        if isinstance(getattr(emb, "weight_int8", None), torch.Tensor):  # INT8 embedding, not float
            drop_table_pages_after_lookups(emb, mapped)
        return model
    if (root / FUSED_WEIGHTS).is_file():
        card_path, weights = root / CARD, root / FUSED_WEIGHTS
        card = read_json(card_path, FUSE_STAGE)
        if not isinstance(card, dict):
            raise ModelSourceError(
                f"{card_path}: a JSON {type(card).__name__}, not a model card; rerun {FUSE_STAGE}"
            )
        dims = _described(card_path, card, weights, FUSE_STAGE)
        state = load_tensors(weights, FUSE_STAGE)
        model = _built(
            card_path,
            weights,
            FUSE_STAGE,
            lambda: materialize(fused_skeleton(dims), state, card.get("alignment_heads")),
        )
        return model.to(device)
    if (root / CHECKPOINT).is_file():
        return load_fp32(root).model.to(device)
    raise ModelSourceError(f"{root}: no model.pt, {FUSED_WEIGHTS} or {QUANT_CONFIG}; not a model directory")
