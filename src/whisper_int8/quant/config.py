"""``params.yaml`` ``quant:`` section: every key validated, with an error naming the key and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..params import ParamError, reject_unknown_keys

SCHEMES = ("dynamic", "static", "weight_only")
BACKENDS = ("auto", "x86", "fbgemm", "torchao")
CROSS_KV_DTYPES = ("float16", "float32")
WEIGHT_BITS = (7, 8)


@dataclass(frozen=True)
class QuantConfig:
    scheme: str = "dynamic"
    per_channel: bool = True
    per_token: bool = True
    smoothquant_alpha: float | None = None
    keep_float: list[str] = field(default_factory=list)
    auto_keep_float_k: int = 0
    outlier_channels: int = 0
    outlier_layers: list[str] = field(default_factory=lambda: ["*.mlp.2"])
    quantize_embedding: bool = True
    # of the layers whose activations are quantized per call (dynamic, outliers, the logits): 7 lets
    # them take 8-bit activations on every x86 CPU (whisper_int8.cpu.activation_bits); static and
    # weight_only layers keep 8-bit weights
    weight_bits: int = 7
    backend: str = "auto"
    cross_kv_dtype: str = "float16"
    # the parameter file it was read from, named by the conversion's errors; not a setting: not saved
    where: str = field(default="params.yaml", compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The settings (``quant_config.json`` ``config``), without :attr:`where`."""
        return {k: v for k, v in asdict(self).items() if k != "where"}


DEFAULTS: dict[str, Any] = QuantConfig().to_dict()  # what a key left out of params.yaml quant: takes


def _bool(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParamError(f"{where}: quant.{key}={value!r}: expected true or false")
    return value


def _patterns(where: str, key: str, value: Any) -> list[str]:
    patterns = [] if value is None else value
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ParamError(
            f"{where}: quant.{key}={value!r}: expected a list of module names or glob patterns "
            "(e.g. ['decoder.blocks.0.*'])"
        )
    return list(patterns)


def _count(where: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ParamError(f"{where}: quant.{key}={value!r}: expected an integer >= 0")
    return value


def parse_quant_config(raw: dict[str, Any] | None, where: str = "params.yaml") -> QuantConfig:
    """Validate the ``quant`` mapping (missing keys take :data:`DEFAULTS`) and return a config."""
    if raw is not None and not isinstance(raw, dict):
        raise ParamError(f"{where}: quant: expected a mapping of keys (e.g. scheme: dynamic), got {raw!r}")
    raw = dict(raw or {})
    reject_unknown_keys(raw, "quant", set(DEFAULTS), where)
    v = {**DEFAULTS, **raw}
    for key, choices in (("scheme", SCHEMES), ("backend", BACKENDS), ("cross_kv_dtype", CROSS_KV_DTYPES)):
        if v[key] not in choices:
            raise ParamError(f"{where}: quant.{key}={v[key]!r}: choose one of {', '.join(choices)}")
    if v["scheme"] == "static" and v["backend"] == "torchao":
        raise ParamError(
            f"{where}: quant.scheme=static runs on CPU only (fbgemm's calibrated ranges) and "
            "quant.backend=torchao on CUDA only: no device could load it; change one of them"
        )
    alpha = v["smoothquant_alpha"]
    if alpha is not None and (
        isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0
    ):
        raise ParamError(f"{where}: quant.smoothquant_alpha={alpha!r}: expected null or a number in [0, 1]")
    keep = _patterns(where, "keep_float", v["keep_float"])
    outlier_layers = _patterns(where, "outlier_layers", v["outlier_layers"])
    k = _count(where, "auto_keep_float_k", v["auto_keep_float_k"])
    if type(v["weight_bits"]) is not int or v["weight_bits"] not in WEIGHT_BITS:  # not True, not 8.0
        raise ParamError(
            f"{where}: quant.weight_bits={v['weight_bits']!r}: choose 7 (8-bit activations on every CPU) "
            "or 8 (finer weights; 8-bit activations only where fbgemm runs VNNI kernels)"
        )
    outliers = _count(where, "outlier_channels", v["outlier_channels"])
    if outliers and v["scheme"] == "weight_only":
        raise ParamError(
            f"{where}: quant.outlier_channels={outliers} needs quantized activations; "
            "quant.scheme=weight_only computes in float: set it to 0"
        )
    return QuantConfig(
        scheme=v["scheme"],
        per_channel=_bool(where, "per_channel", v["per_channel"]),
        per_token=_bool(where, "per_token", v["per_token"]),
        smoothquant_alpha=None if alpha is None else float(alpha),
        keep_float=keep,
        auto_keep_float_k=k,
        outlier_channels=outliers,
        outlier_layers=outlier_layers,
        quantize_embedding=_bool(where, "quantize_embedding", v["quantize_embedding"]),
        weight_bits=v["weight_bits"],
        backend=v["backend"],
        cross_kv_dtype=v["cross_kv_dtype"],
        where=where,
    )


def resolve_backend(backend: str, device: str) -> str:
    """``auto`` -> ``x86`` on CPU, ``torchao`` on CUDA; reject a backend that cannot run on ``device``."""
    cuda = str(device).startswith("cuda")
    if backend == "auto":
        return "torchao" if cuda else "x86"
    if cuda and backend != "torchao":
        raise ParamError(
            f"quant.backend={backend!r} runs on CPU only; use auto or torchao for device {device!r}"
        )
    if not cuda and backend == "torchao":
        raise ParamError(
            f"quant.backend=torchao needs a CUDA device (got {device!r}); use auto, x86 or fbgemm"
        )
    return backend
