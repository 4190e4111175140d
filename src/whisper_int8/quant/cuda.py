"""CUDA INT8 through torchao: eager fbgemm modules are CPU-only, so on a GPU each int8 Linear (and the
logits GEMM of the tied embedding) becomes an ``nn.Linear`` whose weight is a torchao ``Int8Tensor``.

The ``Int8Tensor`` is built from the saved int8 weights and scales themselves, not re-quantized:
torchao's own quantizer would pick absmax / 127.5 where the saved scale is absmax / 127 (absmax / 64
with ``quant.weight_bits: 7``), changing both ``q`` and ``scale``. Per-channel and per-tensor weight
scales both carry over. What differs from CPU is the activations: ``dynamic`` quantizes them per
token (symmetric, 8 bit) where fbgemm uses an asymmetric 7- or 8-bit range per token or per call;
``weight_only`` multiplies float activations by the int8 weight (the logits too, which CPU runs
dynamic). ``static`` is CPU-only: its calibrated activation scales are fbgemm
quint8 ranges that torchao's kernels do not reproduce.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from whisper.model import Whisper

from ..model_sources import uninitialized
from ..params import ParamError
from .cpu import BackendError, Int8TiedEmbedding, OutlierInt8Linear

log = logging.getLogger(__name__)


# torchao's int8 GEMM (``safe_int_mm``) runs on cuBLAS only when both K and N are multiples of 8; any
# other shape takes its fallback, an int32 matmul on the *CPU* (weights copied off the GPU every call).
CUBLAS_MULTIPLE = 8
# torch's CUDA ``_int_mm`` also refuses 16 rows or fewer ("self.size(0) needs to be greater than 16"):
# safe_int_mm catches that and multiplies in float32, converting the whole int8 weight every call. A
# decoding step has 1 row a beam, so the dynamic scheme's activations are padded up to this many rows.
INT_MM_MIN_ROWS = 24  # > 16, and a multiple of CUBLAS_MULTIPLE


class TorchaoTiedEmbedding(nn.Module):
    """An int8 Linear (torchao weight) for the logits whose int8 rows and scales also serve the lookup.

    As on CPU (``Int8TiedEmbedding``) one int8 copy serves both: the lookup dequantizes the rows it
    selects, the same values a float table would hold (one took 101 MB of GPU memory more in base,
    253 MB in large-v3: base's INT8 tensors were 183 MB, not 81). A multilingual vocabulary (51865
    tokens, 51866 for large-v3) is not a multiple of 8, so the logits Linear holds the int8 rows padded
    with zero rows up to one (:data:`CUBLAS_MULTIPLE`) and its output is cut back to the vocabulary:
    otherwise every decoding step's largest GEMM would run on the CPU.
    """

    def __init__(self, logits: nn.Linear, n_vocab: int) -> None:
        super().__init__()
        self.logits = logits
        self.n_vocab = n_vocab

    def forward(self, tokens: Tensor) -> Tensor:
        weight = self.logits.weight  # per-row scales: the embedding is quantized per row either way
        rows = F.embedding(tokens, weight.qdata).float()
        return rows * weight.scale.reshape(-1)[tokens].unsqueeze(-1)

    def project(self, x: Tensor) -> Tensor:
        y = self.logits(x)
        return y if y.shape[-1] == self.n_vocab else y[..., : self.n_vocab]


def _pad_rows(q: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """``q`` (and a per-row ``scale``) with zero rows appended up to a multiple of :data:`CUBLAS_MULTIPLE`."""
    extra = -q.shape[0] % CUBLAS_MULTIPLE
    if not extra:
        return q, scale
    q = torch.cat([q, q.new_zeros(extra, q.shape[1])])
    if scale.numel() > 1:
        scale = torch.cat([scale, scale.new_ones(extra)])
    return q, scale


class TorchaoOutlierLinear(nn.Module):
    """``OutlierInt8Linear`` on CUDA: the torchao int8 Linear sees the input with the outlier channels
    zeroed (its per-token range set by the others), their float weight columns add the rest."""

    def __init__(self, rest: nn.Linear, index: Tensor, weight: Tensor) -> None:
        super().__init__()
        self.rest = rest
        self.register_buffer("outlier_index", index)
        self.register_buffer("outlier_weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        kept = x.index_select(-1, self.outlier_index)
        return self.rest(x.index_fill(-1, self.outlier_index, 0.0)) + kept @ self.outlier_weight.T


class RowPaddedLinear(nn.Linear):
    """A torchao dynamic int8 ``nn.Linear`` whose input is padded with zero rows up to
    :data:`INT_MM_MIN_ROWS`, the result cut back: so one decoding step's few rows reach cuBLAS's int8
    GEMM instead of torchao's float fallback. Zero rows change no other row (each is quantized alone)."""

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])
        extra = INT_MM_MIN_ROWS - len(rows)
        if extra <= 0:
            return super().forward(x)
        y = super().forward(torch.cat([rows, rows.new_zeros(extra, rows.shape[1])]))
        return y[: len(rows)].reshape(*x.shape[:-1], y.shape[-1])


