"""CPU INT8 modules on PyTorch's x86/fbgemm quantized kernels (eager mode, no torch.compile).

Each module keeps only what the kernel needs at run time (fbgemm's packed weights) and exposes the
backend-neutral tensors through its state dict: ``weight_int8`` (int8, symmetric), ``weight_scale``
(float32, one per output channel or one in all) and ``bias``. Loading a state dict re-packs them, so
a save/load round trip gives bit-identical outputs and ``torch.load(weights_only=True)`` suffices.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cpu import activation_bits

# Quantized-tensor constructors warn that they are deprecated (torch 2.13); the eager kernels still
# work, and the backend sits behind quant.backend so it can move to torchao wholesale.
warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated")
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor.*deprecated")

# quant.weight_bits -> the largest |int8 code| of a weight: 7-bit weights keep fbgemm's AVX2 int16 sums
# of two u8 x s8 products in range (255 x 64 x 2 = 32640 <= 32767) beside 8-bit activations
WEIGHT_LEVELS = {8: 127, 7: 64}

# weight bits -> whether dynamic activations keep to 7 bits (whisper_int8.cpu.activation_bits), read on
# the first INT8 call (a bad WHISPER_INT8_ACTIVATION_BITS is then a user error, not an import traceback
# even for FP32 work)
_REDUCE_RANGE: dict[int, bool] = {}


def _reduce_range(weight_bits: int) -> bool:
    if weight_bits not in _REDUCE_RANGE:
        _REDUCE_RANGE[weight_bits] = activation_bits(weight_bits) == 7
    return _REDUCE_RANGE[weight_bits]


@contextmanager
def activations_pinned(weight_bits: int, bits: int) -> Iterator[None]:
    """Layers with ``weight_bits`` weights take ``bits``-bit activations inside, whatever the CPU and
    WHISPER_INT8_ACTIVATION_BITS say: for results that must not depend on them (the sensitivity
    ranking). Only combinations that cannot saturate: 8-bit activations need 7-bit weights."""
    if bits == 8 and weight_bits != 7:
        raise ValueError("8-bit activations are safe on every CPU beside 7-bit weights only")
    saved = _REDUCE_RANGE.get(weight_bits)
    _REDUCE_RANGE[weight_bits] = bits == 7
    try:
        yield
    finally:
        if saved is None:
            del _REDUCE_RANGE[weight_bits]
        else:
            _REDUCE_RANGE[weight_bits] = saved


def code_bits(q: Tensor) -> int:
    """7 when int8 weight codes keep within +-64 (:data:`WEIGHT_LEVELS`), else 8: read from the codes
    themselves, so a model converted with either ``quant.weight_bits`` runs right on every CPU."""
    if q.numel() == 0:
        return 7
    low, high = torch.aminmax(q)
    return 7 if -WEIGHT_LEVELS[7] <= int(low) and int(high) <= WEIGHT_LEVELS[7] else 8


_PACK = True  # False inside unpacked()


@contextmanager
def unpacked() -> Iterator[None]:
    """Int8 modules given their weights inside keep the plain tensors instead of packing them for fbgemm.

    For a backend that rebuilds every module from ``int8_weight()`` (torchao on CUDA): no CPU quantized
    engine is then needed (an aarch64 GPU host's torch has no x86/fbgemm), and nothing is packed only
    to be unpacked again. Such modules cannot run on the CPU kernels.
    """
    global _PACK
    saved, _PACK = _PACK, False
    try:
        yield
    finally:
        _PACK = saved


class BackendError(RuntimeError):
    """This torch lacks what an INT8 backend runs on (CPU kernels of another architecture, no torchao):
    a matter of the machine or its install, not of a file; the message says what to do."""


def set_engine(name: str) -> None:
    """Select the quantized engine (``x86`` picks fbgemm/oneDNN per op; ``fbgemm`` forces fbgemm)."""
    have = torch.backends.quantized.supported_engines
    if name not in have:
        raise BackendError(
            f"this torch has no {name!r} quantized engine (it has {', '.join(have)}): INT8 on the CPU "
            "needs an x86-64 machine and torch build; elsewhere run on a CUDA GPU (evaluate.device: "
            "cuda, quant.backend: auto)"
        )
    torch.backends.quantized.engine = name


def weight_scale(weight: Tensor, per_channel: bool, bits: int = 8) -> Tensor:
    """The int8 step of ``weight``: its absmax / 127 (64 for 7 ``bits``) per output row, or one in all."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=1) if per_channel else w.abs().amax().reshape(1)
    return (amax / WEIGHT_LEVELS[bits]).clamp_min(1e-12)


def quantize_weight(weight: Tensor, per_channel: bool, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Symmetric int8 (-127..127, or -64..64 for 7 ``bits``) with one scale per output row, or one in all."""
    w = weight.detach().float()
    scale = weight_scale(w, per_channel, bits)
    levels = WEIGHT_LEVELS[bits]
    q = torch.round(w / scale[:, None]).clamp_(-levels, levels).to(torch.int8)
    return q, scale


def dequantize_weight(q: Tensor, scale: Tensor) -> Tensor:
    return q.float() * scale[:, None]


def _pack(q: Tensor, scale: Tensor, bias: Tensor | None):
    if scale.numel() == 1:
        qw = torch._make_per_tensor_quantized_tensor(q, float(scale), 0)
    else:
        zeros = torch.zeros(scale.numel(), dtype=torch.long)
        qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)
    return torch.ops.quantized.linear_prepack(qw, bias)


def linear_dynamic(
    x: Tensor, packed, bias: Tensor | None = None, per_token: bool = False, weight_bits: int = 8
) -> Tensor:
    """fbgemm's dynamic int8 GEMM: ``x`` quantized with one range per call, or per row (``per_token``),
    in the bits :func:`whisper_int8.cpu.activation_bits` gives for ``weight_bits`` on this CPU.

    fbgemm quantizes its whole input with one range, so in a 500-frame encoder part every frame gets
    the levels left over by the loudest one. ``per_token`` divides each row by its absmax first: every
    row then spans the same range and gets all the levels; as W·(x/s) = (W·x)/s, multiplying the output
    rows by s gives the per-token result from the same kernel. ``packed`` then holds no bias: ``bias`` is
    added after that scaling. A single row (a decoding step) is per-token either way and skips it.
    """
    x = x.contiguous()
    reduce_range = _reduce_range(weight_bits)
    if not per_token or x.numel() == x.shape[-1]:
        y = torch.ops.quantized.linear_dynamic(x, packed, reduce_range)
        return y if bias is None else y.add_(bias)
    # amax and amin over the last dim: 17x faster here than torch.aminmax's one pass (0.05 vs 0.8 ms for
    # 1500 x 512), which made per-token 15 % slower end to end
    s = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg_()).clamp_min_(1e-12)
    y = torch.ops.quantized.linear_dynamic(x / s, packed, reduce_range)
    return y.mul_(s) if bias is None else torch.addcmul(bias, y, s, out=y)


def _unpack(packed) -> tuple[Tensor, Tensor, Tensor | None]:
    qw, bias = torch.ops.quantized.linear_unpack(packed)
    if qw.qscheme() == torch.per_tensor_affine:
        scale = torch.tensor([qw.q_scale()], dtype=torch.float32)
    else:
        scale = qw.q_per_channel_scales().float()
    return qw.int_repr(), scale, bias


class PackedInt8Linear(nn.Module):
    """Base: an int8 Linear held as fbgemm packed weights, (de)serialised as plain tensors.

    ``per_token`` (dynamic kinds): activations quantized per row (:func:`linear_dynamic`); the bias
    is then kept beside the packed weights, not in them. ``weight_bits``: 7 when the codes keep within
    +-64 (:func:`code_bits`), which lets the dynamic kinds take 8-bit activations on every CPU.
    """

    kind = "int8"

    def __init__(
        self, in_features: int, out_features: int, bias: bool, per_channel: bool, per_token: bool = False
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.has_bias, self.per_channel, self.per_token = bias, per_channel, per_token
        self._packed = None
        self.weight_bits = 8
        self._bias: Tensor | None = None
        self._plain: tuple[Tensor, Tensor, Tensor | None] | None = None  # set instead of _packed, unpacked()

    @classmethod
    def from_float(
        cls, linear: nn.Linear, per_channel: bool, per_token: bool = False, bits: int = 8, **extra: Tensor
    ) -> PackedInt8Linear:
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, per_channel, per_token)
        q, scale = quantize_weight(linear.weight, per_channel, bits)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        mod.set_weight(q, scale, bias)
        for name, value in extra.items():
            setattr(mod, name, value)
        return mod

    def set_weight(self, q: Tensor, scale: Tensor, bias: Tensor | None) -> None:
        self._bias = bias if self.per_token else None
        self.weight_bits = code_bits(q)
        if not _PACK:
            self._plain = (q, scale, bias)
            return
        self._packed = _pack(q, scale, None if self.per_token else bias)

    def int8_weight(self) -> tuple[Tensor, Tensor, Tensor | None]:
        if self._packed is None and self._plain is not None:
            return self._plain
        q, scale, bias = _unpack(self._packed)
        return q, scale, self._bias if self.per_token else bias

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        q, scale, bias = self.int8_weight()
        destination[prefix + "weight_int8"] = q
        destination[prefix + "weight_scale"] = scale
        if bias is not None:
            destination[prefix + "bias"] = bias

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        names = ["weight_int8", "weight_scale"] + (["bias"] if self.has_bias else [])
        found = [prefix + n in state_dict for n in names]
        if all(found):
            q, scale = state_dict[prefix + "weight_int8"], state_dict[prefix + "weight_scale"]
            bias = state_dict[prefix + "bias"].float() if self.has_bias else None
            expect = self.out_features if self.per_channel else 1
            if (
                q.shape != (self.out_features, self.in_features)
                or q.dtype != torch.int8
                or scale.numel() != expect
            ):
                errors.append(
                    f"{prefix}: int8 weight {tuple(q.shape)}/{q.dtype}, {scale.numel()} scales do not fit"
                )
            else:
                self.set_weight(q, scale.float(), bias)
        else:
            missing.extend(prefix + n for n, ok in zip(names, found, strict=True) if not ok)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        for n in names:  # consumed above; keep the base class from calling them unexpected
            if prefix + n in unexpected:
                unexpected.remove(prefix + n)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, per_channel={self.per_channel}, "
            f"per_token={self.per_token}"
        )


class DynamicInt8Linear(PackedInt8Linear):
    """INT8 weights, activations quantized per call or per token from their own range (no calibration)."""

    def forward(self, x: Tensor) -> Tensor:
        return linear_dynamic(x, self._packed, self._bias, self.per_token, self.weight_bits)


class OutlierInt8Linear(DynamicInt8Linear):
    """``DynamicInt8Linear`` with the input channels that carry outliers computed in float (LLM.int8()).

    The input of an MLP's output projection (after GELU) holds a few channels tens of times larger
    than the rest; one per-call activation range stretched over them leaves the other channels a few
    levels. Here the ``outliers`` channels where calibration saw the largest |x| multiply a float
    copy of their weight columns, and the int8 GEMM sees the input with those channels zeroed (its
    range set by the others) against weights whose columns there are zero. Measured on Whisper base
    on 2026-11-24 (relative logit error, that layer alone INT8, 9 calibration clips, one activation
    range over each teacher-forced sequence as the sensitivity was then measured, which overstates
    the decoder layers): decoder.blocks.2.mlp.2 0.276 -> 0.013 with 16 channels,
    encoder.blocks.3.mlp.2 0.118 -> 0.011.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        per_channel: bool,
        per_token: bool = False,
        outliers: int = 0,
    ) -> None:
        super().__init__(in_features, out_features, bias, per_channel, per_token)
        self.register_buffer("outlier_index", torch.zeros(outliers, dtype=torch.long))
        self.register_buffer("outlier_weight", torch.zeros(out_features, outliers))

    @classmethod
    def from_float(  # type: ignore[override]
        cls, linear: nn.Linear, per_channel: bool, index: Tensor, per_token: bool = False, bits: int = 8
    ) -> OutlierInt8Linear:
        shape = (linear.in_features, linear.out_features, linear.bias is not None)
        mod = cls(*shape, per_channel, per_token, len(index))
        weight = linear.weight.detach().float().clone()
        mod.outlier_index = index.to(torch.long).clone()
        mod.outlier_weight = weight[:, mod.outlier_index].clone()
        weight[:, mod.outlier_index] = 0
        q, scale = quantize_weight(weight, per_channel, bits)
        mod.set_weight(q, scale, None if linear.bias is None else linear.bias.detach().float().clone())
        return mod

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous()
        kept = x.index_select(-1, self.outlier_index)
        if x.requires_grad or (x.is_inference() and not torch.is_inference_mode_enabled()):
            masked = x.index_fill(-1, self.outlier_index, 0.0)
            y = linear_dynamic(masked, self._packed, self._bias, self.per_token, self.weight_bits)
        else:  # zeroed in place, then restored: an encoder MLP's input is 12 MB, a copy would add to the peak
            x.index_fill_(-1, self.outlier_index, 0.0)
            try:
                y = linear_dynamic(x, self._packed, self._bias, self.per_token, self.weight_bits)
            finally:
                x.index_copy_(-1, self.outlier_index, kept)
        return y.add_(kept @ self.outlier_weight.T)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, float_channels={self.outlier_index.numel()}"


class StaticInt8Linear(PackedInt8Linear):
    """INT8 weights and activations with scales fixed by calibration (input and output absmax)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, per_channel: bool, per_token: bool = False
    ) -> None:
        if per_token:
            raise ValueError("StaticInt8Linear: calibrated activation scales are per tensor, not per token")
        super().__init__(in_features, out_features, bias, per_channel)
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("output_scale", torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        # quint8 zero points: input 64 (7-bit range on every CPU: the saved scales fix it), output 128.
        # Clamped to those 7 bits: an input over the calibrated maximum would otherwise take codes
        # 128-255, which fbgemm's AVX2 kernel saturates and its VNNI kernel does not.
        s = float(self.input_scale)
        xq = torch.quantize_per_tensor(x.clamp(-64 * s, 63 * s).contiguous(), s, 64, torch.quint8)
        return torch.ops.quantized.linear(xq, self._packed, float(self.output_scale), 128).dequantize()


class WeightOnlyInt8Linear(nn.Module):
    """INT8 storage, float compute: the weight is dequantized per call (smaller file and RSS, FP32 speed)."""

    kind = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool, per_channel: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.per_channel = in_features, out_features, per_channel
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features if per_channel else 1))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel: bool) -> WeightOnlyInt8Linear:
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, per_channel)
        mod.weight_int8, mod.weight_scale = quantize_weight(linear.weight, per_channel)
        if linear.bias is not None:
            mod.bias = linear.bias.detach().float().clone()
        return mod

    def int8_weight(self) -> tuple[Tensor, Tensor, Tensor | None]:
        return self.weight_int8, self.weight_scale, self.bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, dequantize_weight(self.weight_int8, self.weight_scale), self.bias)


class Int8TiedEmbedding(nn.Module):
    """One int8 copy of the token embedding serving both the lookup and the logits GEMM.

    The lookup dequantizes the selected rows; the projection (x · Eᵀ, most of a decoding step's
    multiply-adds) runs fbgemm's dynamic int8 GEMM on weights packed from the same int8 matrix.
    Per-row scales are per output channel of the projection.
    """

    kind = "int8"

    def __init__(self, num_embeddings: int, embedding_dim: int, per_token: bool = False) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.per_token = num_embeddings, embedding_dim, per_token
        self.register_buffer("weight_int8", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))
        self._packed = None
        self.weight_bits = 8

    @classmethod
    def from_float(cls, emb: nn.Embedding, per_token: bool = False, bits: int = 8) -> Int8TiedEmbedding:
        mod = cls(emb.num_embeddings, emb.embedding_dim, per_token)
        mod.weight_int8, mod.weight_scale = quantize_weight(emb.weight, per_channel=True, bits=bits)
        mod._repack()
        return mod

    def _repack(self) -> None:
        self.weight_bits = code_bits(self.weight_int8)
        self._packed = _pack(self.weight_int8, self.weight_scale, None) if _PACK else None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._repack()

    def int8_weight(self) -> tuple[Tensor, Tensor, Tensor | None]:
        return self.weight_int8, self.weight_scale, None

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.weight_int8).float() * self.weight_scale[tokens].unsqueeze(-1)

    def project(self, x: Tensor) -> Tensor:
        return linear_dynamic(x, self._packed, per_token=self.per_token, weight_bits=self.weight_bits)


LINEAR_CLASSES: dict[str, type[nn.Module]] = {
    "dynamic": DynamicInt8Linear,
    "static": StaticInt8Linear,
    "weight_only": WeightOnlyInt8Linear,
}
