"""How far do greedy transcripts and per-language error rates move when the model barely changes?

The accuracy gate compares INT8 with FP32 per language, to +0.5 pp. This measures what such a
comparison can resolve on a given split: the fused FP32 model is perturbed by amounts known to be
harmless on average and transcribed like the evaluate stage does, each variant in its own process.
For each it prints how many transcripts are identical to the unperturbed model's, the error-rate
delta per language (percentage points, with the change in errors) and the languages above +0.5 pp;
``--out`` adds each delta's 95 % paired-bootstrap interval and every transcript. Perturbations:

- ``fp16-weights`` / ``bf16-weights``: every Linear weight and the token embedding rounded to that
  float format (relative rounding at most 4.9e-4 / 3.9e-3), computed in FP32;
- ``int8-weights``: the same weights rounded to int8 with one scale per output row, as the INT8
  schemes store them (``--weight-bits``: 8, -127..127, as the figures in docs/performance.md were
  measured; 7, -64..64, as ``quant.weight_bits``' default), computed in FP32 (weight rounding alone);
- ``noise-weights``: the same weights plus Gaussian noise as large as that rounding (standard
  deviation one int8 step / sqrt(12) per row, the root mean square of a rounding error), times
  ``--noise-scale``, one draw per ``--seeds`` value: a perturbation of int8's size in no particular
  direction, and how the deltas grow with its size;
- ``int8-activations``: FP32 weights, the input of every Linear and of the logits projection
  rounded as the dynamic scheme's per-token path does (each row divided by its absmax, then one
  asymmetric range, the bits ``whisper_int8.cpu.activation_bits`` gives beside ``--weight-bits``
  weights on this CPU: activation rounding alone);

plus any ``--model`` directory (e.g. ``models/int8``), compared with the same reference.

``--teacher-forced`` skips decoding: every variant reads each clip's reference text (teacher forcing)
and the script prints, per language, the mean KL divergence of its next-token distributions from
FP32's and how many of its most likely tokens differ from FP32's. This measures the size of a
perturbation without greedy decoding's all-or-nothing flips, at about half a second a clip (one
FP32-sized forward pass), so two rounding schemes can be compared on more clips than a transcript
run affords. Where that leaves Russian: ``docs/performance.md``, "Int8 against noise of its size".

A 45-clip split gives a finer picture than the default 20 (build it outside the pipeline's outputs).
Evaluation clips are drawn before calibration clips in one seeded order, so its clips 21-45 include
the texts ``models/int8`` was calibrated on: drop those before comparing.

    sed 's/eval_per_lang: 20 /eval_per_lang: 45 /' params.yaml > /tmp/p45.yaml
    python stages/fetch_audio.py --params /tmp/p45.yaml --calibration /tmp/c45 --eval /tmp/e45 \\
        --summary /tmp/s45.json
    python -c 'import json, pathlib
    m = pathlib.Path("/tmp/e45/manifest.jsonl"); rows = [r for r in m.read_text().split("\\n") if r]
    seen = {json.loads(r)["text"] for r in open("data/calibration/manifest.jsonl")}
    m.write_text("".join(r + "\\n" for r in rows if json.loads(r)["text"] not in seen))'
    python benchmarks/stability.py --split /tmp/e45 --model models/int8 --out metrics/stability.json
"""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _inputs import require_activation_bits, require_model_dir, require_out_file, split_clips
from torch import Tensor, nn
from whisper.model import ModelDimensions
from whisper.tokenizer import get_tokenizer

from whisper_int8.audio import first_per_language, read_manifest
from whisper_int8.calibrate import Sample, prepare
from whisper_int8.cli_common import run, stage_parser
from whisper_int8.cpu import activation_bits
from whisper_int8.eval_report import compare_results
from whisper_int8.evaluate import evaluate_model_dir, evaluate_with_model, in_fresh_process
from whisper_int8.fsutil import atomic_write_json
from whisper_int8.fuse import FUSED_WEIGHTS, fused_skeleton
from whisper_int8.model_dir import activation_bits_of, load_model_dir
from whisper_int8.model_sources import ModelSourceError
from whisper_int8.params import ParamError, load_params, positive_int, section
from whisper_int8.quant.convert import EMBEDDING
from whisper_int8.quant.cpu import dequantize_weight, quantize_weight, weight_scale
from whisper_int8.stage_files import FUSE_STAGE, read_json
from whisper_int8.transcribe import decode_options

