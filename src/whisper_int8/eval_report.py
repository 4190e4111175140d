"""Turn the FP32 and INT8 evaluations into the comparison, the metric files and the charts.

``metrics/eval.json``        ``{"fp32": {...}, "int8": {...}, "comparison": {...}, "config": {...}}``
``metrics/per_language.csv`` one row per language: metric, clips, FP32 and INT8 error rate, delta and
                             its 95 % paired-bootstrap interval over clips, LID, reference length, FP32
                             and INT8 error counts
``metrics/latency.csv``      one row per clip: FP32 and INT8 latency (DVC plot)
``metrics/*.png``            the same two charts rendered with matplotlib
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .fsutil import atomic_outputs, json_text
from .significance import delta_intervals

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

BASELINE, CANDIDATE = "fp32", "int8"


def languages(metrics: dict[str, float]) -> list[str]:
    return sorted(k.split("/", 1)[1] for k in metrics if k.startswith("clips/"))


def error_key(metrics: dict[str, float], lang: str) -> str:
    return next(k for k in (f"wer/{lang}", f"cer/{lang}") if k in metrics)


def delta_key(key: str) -> str:
    """``wer/en`` -> ``wer_delta/en``: the comparison's name for the change of a variant's metric."""
    return key.replace("/", "_delta/", 1)


def shared_languages(base: dict[str, float], cand: dict[str, float]) -> list[str]:
    return sorted(set(languages(base)) & set(languages(cand)))


def judged_keys(base: dict[str, float], cand: dict[str, float]) -> list[str]:
    """The comparison's values the gate's thresholds apply to."""
    deltas = [delta_key(error_key(cand, lang)) for lang in shared_languages(base, cand)]
    return [*deltas, "error_rate_delta/overall", "speedup", "size_ratio"]


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)  # NaN: the gate refuses it


def read_eval_report(path: Path) -> dict[str, Any]:
    """``metrics/eval.json`` with what the gate judges; a truncated or hand-edited one is one line
    naming it (not a JSONDecodeError, KeyError or TypeError traceback, exit 1, which reads as a
    refusal)."""
    from .model_sources import ModelSourceError
    from .stage_files import read_json

    rerun = "the evaluate stage (dvc repro evaluate)"
    report = read_json(path, rerun)
    parts = (BASELINE, CANDIDATE, "comparison")
    if not isinstance(report, dict) or not all(isinstance(report.get(k), dict) for k in parts):
        raise ModelSourceError(f"{path}: not an evaluation report (no {'/'.join(parts)}); rerun {rerun}")
    base, cand, comp = (report[k] for k in parts)
    missing = [f"{CANDIDATE}.model_size_mb"] if "model_size_mb" not in cand else []
    for lang in shared_languages(base, cand):
        key = next((k for k in (f"wer/{lang}", f"cer/{lang}") if k in base or k in cand), f"wer/{lang}")
        missing += [f"{name}.{key}" for name, m in ((BASELINE, base), (CANDIDATE, cand)) if key not in m]
    if not missing:
        missing = [f"comparison.{k}" for k in judged_keys(base, cand) if k not in comp]
    if missing:
        raise ModelSourceError(f"{path}: no {', '.join(missing[:3])} in it; rerun {rerun}")
    odd = [f"{name}.{k}={v!r}" for name in parts for k, v in report[name].items() if not _real(v)]
    if odd:  # a metric written as null or text: every later comparison or log of it would fail
        raise ModelSourceError(f"{path}: {', '.join(odd[:3])}: not a number; rerun {rerun}")
    return report


def compare(base: dict[str, float], cand: dict[str, float]) -> dict[str, float]:
    """Deltas in percentage points per language and overall, speedup and size ratio of the candidate.

    Each overall rate is the mean over its own model's languages; where those differ (a language only
    one model has results for), the overall delta is the mean of the shared languages' deltas instead,
    not a difference of means over two language sets."""
    out: dict[str, float] = {}
    deltas = []
    for lang in shared_languages(base, cand):
        key = error_key(cand, lang)
        out[delta_key(key)] = delta = cand[key] - base[key]
        deltas.append(delta)
    if set(languages(base)) == set(languages(cand)) or not deltas:
        out["error_rate_delta/overall"] = cand["error_rate/overall"] - base["error_rate/overall"]
    else:
        out["error_rate_delta/overall"] = statistics.fmean(deltas)
    out["speedup"] = base["latency_p50_s"] / cand["latency_p50_s"]
    out["size_ratio"] = cand["model_size_mb"] / base["model_size_mb"]
    return out


def identical_transcripts(base_clips: list[dict], cand_clips: list[dict]) -> float:
    """Percent of the clips both models transcribed where the candidate's text is exactly the baseline's.

    Two INT8 models that differ only in float rounding move per-language error rates by a word or more
    at random (README "Per-token activation ranges"); the share of unchanged transcripts is the
    steadier measure of how closely INT8 decodes like FP32.
    """
    base = {c["id"]: c["hypothesis"] for c in base_clips}
    both = [c for c in cand_clips if c["id"] in base]
    return 100.0 * sum(c["hypothesis"] == base[c["id"]] for c in both) / len(both) if both else math.nan


def compare_results(base: dict[str, Any], cand: dict[str, Any]) -> dict[str, float]:
    """:func:`compare` of two evaluations (``{"metrics", "clips"}``), plus each delta's 95 % paired-bootstrap
    interval over the clips and ``identical_transcripts_pct``: the comparison eval.json reports."""
    bm, cm = base["metrics"], cand["metrics"]
    both = sorted(set(languages(bm)) & set(languages(cm)))
    out = compare(bm, cm)
    out.update(
        delta_intervals(
            base["clips"], cand["clips"], {lang: error_key(bm, lang).split("/")[0] for lang in both}
        )
    )
    out["identical_transcripts_pct"] = identical_transcripts(base["clips"], cand["clips"])
    return out


def deltas_for(variant: str, comparison: dict[str, float]) -> dict[str, float]:
    """The delta keys for a child run: the candidate's own, zeros for the baseline (same keys in both)."""
    keys = {k: v for k, v in comparison.items() if "_delta/" in k}
    return keys if variant == CANDIDATE else dict.fromkeys(keys, 0.0)


