"""Fuse Whisper's attention projections so each attention does fewer, larger GEMMs.

Self-attention Q/K/V become one ``qkv`` Linear (one GEMM instead of three); cross-attention K/V
become one ``kv`` Linear. ``key``/``value`` stay as pass-through :class:`CacheSlot` modules because
openai-whisper's decoding installs its kv-cache forward hooks on exactly those attributes, so
``whisper.transcribe`` keeps working on the fused model. The output projection reads the token
embedding through :class:`TiedEmbedding.project`, the seam where quantization swaps in INT8 logits.
Unlike openai-whisper's ``Linear``, these layers do not cast their weights to the input's dtype: feed
them activations in the weights' dtype (``transcribe`` does: FP32 unless the model is half).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from whisper.model import AudioEncoder, ModelDimensions, MultiHeadAttention, TextDecoder, Whisper

from .model_sources import uninitialized
from .stage_files import CARD

log = logging.getLogger(__name__)

# Frames of encoder output per part where frames are independent (encoder MLPs, cross-attention K/V
# projections): a third of the 30 s window, so transient buffers are a third as large. INT8 layers
# quantize each part's activations with that part's own scale.
PART_FRAMES = 500


class CacheSlot(nn.Module):
    """Identity standing where openai-whisper's key/value Linear was; decoding hooks its output."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def head_major(x: Tensor, n_head: int) -> Tensor:
    """Keys or values (batch, ctx, n_state) stored head by head, viewed as (batch, ctx, n_head, head_dim).

    openai-whisper's attention splits the heads with a view and a permute, so a key projected as one
    (ctx, n_state) matrix reaches the attention kernel as n_head strided slices of 64 floats per row.
    A decoding step reads every block's 1500-frame cross-attention keys and values (36 MB in base, more
    than the last-level cache), and reads them about twice as fast when each head's rows are contiguous
    (measured on the 2-core target: 6.8 -> 3.4 ms per step for base's six blocks). The values are the
    same; only their order in memory changes, and ``qkv_attention``'s view accepts the 4-d shape as is.
    """
    batch, ctx, n_state = x.shape
    return x.view(batch, ctx, n_head, n_state // n_head).transpose(1, 2).contiguous().transpose(1, 2)


class FusedAttention(MultiHeadAttention):
    """Multi-head attention with fused projections; same call signature and outputs as the original.

    ``cache_dtype``: the dtype cross-attention keys and values are kept in while decoding (None: the
    activations'). An INT8 model stores them as float16 (``quant.cross_kv_dtype``): they are the largest
    buffer of a decoding (37 MB in FP32 for base's six blocks, read at every step).
    """

    cache_dtype: torch.dtype | None = None

    def __init__(self, n_state: int, n_head: int, cross: bool) -> None:
        nn.Module.__init__(self)
        self.n_head = n_head
        self.n_state = n_state
        self.cross = cross
        if cross:
            self.query = nn.Linear(n_state, n_state)
            self.kv = nn.Linear(n_state, 2 * n_state)
        else:
            self.qkv = nn.Linear(n_state, 3 * n_state)
        self.key = CacheSlot()
        self.value = CacheSlot()
        self.out = nn.Linear(n_state, n_state)

    def forward(
        self, x: Tensor, xa: Tensor | None = None, mask: Tensor | None = None, kv_cache: dict | None = None
    ) -> tuple[Tensor, Tensor | None]:
        if not self.cross:
            q, k, v = self.qkv(x).split(self.n_state, dim=-1)
            k, v = self.key(k), self.value(v)
        else:
            q = self.query(x)
            if kv_cache is not None and self.key in kv_cache:
                k, v = kv_cache[self.key], kv_cache[self.value]
            else:
                k, v = self.cross_kv(xa)
                k, v = self.key(k), self.value(v)  # kv-cache hooks keep them in cache_dtype
            k, v = k.to(q.dtype), v.to(q.dtype)  # widened per step when stored narrower
        wv, qk = self.qkv_attention(q, k, v, mask)
        return self.out(wv), qk

    def new_cross_kv(self, xa: Tensor, *lead: int) -> Tensor:
        """An empty ``(*lead, 2, batch, n_head, ctx, head_dim)`` buffer for :meth:`cross_kv` (cache dtype)."""
        batch, ctx, _ = xa.shape
        shape = (*lead, 2, batch, self.n_head, ctx, self.n_state // self.n_head)
        return xa.new_empty(shape, dtype=self.cache_dtype or xa.dtype)

    def cross_kv(self, xa: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of encoder output ``xa``, head-major (:func:`head_major`).

        Projected :data:`PART_FRAMES` frames at a time straight into ``out`` (from :meth:`new_cross_kv`,
        a new one when None), so the only transient is one part's projection, not a full-length output,
        its int32 accumulator (fbgemm) and a head-major copy: 12 MB less per block in base. Stored in
        :attr:`cache_dtype`; :meth:`forward` widens them to the activations' dtype per step.
        """
        batch, ctx, _ = xa.shape
        out = self.new_cross_kv(xa) if out is None else out
        for start in range(0, ctx, PART_FRAMES):
            kv = self.kv(xa[:, start : start + PART_FRAMES])
            part = kv.view(batch, kv.shape[1], 2, self.n_head, -1)  # (batch, part, [k|v], head, head_dim)
            out[..., start : start + kv.shape[1], :] = part.permute(2, 0, 3, 1, 4)
        return out[0].transpose(1, 2), out[1].transpose(1, 2)


class TiedEmbedding(nn.Embedding):
    """Token embedding that is also the output projection (logits = x · Eᵀ), as in Whisper."""

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class FusedTextDecoder(TextDecoder):
    """openai-whisper's decoder with the logits computed by ``token_embedding.project``."""

    def forward(self, x: Tensor, xa: Tensor, kv_cache: dict | None = None) -> Tensor:
        offset = next(iter(kv_cache.values())).shape[1] if kv_cache else 0
        x = self.token_embedding(x) + self.positional_embedding[offset : offset + x.shape[-1]]
        x = x.to(xa.dtype)
        for block in self.blocks:
            x = block(x, xa, mask=self.mask, kv_cache=kv_cache)
        x = self.ln(x)
        return self.token_embedding.project(x).float()


class FusedAudioEncoder(AudioEncoder):
    """openai-whisper's encoder computing GELUs and residual sums in place: the same values.

    Each of those would otherwise take a fresh 3-12 MB buffer per block (every ``mlp`` is openai-whisper's
    Linear, GELU, Linear). Measured over 30 int8 transcriptions: peak RSS about 20 MB lower and fewer
    page faults; time within the run-to-run noise. Inference only (autograd needs the GELU inputs).
    The MLPs run :data:`PART_FRAMES` frames at a time (each frame's MLP is its own): the hidden layer
    and fbgemm's int32 accumulator of the same size are a third as large (12 -> 4 MB each in base).
    """

    def forward(self, x: Tensor) -> Tensor:
        x = encoder_frames(self, x)
        for block in self.blocks:
            encoder_block_(block, x)
        return self.ln_post(x)


def encoder_frames(encoder: AudioEncoder, mel: Tensor) -> Tensor:
    """The first block's input: convolutions, GELUs and positions, frames x channels in memory."""
    x = gelu_(encoder.conv1(mel))
    # frames x channels in memory too: openai-whisper's `x + positional_embedding` keeps the conv's
    # channels-first strides, so every layer norm copied its input and every residual add was strided
    x = gelu_(encoder.conv2(x)).permute(0, 2, 1).contiguous()
    if x.shape[1:] != encoder.positional_embedding.shape:
        raise ValueError(
            f"encoder input gives {tuple(x.shape[1:])} frames x channels, the model "
            f"takes {tuple(encoder.positional_embedding.shape)} (pad or trim to 30 s)"
        )
    x += encoder.positional_embedding
    return x


def encoder_block_(block: nn.Module, x: Tensor) -> Tensor:
    """One encoder block written over ``x``, its MLP :data:`PART_FRAMES` frames at a time.

    The one place that says how an encoder block runs: calibrate's sensitivity re-runs blocks with it,
    so an INT8 MLP layer is measured with the per-part activation ranges the model uses.
    """
    x += block.attn(block.attn_ln(x))[0]
    fc1, _, fc2 = block.mlp
    for start in range(0, x.shape[1], PART_FRAMES):
        part = x[:, start : start + PART_FRAMES]  # a slice: split()'s views refuse in-place adds
        part += fc2(gelu_(fc1(block.mlp_ln(part))))
    return x


def set_cross_kv_dtype(model: Whisper, dtype: str) -> None:
    """Keep every fused cross-attention's decoding keys/values in ``dtype`` (``float16``, ``float32``)."""
    for block in model.decoder.blocks:
        if isinstance(block.cross_attn, FusedAttention):
            block.cross_attn.cache_dtype = getattr(torch, dtype)


def gelu_(x: Tensor) -> Tensor:
    """Exact (erf) GELU written over ``x``, as ``nn.GELU()`` computes it."""
    return torch.ops.aten.gelu_(x)


def _plain_linear(src: nn.Linear) -> nn.Linear:
    """A plain ``nn.Linear`` copy (whisper.model.Linear is a subclass that exact-type quantizers skip)."""
    dst = nn.Linear(src.in_features, src.out_features, bias=src.bias is not None, device=src.weight.device)
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            dst.bias.copy_(src.bias)
    return dst


def _fuse_attention(attn: MultiHeadAttention, cross: bool) -> FusedAttention:
    n_state = attn.query.in_features
    fused = FusedAttention(n_state, attn.n_head, cross).to(attn.query.weight.device)
    zeros = torch.zeros(n_state, device=attn.query.weight.device)  # Whisper's key has no bias
    with torch.no_grad():
        if cross:
            fused.query.load_state_dict(attn.query.state_dict())
            fused.kv.weight.copy_(torch.cat([attn.key.weight, attn.value.weight]))
            fused.kv.bias.copy_(torch.cat([zeros, attn.value.bias]))
        else:
            fused.qkv.weight.copy_(torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]))
            fused.qkv.bias.copy_(torch.cat([attn.query.bias, zeros, attn.value.bias]))
        fused.out.load_state_dict(attn.out.state_dict())
    return fused


def fuse_model(model: Whisper) -> dict[str, int]:
    """Fuse ``model`` in place; return how many of each fusion were made (checked by the caller/tests)."""
    counts = {"self_attention_qkv": 0, "cross_attention_kv": 0}
    for block in [*model.encoder.blocks, *model.decoder.blocks]:
        if isinstance(block.attn, FusedAttention):
            raise ValueError("model is already fused")
        block.attn = _fuse_attention(block.attn, cross=False)
        counts["self_attention_qkv"] += 1
        if block.cross_attn is not None:
            block.cross_attn = _fuse_attention(block.cross_attn, cross=True)
            counts["cross_attention_kv"] += 1
        block.mlp[0] = _plain_linear(block.mlp[0])
        block.mlp[2] = _plain_linear(block.mlp[2])
    _retype(model)
    expected = len(model.encoder.blocks) + len(model.decoder.blocks)
    if counts["self_attention_qkv"] != expected or counts["cross_attention_kv"] != len(model.decoder.blocks):
        raise RuntimeError(f"fusion count mismatch: {counts}")
    log.info("fused %s", counts)
    return counts


FUSED_WEIGHTS = "fused.pt"
FUSED_DIR_FILES = (FUSED_WEIGHTS, CARD)  # what models/fused holds


def _retype(model: Whisper) -> None:
    model.encoder.__class__ = FusedAudioEncoder
    model.decoder.__class__ = FusedTextDecoder
    model.decoder.token_embedding.__class__ = TiedEmbedding


def fused_skeleton(dims: ModelDimensions) -> Whisper:
    """An uninitialized fused model (no weight memory touched), for ``load_state_dict(assign=True)``."""
    model = Whisper.__new__(Whisper)  # skip Whisper.__init__: materialize sets the alignment heads
    nn.Module.__init__(model)
    model.dims = dims
    with uninitialized():
        model.encoder = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        )
        model.decoder = TextDecoder(
            dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer
        )
        for block in [*model.encoder.blocks, *model.decoder.blocks]:
            n_state = block.attn.query.in_features
            block.attn = FusedAttention(n_state, block.attn.n_head, cross=False)
            if block.cross_attn is not None:
                block.cross_attn = FusedAttention(n_state, block.cross_attn.n_head, cross=True)
            block.mlp[0] = nn.Linear(block.mlp[0].in_features, block.mlp[0].out_features)
            block.mlp[2] = nn.Linear(block.mlp[2].in_features, block.mlp[2].out_features)
    _retype(model)
    return model


