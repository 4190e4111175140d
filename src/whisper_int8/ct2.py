"""Read CTranslate2 Whisper model files and map them to openai-whisper state dicts.

The binary layout follows CTranslate2's ``specs/model_spec.py`` (``_serialize``):
little-endian; uint32 version; spec name; uint32 revision; uint32 variable count;
per variable: name, uint8 rank, rank x uint32 dims, uint8 dtype id, uint32 byte count,
raw bytes; then uint32 alias count and (alias, target) name pairs. A string is a
uint16 length that counts a trailing NUL, the UTF-8 bytes, then the NUL.

The name mapping is one table (:func:`name_table`) used in both directions, so the
loader and the test-only writer cannot drift apart.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from whisper.model import ModelDimensions

DTYPES: dict[int, torch.dtype] = {
    0: torch.float32,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.float16,
    5: torch.bfloat16,
}
DTYPE_IDS = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = {torch.float32, torch.float16, torch.bfloat16}


class CT2FormatError(ValueError):
    """A CTranslate2 model file is truncated, corrupt or not a Whisper model."""


@dataclass
class CT2Model:
    version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor]
    aliases: dict[str, str] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every variable by name, aliases included: CTranslate2 stores a tensor that occurs twice
        (the identical layer norms of an untrained model, say) once, the other name an alias of it."""
        return {
            **{a: self.variables[t] for a, t in self.aliases.items() if t in self.variables},
            **self.variables,
        }