def per_language_rows(
    base: dict[str, float], cand: dict[str, float], comparison: dict[str, float]
) -> list[dict[str, Any]]:
    rows = []
    for lang in languages(base):
        key = error_key(base, lang)
        metric = key.split("/")[0]
        rows.append(
            {
                "language": lang,
                "metric": metric,
                "clips": int(base[f"clips/{lang}"]),
                BASELINE: round(base[key], 4),
                CANDIDATE: round(cand.get(key, math.nan), 4),
                "delta_pp": round(cand.get(key, math.nan) - base[key], 4),
                "delta_ci_low": round(comparison.get(f"{metric}_delta_ci_low/{lang}", math.nan), 4),
                "delta_ci_high": round(comparison.get(f"{metric}_delta_ci_high/{lang}", math.nan), 4),
                f"lid_{BASELINE}": round(base[f"lid_accuracy/{lang}"], 2),
                f"lid_{CANDIDATE}": round(cand.get(f"lid_accuracy/{lang}", math.nan), 2),
                "ref_length": base.get(f"ref_length/{lang}", math.nan),
                f"errors_{BASELINE}": base.get(f"errors/{lang}", math.nan),
                f"errors_{CANDIDATE}": cand.get(f"errors/{lang}", math.nan),
            }
        )
    return rows


def latency_rows(base_clips: list[dict], cand_clips: list[dict]) -> list[dict[str, Any]]:
    cand_by_id = {c["id"]: c for c in cand_clips}
    return [
        {
            "clip": i,
            "id": c["id"],
            "language": c["language"],
            BASELINE: round(c["latency_s"], 5),
            CANDIDATE: round(cand_by_id[c["id"]]["latency_s"], 5) if c["id"] in cand_by_id else "",
        }
        for i, c in enumerate(base_clips)
    ]


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _pyplot() -> ModuleType:
    """matplotlib's pyplot (headless), imported on the first chart, not with this module: the process
    that evaluate spawns per model imports this module too (``BASELINE``, ``CANDIDATE``), and pyplot's
    30 MB would sit in every ``peak_rss_mb`` it measures, FP32's and INT8's, though only the parent draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def error_rate_chart(rows: list[dict[str, Any]]) -> bytes:
    fig, ax = _pyplot().subplots(figsize=(max(5, 1.1 * len(rows) + 2), 3.5))
    xs = range(len(rows))
    for offset, variant in ((-0.2, BASELINE), (0.2, CANDIDATE)):
        ax.bar([x + offset for x in xs], [r[variant] for r in rows], width=0.4, label=variant.upper())
    ax.set_xticks(list(xs), [f"{r['language']} ({r['metric'].upper()})" for r in rows])
    ax.set_ylabel("error rate (%)")
    ax.set_title("Per-language error rate, FP32 vs INT8")
    ax.legend()
    return _png(fig)


def latency_chart(rows: list[dict[str, Any]]) -> bytes:
    fig, ax = _pyplot().subplots(figsize=(6, 3.5))
    for variant in (BASELINE, CANDIDATE):
        values = [r[variant] for r in rows if r[variant] != ""]
        ax.plot(range(len(values)), values, marker="o", label=variant.upper())
    ax.set_xlabel("clip")
    ax.set_ylabel("latency (s)")
    ax.set_title("Latency per clip (after warm-up)")
    ax.legend()
    return _png(fig)


def write_report(
    out_dir: Path | str, base: dict[str, Any], cand: dict[str, Any], config: dict[str, Any]
) -> dict:
    """Write every evaluation output under ``out_dir``, all or none; returns the eval.json content."""
    out_dir = Path(out_dir)
    bm, cm = base["metrics"], cand["metrics"]
    comparison = compare_results(base, cand)
    report = {BASELINE: bm, CANDIDATE: cm, "comparison": comparison, "config": config}
    lang_rows = per_language_rows(bm, cm, comparison)
    lat_rows = latency_rows(base["clips"], cand["clips"])
    # Everything is rendered and written to temp files before the first file is replaced: a chart that
    # fails to draw, or a disk that fills while writing transcripts.json, leaves the previous report
    # whole instead of new CSVs beside an old eval.json.
    files = {
        "per_language.csv": _csv(lang_rows).encode(),
        "latency.csv": _csv(lat_rows).encode(),
        "per_language.png": error_rate_chart(lang_rows),
        "latency.png": latency_chart(lat_rows),
        "transcripts.json": json_text({BASELINE: base["clips"], CANDIDATE: cand["clips"]}).encode(),
        "eval.json": json_text(report).encode(),  # last: DVC's metrics file marks a complete report
    }
    with atomic_outputs(files=[out_dir / name for name in files]) as (_, tmps):
        for tmp, data in zip(tmps, files.values(), strict=True):
            tmp.write_bytes(data)
    return report