PERTURBATIONS = ("fp16-weights", "bf16-weights", "int8-weights", "noise-weights", "int8-activations")
LIMIT_PP = 0.5


def fake_quant_per_token(x: Tensor, bits: int) -> Tensor:
    """``x`` rounded as ``quant.cpu.linear_dynamic(per_token=True)`` feeds fbgemm, back in float.

    The same steps: each row divided by its absmax, one range chosen by PyTorch's own dynamic rule
    (the zero point of a range exactly [-1, 1] is a tie whose side only that rule knows), then
    fbgemm's quantizer.
    """
    s = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg()).clamp_min(1e-12)
    u = x / s
    scale, zero = torch._choose_qparams_per_tensor(u, bits == 7)
    return torch.quantize_per_tensor(u, scale, zero, torch.quint8).dequantize() * s


def int8_noise(weight: Tensor, scale: float, generator: torch.Generator, bits: int = 8) -> Tensor:
    """Gaussian noise with ``scale`` times the RMS of int8 rounding (one step / sqrt(12) per row), for
    weights of ``bits`` bits."""
    step = weight_scale(weight, per_channel=True, bits=bits)[:, None]
    return torch.randn(weight.shape, generator=generator) * step * (scale / 12**0.5)


def check_layers(names: Iterable[str], layers: Iterable[str]) -> None:
    """Raise (ParamError: a user error) naming the first glob of ``layers`` that matches none of the
    Linear layer ``names`` nor the token embedding."""
    names = [*names, EMBEDDING]
    for glob in layers:
        if not any(fnmatch.fnmatch(n, glob) for n in names):
            raise ParamError(
                f"--layers {glob!r} matches no Linear layer nor {EMBEDDING}; give globs of module names "
                f"such as {names[0]}"
            )


def linear_names(model: nn.Module) -> list[str]:
    """The names of the float Linear layers of ``model``: what ``--layers`` globs can select."""
    return [n for n, m in model.named_modules() if type(m) is nn.Linear]


def reference_linear_names(fused: str) -> list[str]:
    """:func:`linear_names` of the model in directory ``fused``, cheaply: a fused directory's skeleton
    (built from its card, no weights read, no memory touched) has the very modules its loaded model has;
    any other directory is loaded."""
    root = Path(fused)
    if (root / FUSED_WEIGHTS).is_file():
        card = read_json(root / "model_card.json", FUSE_STAGE)
        try:
            dims = ModelDimensions(**card["dims"])
        except (TypeError, KeyError) as e:
            raise ModelSourceError(
                f"{root / 'model_card.json'}: no valid dims ({e}); rerun {FUSE_STAGE}"
            ) from None
        return linear_names(fused_skeleton(dims))
    return linear_names(load_model_dir(root))


def selected(model: nn.Module, layers: tuple[str, ...] = ()) -> tuple[list[nn.Linear], bool]:
    """The float Linear layers whose names match a glob of ``layers``, and whether the token
    embedding (``decoder.token_embedding``: the lookup and the logits projection) does; no globs: all.

    A glob matching nothing is an error, so a typo cannot pass for a layer that rounding leaves alone.
    """
    named = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    if not layers:
        return [m for _, m in named], True
    check_layers((n for n, _ in named), layers)
    hit = [m for n, m in named if any(fnmatch.fnmatch(n, g) for g in layers)]
    return hit, any(fnmatch.fnmatch(EMBEDDING, g) for g in layers)


def perturb(
    model: nn.Module,
    kind: str,
    seed: int = 0,
    scale: float = 1.0,
    layers: tuple[str, ...] = (),
    weight_bits: int = 8,
) -> int:
    """Apply ``kind`` to ``model`` (a fused FP32 Whisper) in place; returns how many layers it touched.

    ``layers``: glob patterns of the layers to perturb (:func:`selected`; none: every one). ``seed``
    and ``scale`` are for ``noise-weights`` only; ``weight_bits`` sets the int8 step of the weight
    perturbations and, through :func:`activation_bits`, the activation bits.
    """
    linears, with_embedding = selected(model, layers)
    embedding = model.decoder.token_embedding
    if kind == "int8-activations":
        bits = activation_bits(weight_bits)
        for m in linears:
            m.register_forward_pre_hook(lambda _m, args: (fake_quant_per_token(args[0], bits),))
        if with_embedding:
            project = embedding.project
            embedding.project = lambda x: project(fake_quant_per_token(x, bits))
        return len(linears) + with_embedding
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in [*linears, embedding] if with_embedding else linears:
            w = m.weight
            if kind == "noise-weights":
                w.add_(int8_noise(w, scale, generator, weight_bits))
            elif kind == "int8-weights":
                w.copy_(dequantize_weight(*quantize_weight(w, per_channel=True, bits=weight_bits)))
            elif kind in ("fp16-weights", "bf16-weights"):
                w.copy_(w.to(torch.float16 if kind == "fp16-weights" else torch.bfloat16).float())
            else:
                raise ValueError(f"unknown perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}")
    return len(linears) + with_embedding


