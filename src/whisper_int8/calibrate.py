"""Calibration: activation statistics of every Linear input and per-layer INT8 sensitivity.

The fused FP32 model runs over the calibration clips with teacher forcing (the reference text as
decoder input), so both the encoder and the decoder see realistic activations in every language.
Per Linear we keep the per-input-channel absolute maximum (SmoothQuant, static input scales), a
histogram of |x| on a fixed log grid and its ``calibrate.percentile``, and the output absmax (static
output scales). The conversion reads only the maxima: the static scheme's input scale is the absmax
(``quant.convert.quantize_model``). The histogram and percentile are calibration statistics written
for inspection and for choosing a clipping value; no conversion step reads them. The maxima see every row;
the histogram, a distribution estimate, sees at most ``HIST_ROWS`` evenly spaced rows per call (an
encoder input has 1500), which cuts the hooks' cost from 60 % to 25 % of the plain pass.
Sensitivity is the relative logit error when only that one layer is INT8 (real fbgemm kernel, not a
simulation), measured on a few clips: cheap enough for every run.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import whisper
from torch import Tensor, nn
from tqdm import tqdm
from whisper.audio import CHUNK_LENGTH
from whisper.model import Whisper
from whisper.tokenizer import LANGUAGES, get_tokenizer

from .audio import AudioInputError, Clip
from .audio.wavio import load_audio
from .fsutil import atomic_write_json
from .fuse import FUSED_WEIGHTS, encoder_block_, encoder_frames
from .model_dir import check_languages, fused_digest
from .model_sources import ModelSourceError
from .params import ParamError, null_or_count, reject_unknown_keys, section
from .quant.convert import EMBEDDING, linear_names
from .quant.cpu import DynamicInt8Linear, Int8TiedEmbedding, activations_pinned, set_engine
from .stage_files import load_tensors, read_json

log = logging.getLogger(__name__)

STATS = "stats.pt"
SENSITIVITY = "sensitivity.json"
COVERAGE = "coverage.json"
CALIBRATION_FILES = (STATS, SENSITIVITY, COVERAGE)  # what models/calibration holds
# |x| histogram: 2^-16 .. 2^12 in 1/32-octave bins (log2 domain); values outside go to the end bins.
LOG2_MIN, LOG2_MAX, HIST_BINS = -16.0, 12.0, 28 * 32
HIST_EDGES = torch.exp2(torch.linspace(LOG2_MIN, LOG2_MAX, HIST_BINS + 1))
HIST_ROWS = 512
CALIBRATE_STAGE = "the calibrate stage (dvc repro calibrate)"  # what to rerun for a bad calibration file
CROSS_KV = ".cross_attn.kv"  # the decoder layers that read audio frames (the fused cross-attention K/V)


@dataclass
class Sample:
    """One calibration clip ready for the model: log-mel (1, n_mels, 3000) and teacher-forcing tokens."""

    clip: Clip
    mel: Tensor
    tokens: Tensor  # (1, n): SOT sequence + text, what the decoder is fed while it writes the text


def prepare(clips: list[Clip], model: Whisper) -> Iterator[Sample]:
    """Load each clip (first 30 s) and tokenize its reference text in its own language.

    A clip longer than 30 s keeps the same share of its text as of its audio (speech taken as even):
    teacher-forcing words the model never heard would calibrate the decoder on text it invents.
    The mel bins and the tokenizer follow ``model``, as in ``transcribe``: large-v3 and turbo take 128
    mels, and their 100th language shifts the task and no-timestamps tokens by one. No end-of-text:
    decoding stops when it predicts one and never feeds it, so its row would calibrate the decoder,
    and count in the sensitivity, on an input that never occurs (the last text token's logits
    predict it).
    """
    for clip in clips:
        if clip.language not in LANGUAGES:
            raise AudioInputError(
                f"clip {clip.id}: language {clip.language!r} is not a Whisper language code"
            )
        tok = get_tokenizer(
            model.is_multilingual,
            num_languages=model.num_languages,
            language=clip.language,
            task="transcribe",
        )
        text = tok.encode(" " + clip.text.strip())
        if clip.duration > CHUNK_LENGTH:
            text = text[: max(1, round(len(text) * CHUNK_LENGTH / clip.duration))]
        ids = [*tok.sot_sequence_including_notimestamps, *text]
        audio = whisper.pad_or_trim(load_audio(clip.audio))
        mel = whisper.log_mel_spectrogram(torch.from_numpy(audio), model.dims.n_mels)[None]
        yield Sample(clip, mel, torch.tensor([ids[: model.dims.n_text_ctx]]))


class StatsCollector:
    """Forward hooks on every float Linear that accumulate the input/output statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.in_absmax: dict[str, Tensor] = {}
        self.out_absmax: dict[str, Tensor] = {}
        self.hist: dict[str, Tensor] = defaultdict(lambda: torch.zeros(HIST_BINS, dtype=torch.float64))
        self.hooks = [
            model.get_submodule(n).register_forward_hook(self._hook(n)) for n in linear_names(model)
        ]

    def _hook(self, name: str):
        def hook(_mod: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].detach().abs().reshape(-1, inputs[0].shape[-1])
            amax = x.amax(dim=0)
            prev = self.in_absmax.get(name)
            self.in_absmax[name] = amax if prev is None else torch.maximum(prev, amax)
            o = output.detach().abs().amax()
            self.out_absmax[name] = (
                o if name not in self.out_absmax else torch.maximum(self.out_absmax[name], o)
            )
            rows = x[:: -(-x.shape[0] // HIST_ROWS)]
            logx = torch.log2(rows.clamp(2**LOG2_MIN, 2**LOG2_MAX * 0.999))
            self.hist[name] += torch.histc(logx, bins=HIST_BINS, min=LOG2_MIN, max=LOG2_MAX).double()

        return hook

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()

    def tensors(self, percentile: float) -> dict[str, Tensor]:
        """Flat ``{layer/stat: tensor}`` dict (loadable with ``weights_only=True``).

        ``in_percentile`` (the upper edge of the percentile's histogram bin, at most the absmax; the
        absmax in the last bin, which holds every larger |x|) and
        ``in_hist`` are for inspection and clipping choices; the conversion uses ``in_absmax`` and
        ``out_absmax``.
        """
        out = {"hist_edges": HIST_EDGES.clone()}
        for name, amax in self.in_absmax.items():
            hist = self.hist[name]
            cdf = hist.cumsum(0) / hist.sum()
            bin_ = int(torch.searchsorted(cdf, percentile / 100.0))
            # upper edge of the percentile's bin; the last bin also holds every |x| above the grid's
            # end (2^12), so its upper edge is the absmax, not 4096
            upper = HIST_EDGES[bin_ + 1] if bin_ + 1 < HIST_BINS else amax.max()
            out[f"{name}/in_absmax"] = amax.float()
            out[f"{name}/in_percentile"] = torch.minimum(upper, amax.max()).float().reshape(())
            out[f"{name}/in_hist"] = hist.clone()
            out[f"{name}/out_absmax"] = self.out_absmax[name].float().reshape(())
        return out


def _encoder_states(model: Whisper, mel: Tensor) -> list[Tensor]:
    """Hidden states entering each encoder block, then the encoder output (for partial re-runs).

    Computed as the fused encoder runs (:func:`encoder_block_`: MLPs in parts), not by each block's
    own forward, which would give an INT8 MLP one activation range over 1500 frames instead of one
    per part: another error than the converted model's.
    """
    enc = model.encoder
    x = encoder_frames(enc, mel)
    states = []
    for block in enc.blocks:
        states.append(x.clone())
        encoder_block_(block, x)
    return [*states, enc.ln_post(x)]


def _encode_from(model: Whisper, states: list[Tensor], block: int) -> Tensor:
    x = states[block].clone()  # the blocks write over their input
    for b in model.encoder.blocks[block:]:
        encoder_block_(b, x)
    return model.encoder.ln_post(x)


def _rel_error(got: list[Tensor], ref: list[Tensor]) -> float:
    num = sum(float((g - r).pow(2).sum()) for g, r in zip(got, ref, strict=True))
    den = sum(float(r.pow(2).sum()) for r in ref)
    return (num / den) ** 0.5


@torch.no_grad()
def sensitivity(model: Whisper, samples: list[Sample], progress: bool = True) -> dict[str, float]:
    """Relative logit error (L2) vs FP32 when only one layer (or the embedding/logits) is INT8.

    Encoder layers re-run the encoder from their own block on (cached FP32 inputs), decoder layers
    reuse the FP32 audio features: the cost is a fraction of full passes. Weights are 7-bit and
    activations 8-bit (``quant.weight_bits``' default), pinned: no fbgemm kernel saturates then, so
    every x86 CPU computes the same ranking, and the layers ``auto_keep_float_k`` keeps in float depend
    neither on the machine that ran ``dvc repro`` nor on WHISPER_INT8_ACTIVATION_BITS, which DVC does
    not see. Activation ranges are those the model runs with: a decoder layer that reads tokens takes
    one token per call (:func:`_one_token_per_call`); the encoder's layers and the cross-attention K/V
    projections, which read audio frames, one range per frame (the default ``per_token``).
    """
    set_engine("x86")
    states = [_encoder_states(model, s.mel) for s in samples]
    feats = [st[-1] for st in states]
    ref = [model.logits(s.tokens, f) for s, f in zip(samples, feats, strict=True)]
    names = [*linear_names(model), EMBEDDING]
    result = {}
    with activations_pinned(weight_bits=7, bits=8):
        for name in tqdm(names, desc="sensitivity", unit="layer", disable=not progress):
            result[name] = _one_layer_error(model, name, samples, states, feats, ref)
    return result


def _one_token_per_call(step: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``step`` (an INT8 decoder layer's GEMM) applied to one token at a time, as decoding runs it (each
    token gets its own activation range). All of a teacher-forced sequence in one call would share one
    range, which no decoding computes: on base that ranked decoder.blocks.2.mlp.2 first (0.27, against
    0.01 token by token) for the start-of-transcript token's outliers, and kept it in float for nothing."""

    def per_token(x: Tensor) -> Tensor:
        return torch.cat([step(x[..., i : i + 1, :]) for i in range(x.shape[-2])], dim=-2)

    return per_token


def _one_layer_error(
    model: Whisper, name: str, samples: list[Sample], states: list, feats: list, ref: list
) -> float:
    """Relative logit error with only ``name`` INT8 (7-bit weights), the rest of ``model`` float."""
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent)
    float_mod = getattr(owner, child)
    if name == EMBEDDING:
        q: nn.Module = Int8TiedEmbedding.from_float(float_mod, bits=7)
        q.project = _one_token_per_call(q.project)  # the logits GEMM; the lookup reads rows anyway
    elif name.startswith("decoder.") and not name.endswith(CROSS_KV):
        q = DynamicInt8Linear.from_float(float_mod, per_channel=True, bits=7)
        q.forward = _one_token_per_call(q.forward)
    else:  # audio frames, as many per call as the model runs: per token
        q = DynamicInt8Linear.from_float(float_mod, per_channel=True, per_token=True, bits=7)
    setattr(owner, child, q)
    try:
        if name.startswith("encoder.blocks."):
            block = int(name.split(".")[2])
            feats_q = [_encode_from(model, st, block) for st in states]
        else:
            feats_q = feats
        got = [model.logits(s.tokens, f) for s, f in zip(samples, feats_q, strict=True)]
    finally:
        setattr(owner, child, float_mod)
    return _rel_error(got, ref)


@torch.no_grad()
def calibrate(
    model: Whisper,
    clips: list[Clip],
    out: Path,
    sensitivity_clips: int,
    percentile: float,
    progress: bool = True,
    model_sha256: str | None = None,
) -> dict:
    """Write ``stats.pt``, ``sensitivity.json`` and ``coverage.json`` for ``model`` into ``out``.

    ``model_sha256``: the digest of the fused weights ``model`` was loaded from, recorded so that
    convert refuses these statistics for another model (:func:`check_calibrated_on`).
    """
    if not clips:
        raise AudioInputError("the calibration split has no clips: rerun fetch_audio (audio.calib_per_lang)")
    if not linear_names(model):
        raise ModelSourceError("no nn.Linear layers to calibrate: give the fused model (models/fused)")
    check_languages(model, {c.language for c in clips}, "the calibration split")
    set_engine("x86")  # a torch without x86 INT8 kernels stops here, not after the statistics pass
    collector = StatsCollector(model)
    coverage: dict[str, dict[str, float]] = defaultdict(lambda: {"clips": 0, "seconds": 0.0, "tokens": 0})
    per_language: dict[str, list[Sample]] = defaultdict(list)
    try:
        samples = prepare(clips, model)
        for s in tqdm(samples, total=len(clips), desc="calibrate", unit="clip", disable=not progress):
            model.logits(s.tokens, model.embed_audio(s.mel))
            cov = coverage[s.clip.language]
            cov["clips"] += 1
            cov["seconds"] += min(float(s.clip.duration), CHUNK_LENGTH)  # what the model heard
            cov["tokens"] += int(s.tokens.shape[1])
            if len(per_language[s.clip.language]) < sensitivity_clips:  # all the round-robin can take
                per_language[s.clip.language].append(s)
    finally:
        collector.remove()
    torch.save(collector.tensors(percentile), out / STATS)
    # sensitivity clips: round-robin over languages, one clip of each before a second of any (fewer
    # clips than languages: the first languages of the manifest only)
    chosen: list[Sample] = []
    pools = [list(v) for v in per_language.values()]
    while len(chosen) < sensitivity_clips and any(pools):
        for pool in pools:
            if pool and len(chosen) < sensitivity_clips:
                chosen.append(pool.pop(0))
    sens = sensitivity(model, chosen, progress)
    atomic_write_json(
        out / SENSITIVITY,
        {
            "metric": (
                "relative L2 logit error vs FP32, teacher forcing, only this layer INT8 (dynamic; the "
                "decoder one token per call, the encoder per token)"
            ),
            **({"model_sha256": model_sha256} if model_sha256 else {}),
            "clips": [s.clip.id for s in chosen],
            "layers": sens,
            "ranking": sorted(sens, key=lambda n: -sens[n]),
        },
    )
    cov = {lang: {**v, "seconds": round(v["seconds"], 2)} for lang, v in sorted(coverage.items())}
    atomic_write_json(out / COVERAGE, cov)
    log.info(
        "calibrated %d clips in %d languages; most sensitive: %s",
        len(clips),
        len(cov),
        max(sens, key=sens.get),
    )
    return {"coverage": cov, "sensitivity": sens}


def calibrate_settings(params: dict, where: str = "params.yaml") -> tuple[int, float, int | None]:
    """Validate ``params.yaml`` ``calibrate:``: (sensitivity_clips, percentile, max_clips_per_language)."""
    cfg = section(params, "calibrate", where)
    allowed = {"sensitivity_clips", "percentile", "max_clips_per_language"}
    reject_unknown_keys(cfg, "calibrate", allowed, where)
    n = cfg.get("sensitivity_clips", 9)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ParamError(f"{where}: calibrate.sensitivity_clips={n!r}: expected an integer >= 1")
    p = cfg.get("percentile", 99.99)
    if isinstance(p, bool) or not isinstance(p, int | float) or not 50 <= p <= 100:
        raise ParamError(f"{where}: calibrate.percentile={p!r}: expected a number in [50, 100]")
    m = null_or_count(
        cfg.get("max_clips_per_language"), "calibrate.max_clips_per_language", "all clips", where
    )
    return n, float(p), m


def load_calibration(path: Path) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Read ``stats.pt`` and ``sensitivity.json`` of a calibration directory (a bad one: one-line error)."""
    stats_file, sens_file = path / STATS, path / SENSITIVITY
    for f in (stats_file, sens_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f}: missing; run {CALIBRATE_STAGE}")
    stats = load_tensors(stats_file, CALIBRATE_STAGE)
    sens = read_json(sens_file, CALIBRATE_STAGE)
    layers = sens.get("layers") if isinstance(sens, dict) else None
    if not isinstance(layers, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in layers.values()
    ):  # NaN (JSON takes it) would rank auto_keep_float_k's layers arbitrarily
        raise ModelSourceError(
            f"{sens_file}: no 'layers' mapping of layer names to finite numbers; rerun {CALIBRATE_STAGE}"
        )
    return stats, layers


def check_calibrated_on(calibration: Path, fused: Path) -> None:
    """Refuse statistics measured on another fused model: one with the same layer shapes (base.en
    against base, another seed) passes every shape check and sets other scales silently."""
    recorded = read_json(calibration / SENSITIVITY, CALIBRATE_STAGE).get("model_sha256")
    if recorded is not None and recorded != fused_digest(fused):
        raise ParamError(
            f"{calibration}: calibrated on another fused model than {fused} ({FUSED_WEIGHTS} has changed "
            f"since); rerun {CALIBRATE_STAGE}"
        )
