"""Turn a fused FP32 Whisper into INT8 per ``QuantConfig``; save and rebuild it from a directory alone."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor, nn
from whisper.model import Whisper

from ..fsutil import atomic_write_json
from ..fuse import TiedEmbedding, fused_skeleton, materialize, save_weights, set_cross_kv_dtype
from ..model_sources import ModelSourceError
from ..params import ParamError
from ..stage_files import CARD, CONVERT_STAGE
from .config import QuantConfig
from .cpu import (
    LINEAR_CLASSES,
    DynamicInt8Linear,
    Int8TiedEmbedding,
    OutlierInt8Linear,
    StaticInt8Linear,
    set_engine,
    unpacked,
)

log = logging.getLogger(__name__)

INT8_WEIGHTS = "int8.pt"
QUANT_CONFIG = "quant_config.json"
INT8_DIR_FILES = (INT8_WEIGHTS, QUANT_CONFIG, CARD)  # what models/int8 holds
EMBEDDING = "decoder.token_embedding"
FORMAT = "whisper-int8/int8"
# Static scheme: the MLP output projection's input (after GELU) has outliers that one calibrated
# per-tensor scale cannot cover (measured: relative logit error 0.90 and 52 % top-1 agreement with
# it static, 0.27 and 100 % with it dynamic), so those layers keep per-call (dynamic) ranges.
STATIC_DYNAMIC_SUFFIX = ".mlp.2"
OUTLIERS = "dynamic_outliers"  # layer kind: dynamic INT8 with quant.outlier_channels input channels in float


class QuantError(RuntimeError):
    """Quantization did not do what the config asked (e.g. wrong number of converted layers)."""


def linear_names(model: nn.Module) -> list[str]:
    """Names of the float Linear layers, the candidates for INT8 (exact type: whisper's subclass is gone)."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _matching(where: str, key: str, patterns: list[str], candidates: list[str], examples: str) -> list[str]:
    """The ``candidates`` matching any of ``patterns`` (``quant.<key>`` of ``where``), in order; each must
    match one."""
    hits: list[str] = []
    for pattern in patterns:
        matched = fnmatch.filter(candidates, pattern)
        if not matched:
            raise ParamError(
                f"{where}: quant.{key}: pattern {pattern!r} matches no layer; names look like {examples}"
            )
        hits += [m for m in matched if m not in hits]
    return hits


def float_layers(names: list[str], cfg: QuantConfig, sensitivity: dict[str, float] | None) -> list[str]:
    """Layers kept in float: those matching ``keep_float`` plus the ``auto_keep_float_k`` most sensitive
    Linear layers."""
    candidates = [*names, EMBEDDING]
    keep = _matching(
        cfg.where, "keep_float", cfg.keep_float, candidates, f"{names[0]!r}, {names[-1]!r} or {EMBEDDING!r}"
    )
    if cfg.auto_keep_float_k:
        if not sensitivity:
            raise ParamError(
                f"{cfg.where}: quant.auto_keep_float_k > 0 needs the calibration sensitivity.json; "
                "run calibrate"
            )
        # k more float Linear layers (a slot spent on one keep_float keeps would keep nothing). Not the
        # token embedding, whatever it ranks: it is 36 % of base's weights, so in float it takes the
        # file from 0.29 to 0.57 of FP32; that is quantize_embedding's or keep_float's choice
        eligible = set(names) - set(keep)
        ranked = sorted((n for n in sensitivity if n in eligible), key=lambda n: -sensitivity[n])
        # one layer must stay INT8: with every ranked layer float and none left unranked, nothing
        # would be, which quantize_model refuses; the range offered here must not lead there
        most = len(ranked) if eligible - set(ranked) else max(len(ranked) - 1, 0)
        if cfg.auto_keep_float_k > most:
            raise ParamError(
                f"{cfg.where}: quant.auto_keep_float_k={cfg.auto_keep_float_k}: only {most} more layers can "
                f"be kept in float (ranked in sensitivity.json, not in keep_float, one left INT8); choose an "
                f"integer from 0 to {most}"
            )
        keep += ranked[: cfg.auto_keep_float_k]
    return keep


def check_calibration(
    model: nn.Module,
    names: list[str],
    stats: dict[str, Tensor] | None,
    sensitivity: dict | None,
    origin: str = "calibration",
) -> None:
    """Refuse calibration statistics or a sensitivity ranking measured on another model.

    Nothing else ties ``models/calibration`` to the fused model: another model's maxima would set
    static scales or SmoothQuant factors silently, or fail later with a bare shape error. ``origin``:
    the calibration directory, named in the errors.
    """
    rerun = "rerun calibrate on this fused model"
    if stats:
        calibrated = {k.rpartition("/")[0] for k in stats if k.endswith("/in_absmax")}
        if calibrated != set(names):
            odd = sorted(calibrated ^ set(names))
            raise ParamError(
                f"{origin}: statistics from another model (layers differ, e.g. {odd[:3]}); {rerun}"
            )
        for name in names:
            width, got = _get(model, name).in_features, tuple(stats[f"{name}/in_absmax"].shape)
            if got != (width,):
                detail = f"{name}: {got} maxima, {width} inputs"
                raise ParamError(f"{origin}: statistics from another model ({detail}); {rerun}")
    foreign = sorted(set(sensitivity or {}) - {*names, EMBEDDING})
    if foreign:
        raise ParamError(f"{origin}: sensitivity.json from another model (it ranks {foreign[:3]}); {rerun}")


def outlier_layers(names: list[str], cfg: QuantConfig) -> set[str]:
    """Layers matching ``quant.outlier_layers`` (none if ``outlier_channels`` is 0).

    Every pattern must match a layer even while ``outlier_channels`` is 0, as ``keep_float``'s must: a
    mistyped pattern is reported where it is written, not on the run that turns the outliers on.
    """
    examples = f"{names[0]!r} or {names[-1]!r}"
    matched = _matching(cfg.where, "outlier_layers", cfg.outlier_layers, names, examples)
    return set(matched) if cfg.outlier_channels else set()


def check_layer_settings(stats: dict[str, Tensor], cfg: QuantConfig, sensitivity: dict | None) -> None:
    """``keep_float``, ``outlier_layers`` and ``auto_keep_float_k`` checked against the Linear layers the
    calibration statistics name, before the fused model is loaded: a mistyped pattern is reported in a
    second, not after large-v3's 6 GB are read (:func:`quantize_model` checks them on the model again)."""
    names = [k.rpartition("/")[0] for k in stats if k.endswith("/in_absmax")]
    if names:
        float_layers(names, cfg, sensitivity)
        outlier_layers(names, cfg)


def _check_outliers(name: str, lin: nn.Linear, k: int, in_absmax: dict[str, Tensor], where: str) -> None:
    """``name`` can keep ``k`` input channels in float: calibrated, and wider than ``k``."""
    if name not in in_absmax:
        raise ParamError(
            f"{where}: quant.outlier_channels needs the calibrated input maxima of {name}; run calibrate "
            "(models/calibration) on this fused model"
        )
    if k >= lin.in_features:
        raise ParamError(
            f"{where}: quant.outlier_channels={k}: {name} has only {lin.in_features} input channels; "
            f"choose an integer from 0 to {lin.in_features - 1}"
        )


def _layer_kind(name: str, cfg: QuantConfig, keep: list[str], outliers: set[str]) -> str:
    """What ``name`` becomes: ``float``, a scheme, or :data:`OUTLIERS`."""
    if name in keep:
        return "float"
    scheme = cfg.scheme
    if scheme == "static" and (not name.startswith("encoder.") or name.endswith(STATIC_DYNAMIC_SUFFIX)):
        scheme = "dynamic"  # see STATIC_DYNAMIC_SUFFIX; the decoder's inputs change every step
    return OUTLIERS if scheme == "dynamic" and name in outliers else scheme


def smooth(model: Whisper, in_absmax: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """SmoothQuant: move activation outliers into the weights, folding 1/s into the preceding LayerNorm.

    Applies where one LayerNorm feeds one Linear (fused QKV, cross-attention query, MLP fc1), so the
    model stays mathematically equal in float. Returns the per-channel factors applied, by layer.
    """
    applied = {}
    for prefix, block in [(f"encoder.blocks.{i}", b) for i, b in enumerate(model.encoder.blocks)] + [
        (f"decoder.blocks.{i}", b) for i, b in enumerate(model.decoder.blocks)
    ]:
        pairs = [("attn_ln", "attn.qkv"), ("mlp_ln", "mlp.0")]
        if block.cross_attn is not None:
            pairs.append(("cross_attn_ln", "cross_attn.query"))
        for ln_name, lin_name in pairs:
            name = f"{prefix}.{lin_name}"
            ln, lin = getattr(block, ln_name), block.get_submodule(lin_name)
            if name not in in_absmax or type(lin) is not nn.Linear:
                continue
            x_max = in_absmax[name].float().clamp_min(1e-5)
            w_max = lin.weight.detach().abs().amax(dim=0).clamp_min(1e-5)
            s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp_min(1e-5)
            with torch.no_grad():
                ln.weight.div_(s)
                ln.bias.div_(s)
                lin.weight.mul_(s)
            applied[name] = s
    return applied


def quantize_model(
    model: Whisper,
    cfg: QuantConfig,
    stats: dict[str, Tensor] | None = None,
    sensitivity: dict | None = None,
    origin: str = "calibration",
) -> dict:
    """Quantize a fused ``model`` in place; return the layer map and counts (checked, fails loudly).

    ``stats``/``sensitivity``: read from the calibration directory ``origin`` (named in errors).
    """
    set_engine("x86" if cfg.backend in ("auto", "torchao") else cfg.backend)  # convert runs on CPU
    names = linear_names(model)
    if not names:
        raise QuantError("no nn.Linear layers found: is this a fused model (fuse_model) ?")
    check_calibration(model, names, stats, sensitivity, origin)
    keep = float_layers(names, cfg, sensitivity)
    needs = [
        key
        for key, on in (
            (f"quant.scheme={cfg.scheme}", cfg.scheme == "static"),
            (f"quant.smoothquant_alpha={cfg.smoothquant_alpha}", cfg.smoothquant_alpha is not None),
            (f"quant.outlier_channels={cfg.outlier_channels}", cfg.outlier_channels > 0),
        )
        if on
    ]
    if needs and not stats:
        verb = "needs" if len(needs) == 1 else "need"
        raise ParamError(
            f"{cfg.where}: {' and '.join(needs)} {verb} the calibration statistics (models/calibration): "
            "run calibrate"
        )
    outliers = outlier_layers(names, cfg)
    in_absmax = {n: stats[f"{n}/in_absmax"] for n in names if stats and f"{n}/in_absmax" in stats}
    # every layer's kind decided and checked before the model is changed: a refused config leaves it whole
    layers = {name: _layer_kind(name, cfg, keep, outliers) for name in names}
    if set(layers.values()) == {"float"} and not (cfg.quantize_embedding and EMBEDDING not in keep):
        raise ParamError(
            f"{cfg.where}: every Linear layer is kept in float (quant.keep_float, quant.auto_keep_float_k) "
            "and so is the embedding (quant.quantize_embedding): nothing would be INT8; keep fewer in float"
        )
    if cfg.outlier_channels and OUTLIERS not in layers.values():
        raise ParamError(
            f"{cfg.where}: quant.outlier_channels={cfg.outlier_channels}: no layer matching "
            f"quant.outlier_layers={cfg.outlier_layers} runs dynamic INT8 (kept in float, static, or no "
            "pattern); set it to 0"
        )
    if cfg.scheme == "static" and "static" not in layers.values():
        raise ParamError(
            f"{cfg.where}: quant.scheme=static: the encoder Linears that take calibrated scales are all "
            "kept in float (keep_float, auto_keep_float_k), so none would use them; use scheme dynamic"
        )
    for name, kind in layers.items():
        if kind == OUTLIERS:
            _check_outliers(name, _get(model, name), cfg.outlier_channels, in_absmax, cfg.where)
        if kind == "static" and f"{name}/out_absmax" not in stats:
            raise ModelSourceError(
                f"{origin}: the statistics lack {name}/out_absmax, which the static scheme needs; "
                "rerun calibrate on this fused model"
            )
    if cfg.smoothquant_alpha is not None:
        factors = smooth(model, in_absmax, cfg.smoothquant_alpha)
        in_absmax.update({n: in_absmax[n] / s for n, s in factors.items()})
        log.info("SmoothQuant alpha=%s applied to %d layers", cfg.smoothquant_alpha, len(factors))
    for name, kind in layers.items():
        if kind == "float":
            continue
        lin = _get(model, name)
        if kind == "static":
            # input scale from the calibrated absmax over the 7-bit range (not the clipping percentile)
            extra = {
                "input_scale": (in_absmax[name].max() / 63.5).clamp_min(1e-8).reshape(()),
                "output_scale": (stats[f"{name}/out_absmax"].max() / 127.5).clamp_min(1e-8).reshape(()),
            }
            qmod = StaticInt8Linear.from_float(lin, cfg.per_channel, **extra)
        elif kind == OUTLIERS:  # the channels with the largest (smoothed) calibrated maxima stay float
            index = torch.topk(in_absmax[name].float(), cfg.outlier_channels).indices.sort().values
            qmod = OutlierInt8Linear.from_float(lin, cfg.per_channel, index, cfg.per_token, cfg.weight_bits)
        elif kind == "dynamic":
            qmod = DynamicInt8Linear.from_float(lin, cfg.per_channel, cfg.per_token, cfg.weight_bits)
        else:
            qmod = LINEAR_CLASSES[kind].from_float(lin, cfg.per_channel)
        _set(model, name, qmod)
    emb = model.decoder.token_embedding
    if cfg.quantize_embedding and EMBEDDING not in keep:
        model.decoder.token_embedding = Int8TiedEmbedding.from_float(emb, cfg.per_token, cfg.weight_bits)
        layers[EMBEDDING] = "int8_tied"
    else:
        layers[EMBEDDING] = "float"
    set_cross_kv_dtype(model, cfg.cross_kv_dtype)
    report = count_layers(model)
    expected_int8 = sum(v != "float" for k, v in layers.items() if k != EMBEDDING)
    if report["int8_linear"] != expected_int8 or report["float_linear"] != len(names) - expected_int8:
        raise QuantError(f"converted {report} but the layer map expects {expected_int8} int8 Linear layers")
    log.info("quantized: %s", report)
    return {"layers": layers, **report}


def count_layers(model: nn.Module) -> dict[str, int]:
    """Count what is really in the model: int8 Linear modules, float Linear, int8 embeddings."""
    mods = list(model.modules())
    return {
        "int8_linear": sum(
            getattr(m, "kind", None) == "int8" and not isinstance(m, Int8TiedEmbedding) for m in mods
        ),
        "float_linear": sum(type(m) is nn.Linear for m in mods),
        "int8_embedding": sum(isinstance(m, Int8TiedEmbedding) for m in mods),
        "float_embedding": sum(isinstance(m, TiedEmbedding) for m in mods),
    }


def save_int8_dir(
    out: Path,
    model: Whisper,
    cfg: QuantConfig,
    report: dict,
    alignment_heads,
    fp32_bytes: int,
    extra: dict | None = None,
) -> dict:
    """Write ``int8.pt`` (plain tensors), ``quant_config.json`` and ``model_card.json``; return the card.

    ``bytes`` counts the weights and the config, the two files the loader needs. ``extra``: more card
    entries (where the model came from).
    """
    digest = save_weights(out / INT8_WEIGHTS, model)
    atomic_write_json(
        out / QUANT_CONFIG,
        {
            "format": FORMAT,
            "weights": INT8_WEIGHTS,
            # ties the config to these weights: a damaged file, or another conversion's tensors, would load
            # silently wrong. It cannot tell conversions that write the same tensors apart (per_token,
            # cross_kv_dtype, or weight_only against dynamic at weight_bits 8: the same int8.pt), so such
            # a config loads them as its own conversion would have
            "weights_sha256": digest,
            "config": cfg.to_dict(),
            "dims": asdict(model.dims),
            "alignment_heads": alignment_heads,
            "layers": report["layers"],
        },
    )
    size = (out / INT8_WEIGHTS).stat().st_size + (out / QUANT_CONFIG).stat().st_size
    card = {
        "format": FORMAT,
        "scheme": cfg.scheme,
        "bytes": size,
        "fp32_bytes": fp32_bytes,
        "ratio_to_fp32": round(size / fp32_bytes, 4),
        **{k: v for k, v in report.items() if k != "layers"},
        **(extra or {}),
    }
    atomic_write_json(out / CARD, card)
    return card


def build_int8(
    qcfg: dict, state: dict[str, Tensor], pack: bool = True, origin: str = QUANT_CONFIG
) -> Whisper:
    """Rebuild the quantized structure described by ``quant_config.json`` and load ``state`` into it.

    ``pack=False``: the int8 modules keep plain tensors (``quant.cpu.unpacked``) for the torchao backend,
    which rebuilds them; no CPU quantized engine is needed then. ``origin``: the config's path, named in
    the errors (one of several model directories may be the bad one).
    """
    from whisper.model import ModelDimensions

    cfg = qcfg["config"]
    per_token = cfg.get("per_token", False)  # False: written before the key, one range per call
    model = fused_skeleton(ModelDimensions(**qcfg["dims"]))
    for name, kind in qcfg["layers"].items():
        if kind == "float":
            continue
        if name == EMBEDDING:
            emb = _get(model, name)
            _set(model, name, Int8TiedEmbedding(emb.num_embeddings, emb.embedding_dim, per_token))
            continue
        lin = _get(model, name)
        shape = (lin.in_features, lin.out_features, lin.bias is not None, cfg["per_channel"])
        if kind == OUTLIERS:
            _set(model, name, OutlierInt8Linear(*shape, per_token, cfg["outlier_channels"]))
        elif kind == "dynamic":
            _set(model, name, DynamicInt8Linear(*shape, per_token))
        elif kind in LINEAR_CLASSES:
            _set(model, name, LINEAR_CLASSES[kind](*shape))
        else:
            raise ModelSourceError(
                f"{origin}: layer {name} has kind {kind!r}, which this version does not know (written by "
                f"another version, or edited); rerun {CONVERT_STAGE}"
            )
    set_cross_kv_dtype(model, cfg.get("cross_kv_dtype", "float32"))  # float32: written before the key
    if not pack:
        with unpacked():
            return materialize(model, state, qcfg.get("alignment_heads"))
    set_engine("x86")
    return materialize(model, state, qcfg.get("alignment_heads"))


__all__ = ["DynamicInt8Linear", "QuantError", "build_int8", "count_layers", "quantize_model", "save_int8_dir"]
