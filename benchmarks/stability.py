"""How far do greedy transcripts and per-language error rates move when the model barely changes?

The accuracy gate compares INT8 with FP32 per language, to +0.5 pp. This measures what such a
comparison can resolve on a given split: the fused FP32 model is perturbed by amounts known to be
harmless on average and transcribed like the evaluate stage does, each variant in its own process.
For each it prints how many transcripts are identical to the unperturbed model's, the error-rate
delta per language (percentage points, with the change in errors) and the languages above +0.5 pp;
``--out`` adds each delta's 95 % paired-bootstrap interval and every transcript. Perturbations:

- ``fp16-weights`` / ``bf16-weights``: every Linear weight and the token embedding rounded to that
  float format (relative rounding at most 4.9e-4 / 3.9e-3), computed in FP32;
- ``int8-weights``: the same weights rounded to int8 with one scale per output row, as every INT8
  scheme stores them, computed in FP32 (weight rounding alone);
- ``noise-weights``: the same weights plus Gaussian noise as large as that rounding (standard
  deviation one int8 step / sqrt(12) per row, the root mean square of a rounding error), times
  ``--noise-scale``, one draw per ``--seeds`` value: a perturbation of int8's size in no particular
  direction, and how the deltas grow with its size;
- ``int8-activations``: FP32 weights, the input of every Linear and of the logits projection
  rounded as the dynamic scheme's per-token path does (each row divided by its absmax, then one
  asymmetric range, ``whisper_int8.cpu.activation_bits()`` bits: activation rounding alone);

plus any ``--model`` directory (e.g. ``models/int8``), compared with the same reference. A 45-clip
split gives a finer picture than the default 20 (build it outside the pipeline's outputs):

    sed 's/eval_per_lang: 20 /eval_per_lang: 45 /' params.yaml > /tmp/p45.yaml
    python stages/fetch_audio.py --params /tmp/p45.yaml --calibration /tmp/c45 --eval /tmp/e45 \\
        --summary /tmp/s45.json
    python benchmarks/stability.py --split /tmp/e45 --model models/int8 --out metrics/stability.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from whisper_int8.cli_common import run, stage_parser
from whisper_int8.cpu import activation_bits
from whisper_int8.eval_report import compare_results
from whisper_int8.evaluate import decode_options, evaluate_model_dir, evaluate_with_model
from whisper_int8.fsutil import atomic_write_json
from whisper_int8.model_dir import load_model_dir
from whisper_int8.params import load_params, section
from whisper_int8.quant.cpu import dequantize_weight, quantize_weight

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


def int8_noise(weight: Tensor, scale: float, generator: torch.Generator) -> Tensor:
    """Gaussian noise with ``scale`` times the RMS of int8 rounding (one step / sqrt(12) per row)."""
    step = weight.abs().amax(dim=1, keepdim=True) / 127.0  # quantize_weight's per-row scale
    return torch.randn(weight.shape, generator=generator) * step * (scale / 12**0.5)


def perturb(model: nn.Module, kind: str, seed: int = 0, scale: float = 1.0) -> int:
    """Apply ``kind`` to ``model`` (a fused FP32 Whisper) in place; returns how many layers it touched.

    ``seed`` and ``scale`` are for ``noise-weights`` only.
    """
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    embedding = model.decoder.token_embedding
    if kind == "int8-activations":
        bits = activation_bits()
        for m in layers:
            m.register_forward_pre_hook(lambda _m, args: (fake_quant_per_token(args[0], bits),))
        project = embedding.project
        embedding.project = lambda x: project(fake_quant_per_token(x, bits))
        return len(layers) + 1
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in [*layers, embedding]:
            w = m.weight
            if kind == "noise-weights":
                w.add_(int8_noise(w, scale, generator))
            elif kind == "int8-weights":
                w.copy_(dequantize_weight(*quantize_weight(w, per_channel=True)))
            else:
                w.copy_(w.to(torch.float16 if kind == "fp16-weights" else torch.bfloat16).float())
    return len(layers) + 1


def evaluate_perturbed(
    fused: str, kind: str | None, split: str, decode: dict[str, Any], seed: int = 0, scale: float = 1.0
) -> dict[str, Any]:
    """Load ``fused``, apply ``kind`` (None: as is) and evaluate it on ``split`` (runs in a worker)."""
    model = load_model_dir(fused)
    if kind:
        perturb(model, kind, seed, scale)
    return evaluate_with_model(model, Path(fused), Path(split), decode)


def _in_worker(func, *args: Any) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(func, *args).result()


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


def main(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    decode = decode_options(section(params, "evaluate", args.params), args.params)
    split, fused = str(args.split), str(args.fused)
    print(f"reference: {fused} on {split}", flush=True)
    ref = _in_worker(evaluate_perturbed, fused, None, split, decode)
    rows, transcripts = [], {"reference": ref["clips"]}
    variants = []
    for kind in args.perturb:
        if kind == "noise-weights":
            variants += [
                (
                    f"{kind} x{scale:g} seed {seed}",
                    (evaluate_perturbed, fused, kind, split, decode, seed, scale),
                )
                for scale in args.noise_scale
                for seed in args.seeds
            ]
        else:
            variants.append((kind, (evaluate_perturbed, fused, kind, split, decode)))
    variants += [(str(d), (evaluate_model_dir, str(d), split, decode)) for d in args.model]
    for name, call in variants:
        print(f"{name} ...", flush=True)
        res = _in_worker(*call)
        rows.append(row(name, ref, res))
        transcripts[name] = res["clips"]
    print(table(rows))
    if args.out:
        # the transcripts too: intervals, other groupings and clip-by-clip reading need no rerun
        atomic_write_json(
            args.out, {"split": split, "reference": fused, "variants": rows, "clips": transcripts}
        )


if __name__ == "__main__":
    parser = stage_parser(__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the usage example's layout
    parser.add_argument("--split", default="data/eval", type=Path, help="evaluation split (manifest.jsonl)")
    parser.add_argument("--fused", default="models/fused", type=Path, help="the FP32 reference to perturb")
    parser.add_argument(
        "--perturb", nargs="*", default=list(PERTURBATIONS), choices=PERTURBATIONS, help="default: all"
    )
    parser.add_argument(
        "--seeds", nargs="+", default=[0], type=int, help="noise-weights: one variant per seed (default: 0)"
    )
    parser.add_argument(
        "--noise-scale",
        nargs="+",
        default=[1.0],
        type=float,
        help="noise-weights: multiples of int8 rounding's RMS, one variant set each (default: 1)",
    )
    parser.add_argument("--model", nargs="*", default=[], type=Path, help="model directories to compare too")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    run(main, parser)