@torch.no_grad()
def next_token_logprobs(model: nn.Module, samples: list[Sample]) -> Iterator[Tensor]:
    """Per sample, the log-probabilities ``model`` gives each text token and the end, reference fed in.

    Positions before the no-timestamps token predict the forced start-of-transcript tokens: left out.
    ``prepare`` feeds no end-of-text, so the last position (the last text token's) predicts the end
    and is kept. One sample at a time (a row is 51,865 floats).
    """
    tok = get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
    for s in samples:
        first = s.tokens[0].tolist().index(tok.no_timestamps)
        logits = model.logits(s.tokens, model.embed_audio(s.mel))[0, first:]
        yield logits.float().log_softmax(-1)


def divergence(
    ref: Iterable[Tensor], got: Iterable[Tensor], languages: list[str]
) -> dict[str, dict[str, float]]:
    """Per language: positions, their summed and mean KL(reference || variant), and differing argmaxes."""
    out: dict[str, dict[str, float]] = {}
    for r, g, lang in zip(ref, got, languages, strict=True):
        kl = (r.exp() * (r - g)).sum(-1)
        d = out.setdefault(lang, {"tokens": 0, "kl_sum": 0.0, "flips": 0})
        d["tokens"] += int(kl.numel())
        d["kl_sum"] += float(kl.sum())
        d["flips"] += int((r.argmax(-1) != g.argmax(-1)).sum())
    return {lang: {**d, "kl_mean": d["kl_sum"] / d["tokens"]} for lang, d in sorted(out.items())}


def teacher_forced(
    fused: str, split: str, per_language: int | None, variants: list[Variant]
) -> list[dict[str, Any]]:
    """``--teacher-forced``: the divergence of every variant from the fused model, in this process.

    The reference's log-probabilities are kept (positions x vocabulary floats, about 0.8 GB for
    180 clips of base); each variant's are compared one sample at a time.
    """
    reference = load_model_dir(fused)
    samples = list(prepare(first_per_language(read_manifest(split), per_language), reference))
    languages = [s.clip.language for s in samples]
    ref = list(next_token_logprobs(reference, samples))
    del reference
    rows = []
    for variant in variants:
        per_lang = divergence(ref, next_token_logprobs(variant.load(fused), samples), languages)
        tokens = sum(d["tokens"] for d in per_lang.values())
        kl = sum(d["kl_sum"] for d in per_lang.values()) / tokens
        flips = sum(d["flips"] for d in per_lang.values())
        rows.append(
            {"variant": variant.name, "tokens": tokens, "kl_mean": kl, "flips": flips, "languages": per_lang}
        )
        print(f"{variant.name}: KL {kl:.5f}, {flips} of {tokens} tokens differ", flush=True)
    return rows