def materialize(model: Whisper, state: dict[str, Tensor], alignment_heads: list[list[int]] | None) -> Whisper:
    """Load ``state`` into an uninitialized skeleton (:func:`fused_skeleton`) and rebuild the
    non-persistent buffers on CPU."""
    from .model_sources import set_alignment_heads

    model.load_state_dict(state, strict=True, assign=True)
    n_ctx = model.dims.n_text_ctx
    model.decoder.register_buffer(
        "mask", torch.empty(n_ctx, n_ctx).fill_(-float("inf")).triu_(1), persistent=False
    )
    if alignment_heads:
        set_alignment_heads(model, alignment_heads)
    else:
        heads = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        heads[model.dims.n_text_layer // 2 :] = True
        model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
    return model.eval()


def save_weights(path: Path, model: nn.Module) -> str:
    """``model``'s state dict as plain tensors (loaded with ``weights_only=True``); returns its sha256,
    which the description written beside it records so that a load can check it."""
    from .fsutil import sha256_file

    torch.save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)
    return sha256_file(path)


def save_fused_dir(out: Path, model: Whisper, alignment_heads, counts: dict[str, int], extra: dict) -> None:
    """Write ``fused.pt`` and ``model_card.json`` into ``out`` (an atomic temp dir)."""
    from dataclasses import asdict

    from .fsutil import atomic_write_json

    digest = save_weights(out / FUSED_WEIGHTS, model)
    card = {
        "format": "whisper-int8/fused",
        "weights": FUSED_WEIGHTS,
        "dims": asdict(model.dims),
        "alignment_heads": alignment_heads,
        "fusions": counts,
        "bytes": (out / FUSED_WEIGHTS).stat().st_size,
        "weights_sha256": digest,  # checked on load: a damaged byte would load silently
        **extra,
    }
    atomic_write_json(out / CARD, card)