class _Cursor:
    def __init__(self, buf: bytearray, origin: str):
        self.buf, self.pos, self.origin = buf, 0, origin

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise CT2FormatError(
                f"{self.origin}: truncated or corrupt CTranslate2 file (wanted {n} bytes at offset "
                f"{self.pos}, file has {len(self.buf)}); re-install the model package or re-export the model"
            )
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = bytes(self.take(length))
        if length == 0 or raw[-1] != 0:
            raise CT2FormatError(f"{self.origin}: corrupt string at offset {self.pos - length}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CT2FormatError(f"{self.origin}: corrupt string at offset {self.pos - length}") from e


def read_ct2(data: bytearray, origin: str = "model.bin") -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` held in memory (``origin`` names it in errors)."""
    cur = _Cursor(data, origin)
    (version,) = cur.unpack("I")
    if not 3 <= version <= 6:
        raise CT2FormatError(f"{origin}: unsupported CTranslate2 binary version {version} (expected 3-6)")
    spec = cur.string()
    (revision,) = cur.unpack("I")
    (count,) = cur.unpack("I")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(count):
        name = cur.string()
        (rank,) = cur.unpack("B")
        shape = cur.unpack(f"{rank}I") if rank else ()
        (dtype_id,) = cur.unpack("B")
        if dtype_id not in DTYPES:
            raise CT2FormatError(f"{origin}: variable {name!r} has unknown dtype id {dtype_id}")
        (nbytes,) = cur.unpack("I")
        dtype = DTYPES[dtype_id]
        numel = 1
        for d in shape:
            numel *= d
        if numel * dtype.itemsize != nbytes:
            raise CT2FormatError(f"{origin}: variable {name!r} shape {shape} does not match {nbytes} bytes")
        raw = cur.take(nbytes)
        tensor = torch.frombuffer(raw, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
        variables[name] = tensor.reshape(shape)
    aliases: dict[str, str] = {}
    if cur.pos < len(data):
        (n_alias,) = cur.unpack("I")
        for _ in range(n_alias):
            alias = cur.string()
            aliases[alias] = cur.string()
    if cur.pos != len(data):
        raise CT2FormatError(f"{origin}: {len(data) - cur.pos} unexpected trailing bytes (corrupt file?)")
    return CT2Model(version, spec, revision, variables, aliases)


def write_ct2(model: CT2Model) -> bytes:
    """Serialize a :class:`CT2Model` (the inverse of :func:`read_ct2`)."""

    def s(text: str) -> bytes:
        raw = text.encode("utf-8")
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    out = [
        struct.pack("<I", model.version),
        s(model.spec),
        struct.pack("<II", model.revision, len(model.variables)),
    ]
    for name, t in model.variables.items():
        t = t.contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out += [s(name), struct.pack("<B", t.dim()), struct.pack(f"<{t.dim()}I", *t.shape)]
        out += [struct.pack("<BI", DTYPE_IDS[t.dtype], len(raw)), raw]
    out.append(struct.pack("<I", len(model.aliases)))
    for alias, target in model.aliases.items():
        out += [s(alias), s(target)]
    return b"".join(out)


# A CT2 variable maps to one or more openai-whisper tensors stacked along dim 0.
# ``None`` marks a slot that openai-whisper does not have (the key projection has no bias):
# CTranslate2 stores zeros there.
Entry = tuple[str, tuple[str | None, ...]]


def _norm(ct2: str, oa: str) -> list[Entry]:
    return [(f"{ct2}/gamma", (f"{oa}.weight",)), (f"{ct2}/beta", (f"{oa}.bias",))]


def _linear(ct2: str, oa: tuple[str, ...], bias: tuple[str | None, ...] | None = None) -> list[Entry]:
    bias = bias if bias is not None else oa
    return [
        (f"{ct2}/weight", tuple(f"{n}.weight" for n in oa)),
        (f"{ct2}/bias", tuple(None if n is None else f"{n}.bias" for n in bias)),
    ]


def _block(ct2: str, oa: str, cross: bool) -> list[Entry]:
    sa, a = f"{ct2}/self_attention", f"{oa}.attn"
    qkv = (f"{a}.query", f"{a}.key", f"{a}.value")
    entries = _norm(f"{sa}/layer_norm", f"{oa}.attn_ln")
    entries += _linear(f"{sa}/linear_0", qkv, (qkv[0], None, qkv[2]))
    entries += _linear(f"{sa}/linear_1", (f"{a}.out",))
    if cross:
        ca, c = f"{ct2}/attention", f"{oa}.cross_attn"
        entries += _norm(f"{ca}/layer_norm", f"{oa}.cross_attn_ln")
        entries += _linear(f"{ca}/linear_0", (f"{c}.query",))
        entries += _linear(f"{ca}/linear_1", (f"{c}.key", f"{c}.value"), (None, f"{c}.value"))
        entries += _linear(f"{ca}/linear_2", (f"{c}.out",))
    entries += _norm(f"{ct2}/ffn/layer_norm", f"{oa}.mlp_ln")
    entries += _linear(f"{ct2}/ffn/linear_0", (f"{oa}.mlp.0",))
    entries += _linear(f"{ct2}/ffn/linear_1", (f"{oa}.mlp.2",))
    return entries


def name_table(n_audio_layer: int, n_text_layer: int) -> list[Entry]:
    """Every CT2 variable of a Whisper spec and the openai-whisper tensors it holds."""
    table: list[Entry] = []
    for conv in ("conv1", "conv2"):
        table += _linear(f"encoder/{conv}", (f"encoder.{conv}",))
    table.append(("encoder/position_encodings/encodings", ("encoder.positional_embedding",)))
    for i in range(n_audio_layer):
        table += _block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    table += _norm("encoder/layer_norm", "encoder.ln_post")
    table.append(("decoder/embeddings/weight", ("decoder.token_embedding.weight",)))
    table.append(("decoder/position_encodings/encodings", ("decoder.positional_embedding",)))
    for i in range(n_text_layer):
        table += _block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    table += _norm("decoder/layer_norm", "decoder.ln")
    return table


def _count_layers(names: list[str], side: str) -> int:
    found = {int(m.group(1)) for n in names if (m := re.match(rf"{side}/layer_(\d+)/", n))}
    if found != set(range(len(found))):
        raise CT2FormatError(f"{side} layers are not numbered 0..n-1: {sorted(found)}")
    return len(found)


def _scalar(variables: dict[str, torch.Tensor], name: str, origin: str) -> int:
    if name not in variables:
        raise CT2FormatError(f"{origin}: missing {name!r}; is this a Whisper model?")
    return int(variables[name].reshape(-1)[0])


def dims_of(ct2: CT2Model, origin: str = "model.bin") -> ModelDimensions:
    """Infer openai-whisper dimensions from the CT2 variables' shapes."""
    v = ct2.tensors()
    names = list(v)
    try:
        return ModelDimensions(
            n_mels=v["encoder/conv1/weight"].shape[1],
            n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
            n_audio_state=v["encoder/conv2/weight"].shape[0],
            n_audio_head=_scalar(v, "encoder/num_heads", origin),
            n_audio_layer=_count_layers(names, "encoder"),
            n_vocab=v["decoder/embeddings/weight"].shape[0],
            n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
            n_text_state=v["decoder/embeddings/weight"].shape[1],
            n_text_head=_scalar(v, "decoder/num_heads", origin),
            n_text_layer=_count_layers(names, "decoder"),
        )
    except KeyError as e:
        raise CT2FormatError(
            f"{origin}: missing variable {e}; is this a CTranslate2 Whisper model?"
        ) from None


PROJECTION = "decoder/projection"
EMBEDDING = "decoder/embeddings/weight"


def _check_tied_projection(v: dict[str, torch.Tensor], origin: str) -> None:
    """openai-whisper computes the logits with the token embedding (tied weights); CTranslate2 stores the
    output projection apart (an alias of the embedding when equal). A fine-tune with an untied
    ``proj_out`` would load with its projection silently replaced by the embedding: refuse it."""
    proj, emb = v.get(f"{PROJECTION}/weight"), v.get(EMBEDDING)
    if f"{PROJECTION}/bias" in v:
        raise CT2FormatError(
            f"{origin}: {PROJECTION}/bias present; openai-whisper's output projection (the token "
            "embedding) has no bias, so this is not a Whisper model it can run"
        )
    if proj is None or emb is None:
        return
    same = proj.shape == emb.shape and (
        torch.equal(proj, emb) if proj.dtype == emb.dtype else torch.equal(proj.float(), emb.float())
    )
    if not same:
        raise CT2FormatError(
            f"{origin}: {PROJECTION}/weight differs from {EMBEDDING} (an untied output projection); "
            "openai-whisper ties them, so the model would lose its own projection. Export a model with "
            "tied embeddings (tie_word_embeddings=True), or use another model source"
        )


def to_openai_state_dict(ct2: CT2Model, dims: ModelDimensions, origin: str = "model.bin") -> dict:
    """Convert CT2 variables to an FP32 openai-whisper state dict.

    Raises :class:`CT2FormatError` for int8 (already quantized) weights: those are not an FP32 baseline,
    and for an output projection that is not the token embedding (see :func:`_check_tied_projection`).
    """
    v = ct2.tensors()
    quantized = sorted(n for n, t in v.items() if n.endswith("/weight") and t.dtype not in FLOAT_DTYPES)
    if quantized:
        raise CT2FormatError(
            f"{origin}: weights are already quantized ({v[quantized[0]].dtype}, e.g. {quantized[0]!r}); "
            "an INT8 CTranslate2 model is not an FP32 baseline. Export it with --quantization float16 "
            "or float32 (ct2-transformers-converter), or use the default package model."
        )
    _check_tied_projection(v, origin)
    state: dict[str, torch.Tensor] = {}
    for ct2_name, parts in name_table(dims.n_audio_layer, dims.n_text_layer):
        if ct2_name not in v:
            raise CT2FormatError(f"{origin}: missing variable {ct2_name!r}")
        chunks = v[ct2_name].float().chunk(len(parts), dim=0)
        for name, chunk in zip(parts, chunks, strict=True):
            if name is not None:
                state[name] = chunk.clone()
    return state


def from_openai_state_dict(
    state: dict, dims: ModelDimensions, dtype: torch.dtype = torch.float16
) -> CT2Model:
    """Build a CT2 Whisper spec from an openai-whisper state dict (used to test the loader)."""
    variables: dict[str, torch.Tensor] = {
        "encoder/num_heads": torch.tensor(dims.n_audio_head, dtype=torch.int16),
        "decoder/num_heads": torch.tensor(dims.n_text_head, dtype=torch.int16),
        # what CTranslate2's converter writes there: the number of heads of its guided alignment
        "decoder/alignment_heads": torch.tensor(1, dtype=torch.int16),
    }
    for ct2_name, parts in name_table(dims.n_audio_layer, dims.n_text_layer):
        like = next(state[n] for n in parts if n is not None)
        tensors = [torch.zeros_like(like) if n is None else state[n] for n in parts]
        variables[ct2_name] = torch.cat(tensors, dim=0).to(dtype)
    return CT2Model(
        6, "WhisperSpec", 3, variables, {"decoder/projection/weight": "decoder/embeddings/weight"}
    )


def ct2_spec(path: Path) -> str | None:
    """The spec name in the header of a CTranslate2 model file (``WhisperSpec``), None for another file:
    tells a model.bin given where a checkpoint was expected from a damaged checkpoint."""
    try:
        with open(path, "rb") as f:
            head = f.read(70)
    except OSError:
        return None
    if len(head) < 6:
        return None
    version, length = struct.unpack_from("<IH", head)
    name = head[6 : 6 + length]
    if not 3 <= version <= 6 or len(name) != length or not name.endswith(b"\0"):
        return None
    spec = name[:-1].decode("ascii", errors="replace")
    return spec if spec.isidentifier() else None


def read_ct2_files(paths: list[Path]) -> CT2Model:
    """Read a model split over several files (concatenated in order)."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"CTranslate2 model file not found: {', '.join(missing)}")
    buf = bytearray()
    for p in paths:
        buf += p.read_bytes()
    return read_ct2(buf, origin=" + ".join(str(p) for p in paths))