def tf_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per variant, mean KL from FP32 and the differing tokens, in all and per language."""
    langs = sorted(rows[0]["languages"])
    lines = [
        "| variant | KL mean | differing tokens | "
        + " | ".join(f"{lang}: KL (differing)" for lang in langs)
        + " |",
        "|---|---|---|" + "---|" * len(langs),
    ]
    for r in rows:
        cells = [f"{r['languages'][lang]['kl_mean']:.5f} ({r['languages'][lang]['flips']})" for lang in langs]
        lines.append(
            f"| {r['variant']} | {r['kl_mean']:.5f} | {r['flips']} / {r['tokens']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def row(name: str, ref: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    """Identical transcripts, per-language deltas, error counts, intervals and the languages over the limit.

    ``errors``: per language, the reference's and the variant's error counts and the reference length
    (words, or characters for CER); ``interval_pp``: the 95 % paired-bootstrap interval of the delta
    over the clips (``whisper_int8.significance``; languages with at least its ``MIN_CLIPS`` clips).
    """
    base, cand = ref["metrics"], res["metrics"]
    comp = compare_results(ref, res)
    deltas = {k.split("/")[1]: v for k, v in comp.items() if "_delta/" in k and not k.endswith("/overall")}
    errors = {
        lang: [base[f"errors/{lang}"], cand[f"errors/{lang}"], base[f"ref_length/{lang}"]]
        for lang in deltas
        if f"errors/{lang}" in base and f"errors/{lang}" in cand and f"ref_length/{lang}" in base
    }
    intervals = {
        k.split("/")[1]: [v, comp[k.replace("_ci_low/", "_ci_high/")]]
        for k, v in comp.items()
        if "_delta_ci_low/" in k
    }
    same = comp["identical_transcripts_pct"]
    return {
        "variant": name,
        "identical_pct": same,
        "identical": round(same * len(res["clips"]) / 100),
        "clips": len(res["clips"]),
        "delta_pp": deltas,
        "errors": errors,
        "interval_pp": intervals,
        "mean_delta_pp": comp["error_rate_delta/overall"],
        "over_limit": [lang for lang, d in deltas.items() if d > LIMIT_PP + 1e-9],
    }


def _cell(r: dict[str, Any], lang: str) -> str:
    """``+0.63 (+8)``: the delta in pp and, where known, in errors."""
    counts = r.get("errors", {}).get(lang)
    extra = f" ({counts[1] - counts[0]:+.0f})" if counts else ""
    return f"{r['delta_pp'][lang]:+.2f}{extra}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per variant, identical transcripts and each language's delta in pp (in errors)."""
    langs = sorted(rows[0]["delta_pp"])
    lines = [
        "| variant | identical | " + " | ".join(langs) + f" | mean | over +{LIMIT_PP} |",
        "|---|---|" + "---|" * (len(langs) + 2),
    ]
    for r in rows:
        cells = [_cell(r, lang) for lang in langs] + [f"{r['mean_delta_pp']:+.2f}"]
        lines.append(
            f"| {r['variant']} | {r['identical']} / {r['clips']} | "
            + " | ".join(cells)
            + f" | {', '.join(r['over_limit'])} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Variant:
    """One model to compare with the fused reference: a perturbation of it, or a model directory."""

    name: str
    kind: str | None = None  # a PERTURBATIONS entry
    model_dir: str | None = None
    seed: int = 0
    scale: float = 1.0
    layers: tuple[str, ...] = ()  # glob patterns of the perturbed layers (none: all)
    weight_bits: int = 8

    def load(self, fused: str) -> nn.Module:
        if self.model_dir:
            return load_model_dir(self.model_dir)
        if not self.kind:
            raise ValueError(f"variant {self.name!r}: give a perturbation kind or a model directory")
        model = load_model_dir(fused)
        perturb(model, self.kind, self.seed, self.scale, self.layers, self.weight_bits)
        return model


def variants_of(args: argparse.Namespace) -> list[Variant]:
    """The variants the command line asks for, in order: perturbations (per ``--layers`` group, noise
    per scale and seed), then models."""
    groups = [tuple(group.split(",")) for group in dict.fromkeys(args.layers)] or [()]
    out = []
    for kind in dict.fromkeys(args.perturb):  # a repeat would run the same variant twice, under one name
        for layers in groups:
            on = f" on {','.join(layers)}" if layers else ""
            if kind == "noise-weights":
                out += [
                    Variant(
                        f"{kind} x{scale:g} seed {seed}{on}",
                        kind,
                        seed=seed,
                        scale=scale,
                        layers=layers,
                        weight_bits=args.weight_bits,
                    )
                    for scale in dict.fromkeys(args.noise_scale or [1.0])  # a repeat would repeat a name
                    for seed in dict.fromkeys(args.seeds or [0])
                ]
            else:
                out.append(Variant(kind + on, kind, layers=layers, weight_bits=args.weight_bits))
    return out + [Variant(str(d), model_dir=str(d)) for d in dict.fromkeys(args.model)]


def evaluate_variant(variant: Variant, fused: str, split: str, decode: dict[str, Any]) -> dict[str, Any]:
    """Transcribe ``split`` with ``variant`` (runs in a worker, so peak memory and state are its own)."""
    if variant.model_dir:
        return evaluate_model_dir(variant.model_dir, split, decode)
    return evaluate_with_model(variant.load(fused), Path(fused), Path(split), decode)


def check_inputs(args: argparse.Namespace) -> list[Variant]:
    """The variants to compare (:func:`variants_of`) once every input is known good: a bad one stops
    here, before the reference is transcribed (minutes), in one line."""
    variants = variants_of(args)
    if not variants:
        raise ParamError("nothing to compare: give --perturb KIND or --model DIR")
    if args.layers and not args.perturb:
        raise ParamError("--layers selects what --perturb perturbs: give --perturb KIND too")
    if (args.seeds or args.noise_scale) and "noise-weights" not in args.perturb:
        raise ParamError(
            "--seeds and --noise-scale shape the noise-weights perturbation: add it to --perturb"
        )
    require_model_dir(args.fused, "--fused", "fused")  # perturb() finds its Linear layers fused
    for model_dir in args.model:
        require_model_dir(model_dir, "--model")
        activation_bits_of(model_dir)  # an INT8 one: a WHISPER_INT8_ACTIVATION_BITS it cannot run
    if "int8-activations" in args.perturb:
        require_activation_bits([args.weight_bits], option="--perturb int8-activations")
    require_out_file(args.out, "--out")
    split_clips(args.split)
    if args.layers:
        names = reference_linear_names(str(args.fused))
        for group in dict.fromkeys(args.layers):
            check_layers(names, group.split(","))
    return variants


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    decode = decode_options(section(params, "evaluate", args.params), args.params)
    split, fused = str(args.split), str(args.fused)
    variants = check_inputs(args)
    if args.teacher_forced is not None:
        rows = teacher_forced(fused, split, args.teacher_forced or None, variants)
        print(tf_table(rows))
        if args.out:
            atomic_write_json(args.out, {"split": split, "reference": fused, "teacher_forced": rows})
        return
    print(f"reference: {fused} on {split}", flush=True)
    ref = in_fresh_process(evaluate_variant, Variant("reference", model_dir=fused), fused, split, decode)
    rows, transcripts = [], {"reference": ref["clips"]}
    for variant in variants:
        print(f"{variant.name} ...", flush=True)
        res = in_fresh_process(evaluate_variant, variant, fused, split, decode)
        rows.append(row(variant.name, ref, res))
        transcripts[variant.name] = res["clips"]
    print(table(rows))
    if args.out:
        # the transcripts too: intervals, other groupings and clip-by-clip reading need no rerun
        atomic_write_json(
            args.out, {"split": split, "reference": fused, "variants": rows, "clips": transcripts}
        )


def seed(text: str) -> int:
    """argparse type: a seed torch.Generator takes (0 to 2**63 - 1)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer from 0 to 2**63 - 1")
    return value


def noise_scale(text: str) -> float:
    """argparse type: a finite multiple > 0 (nan gave a model of NaN weights)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = stage_parser(__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the usage example's layout
    parser.add_argument("--split", default="data/eval", type=Path, help="evaluation split (manifest.jsonl)")
    parser.add_argument("--fused", default="models/fused", type=Path, help="the FP32 reference to perturb")
    parser.add_argument(
        "--perturb", nargs="*", default=list(PERTURBATIONS), choices=PERTURBATIONS, help="default: all"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=seed, help="noise-weights: one variant per seed (default: 0)"
    )
    parser.add_argument(
        "--noise-scale",
        nargs="+",
        type=noise_scale,
        help="noise-weights: multiples of int8 rounding's RMS, one variant set each (default: 1)",
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        default=[],
        metavar="GLOBS",
        help="perturb only these layers: each argument is one group of comma-separated glob patterns of "
        "module names (decoder.token_embedding: the embedding and the logits projection), and every "
        "perturbation is run once per group (default: every layer at once)",
    )
    parser.add_argument(
        "--weight-bits",
        type=int,
        choices=(7, 8),
        default=8,
        help="int8 weight step of the weight perturbations and the activation bits beside them (default: 8, "
        "as docs/performance.md measured; 7: quant.weight_bits' default)",
    )
    parser.add_argument("--model", nargs="*", default=[], type=Path, help="model directories to compare too")
    parser.add_argument(
        "--teacher-forced",
        nargs="?",
        const=0,
        type=positive_int,
        metavar="N",
        help="no decoding: KL from FP32 and differing next tokens on the reference texts "
        "(the first N clips per language; no N: every clip)",
    )
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    return parser


if __name__ == "__main__":
    run(main, build_parser())
