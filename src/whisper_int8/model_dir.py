"""Load any model directory of this pipeline (fp32, fused or int8) into a transcribe-ready Whisper."""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
from pathlib import Path
from typing import Any

import torch
from whisper.model import ModelDimensions, Whisper

from .fuse import FUSED_WEIGHTS, fused_skeleton, materialize
from .heap import release_freed
from .model_sources import ModelSourceError, load_checkpoint, torch_load_checked
from .params import ParamError
from .quant.config import resolve_backend
from .quant.convert import FORMAT, QUANT_CONFIG, build_int8
from .quant.cpu import set_engine

log = logging.getLogger(__name__)


# What to rerun when a file of this pipeline is unreadable (``rerun`` of the readers below).
ANY_STAGE = "the stage that writes it"
FUSE_STAGE = "the fuse stage (dvc repro fuse)"
CONVERT_STAGE = "the convert stage (dvc repro convert), or pull the model again"


def read_json(path: Path, rerun: str = ANY_STAGE) -> Any:
    """The JSON in ``path``, written by a stage; unreadable or invalid: a one-line error naming ``rerun``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError (binary garbage)
        raise ModelSourceError(f"{path}: unreadable ({e}); rerun {rerun}") from None


def load_tensors(path: Path, rerun: str = ANY_STAGE, mapped: bool = False) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` file written by a stage with ``torch.save`` (``weights_only=True``).

    A missing, truncated or foreign file is a one-line error naming it and ``rerun``, not torch's
    traceback. ``mapped``: ``torch.load(mmap=True)``, the tensors read from the file on access.
    """
    if not path.is_file():
        raise ModelSourceError(f"{path}: weights file missing; rerun {rerun}")
    state = torch_load_checked(path, f"rerun {rerun}", mapped)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelSourceError(f"{path}: not a mapping of names to tensors; rerun {rerun}")
    return state


def check_languages(model: Whisper, languages: set[str], split: Path | str) -> None:
    """Refuse an English-only model (tiny.en, base.en, ...) for clips in other languages.

    Its tokenizer has no language tokens: every clip would be decoded as English and scored against a
    foreign reference, giving error rates in the hundreds and INT8-versus-FP32 deltas of pure noise.
    """
    others = sorted(set(languages) - {"en"})
    if others and not model.is_multilingual:
        raise ParamError(
            f"{split}: holds {', '.join(others)} clips, but the model is English-only (an .en model "
            "such as tiny.en): set audio.languages: [en] with its audio.sources, or choose a "
            "multilingual model.source"
        )


def _madvise():
    """libc's madvise, or None where there is none (not Linux): pages then simply stay resident."""
    if getattr(mmap, "MADV_DONTNEED", None) is None:
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


def _unmap_resident_pages(path: Path, state: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """Drop the resident pages of the mapping ``state`` was loaded from; they are re-read on access.

    An INT8 model is loaded with ``torch.load(mmap=True)``: fbgemm packs every int8 matrix into
    its own buffer, reading the whole file once, but afterwards the file is read only where the
    token embedding is looked up and for the small float tensors. Without this the pages read while
    packing stay counted in RSS (26 MB of embedding alone for Whisper base). Only the mapping holding
    ``state`` is advised, right after loading: a private page once written is anonymous and this
    would revert it, so another model mapped from the same file is left alone. The pages stay in the
    page cache (on tmpfs nothing is freed), and the model reads the file for its whole life: replace
    it atomically (as the stages and ``pull`` do), never in place. Returns the advised address ranges.
    """
    madvise = _madvise()
    if madvise is None:
        return []
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    target = str(path.resolve())
    pointers = [t.untyped_storage().data_ptr() for t in state.values()]
    advised = []
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if any(start <= p < end for p in pointers):
                if madvise(start, end - start, mmap.MADV_DONTNEED):
                    log.debug("madvise(%s): errno %d; its pages stay resident", target, ctypes.get_errno())
                else:
                    advised.append((start, end))
    return advised


def _drop_table_pages_after_lookups(embedding: torch.nn.Module, mapped: list[tuple[int, int]]) -> None:
    """After every lookup, drop the pages of the file-mapped int8 table the lookup made resident.

    A lookup reads one 512-byte row per token, but the kernel maps every page around the fault
    that is in the page cache (fault-around, whole large folios): after a few clips 15 MB of the
    26 MB int8 embedding of Whisper base were counted in RSS, and a server's would creep to all of
    it. One ``madvise`` over the table after each lookup (tens of microseconds, next to milliseconds
    per decoding step) keeps it at zero. Only whole pages inside the table are advised, never a
    page it shares with a neighbouring tensor that someone may have written. The table must stay
    read-only: a written private page is anonymous and this would revert it, so the hook stops
    for good once the table is written in place (its version counter moves) or the module holds
    another tensor. Nothing is done unless the table lies inside one of the ``mapped`` file
    ranges: on anonymous memory ``MADV_DONTNEED`` would zero it.
    """
    madvise, page, table = _madvise(), mmap.PAGESIZE, embedding.weight_int8
    first, last = table.data_ptr(), table.data_ptr() + table.numel() * table.element_size()
    if madvise is None or not any(a <= first and last <= b for a, b in mapped):
        return
    begin, end = -(-first // page) * page, last // page * page  # whole pages inside the table
    if end <= begin:
        return

    version = table._version

    def drop(module, args, output) -> None:
        if module.weight_int8 is table and table._version == version:
            madvise(begin, end - begin, mmap.MADV_DONTNEED)
        else:
            handle.remove()

    handle = embedding.register_forward_hook(drop)


def load_model_dir(path: Path | str, device: str = "cpu") -> Whisper:
    """Load a model directory of this pipeline (see :func:`_load`), leaving no load-time garbage resident."""
    model = _load(Path(path), device)
    release_freed()  # the state dict and packing buffers
    return model


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
        qcfg = read_json(root / QUANT_CONFIG, CONVERT_STAGE)
        found = qcfg.get("format") if isinstance(qcfg, dict) else f"a JSON {type(qcfg).__name__}"
        if found != FORMAT:
            raise ModelSourceError(f"{root / QUANT_CONFIG}: format {found!r} is not {FORMAT!r}")
        backend = resolve_backend(qcfg["config"]["backend"], device)
        weights = root / qcfg.get("weights", "int8.pt")
        state = load_tensors(weights, CONVERT_STAGE, mapped=backend != "torchao")
        model = build_int8(qcfg, state)
        if backend == "torchao":
            from .quant.cuda import to_torchao

            return to_torchao(model, qcfg["config"]["scheme"], device)
        set_engine(backend)
        mapped = _unmap_resident_pages(weights, state)
        emb = model.decoder.token_embedding
        if isinstance(getattr(emb, "weight_int8", None), torch.Tensor):  # INT8 embedding, not float
            _drop_table_pages_after_lookups(emb, mapped)
        return model
    if (root / FUSED_WEIGHTS).is_file():
        card = read_json(root / "model_card.json", FUSE_STAGE)
        model = materialize(
            fused_skeleton(ModelDimensions(**card["dims"])),
            load_tensors(root / FUSED_WEIGHTS, FUSE_STAGE),
            card["alignment_heads"],
        )
        return model.to(device)
    if (root / "model.pt").is_file():
        return load_checkpoint(root / "model.pt").model.to(device)
    raise ModelSourceError(f"{root}: no model.pt, {FUSED_WEIGHTS} or {QUANT_CONFIG}; not a model directory")