def _int8_weight(q: Tensor, scale: Tensor, dynamic: bool) -> Tensor:
    """torchao's int8 weight holding exactly ``q`` and ``scale`` (one scale per row, or one in all)."""
    try:
        from torchao.quantization import Int8Tensor, PerRow
        from torchao.quantization.quantize_.workflows import QuantizeTensorToInt8Kwargs
    except ImportError as e:
        raise BackendError(f"INT8 on CUDA needs torchao: pip install -e '.[gpu]' ({e})") from None
    block = [1, q.shape[1]] if scale.numel() == q.shape[0] else list(q.shape)
    act = QuantizeTensorToInt8Kwargs(granularity=PerRow()) if dynamic else None
    return Int8Tensor(q, scale.float().reshape(-1, 1), block, torch.float32, act_quant_kwargs=act)


def _int8_linear(q: Tensor, scale: Tensor, bias: Tensor | None, dynamic: bool, device: str) -> nn.Linear:
    """An ``nn.Linear`` on ``device`` computing with the saved ``q``/``scale`` through torchao."""
    if dynamic and (q.shape[0] % CUBLAS_MULTIPLE or q.shape[1] % CUBLAS_MULTIPLE):  # weight_only: no int GEMM
        log.warning("int8 weight %s: not multiples of %d, torchao multiplies it on the CPU", tuple(q.shape),
                    CUBLAS_MULTIPLE)  # fmt: skip
    with uninitialized():  # no float weight allocated only to be replaced
        lin = (RowPaddedLinear if dynamic else nn.Linear)(q.shape[1], q.shape[0], bias=bias is not None)
    lin.weight = nn.Parameter(_int8_weight(q.to(device), scale.to(device), dynamic), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.to(device), requires_grad=False)
    return lin


def _torchao_module(mod: nn.Module, dynamic: bool, device: str) -> nn.Module:
    """The torchao replacement of one CPU int8 module, from the int8 tensors it was saved with."""
    q, scale, bias = mod.int8_weight()
    if isinstance(mod, Int8TiedEmbedding):
        return TorchaoTiedEmbedding(_int8_linear(*_pad_rows(q, scale), None, dynamic, device), len(q))
    rest = _int8_linear(q, scale, bias, dynamic, device)
    if isinstance(mod, OutlierInt8Linear):
        return TorchaoOutlierLinear(rest, mod.outlier_index.to(device), mod.outlier_weight.to(device))
    return rest


def to_torchao(model: Whisper, scheme: str, device: str) -> Whisper:
    """Move an INT8 model (CPU modules) to ``device`` with torchao int8 Linear layers; returns it."""
    if scheme == "static":
        raise ParamError(
            "quant.scheme=static runs on CPU only (its calibrated activation scales are fbgemm's); "
            "for CUDA convert with quant.scheme: dynamic or weight_only, or load it on CPU "
            "(evaluate.device: cpu)"
        )
    converted = 0
    for name, mod in list(model.named_modules()):
        if getattr(mod, "kind", None) != "int8":
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, _torchao_module(mod, scheme == "dynamic", device))
        converted += 1
    log.info("torchao %s: %d int8 layers on %s", scheme, converted, device)
    return model.to(device)
