"""How far a per-language error-rate delta could move with other clips: a paired bootstrap interval.

At 20 clips a language one word is 0.4-0.6 pp of WER, so an INT8 model one word behind FP32 in one
language and one word ahead in another may be equally good. Resampling the clips with replacement,
the same draw for both models (paired), and recomputing the corpus delta each time gives the spread
of the delta over evaluation sets like this one (Bisani & Ney, "Bootstrap estimates for confidence
intervals in ASR performance evaluation", ICASSP 2004). The interval is reported beside each delta
(``wer_delta_ci_low/<l>``, ``wer_delta_ci_high/<l>``) and in a refusal's reason; the gate still
judges the delta itself. Below ``MIN_CLIPS`` clips the percentile bootstrap is too narrow to mean
anything (one clip gives a zero-width interval), so no interval is reported.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .scoring import score

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0  # the same report gives the same interval
MIN_CLIPS = 10


def clip_counts(clips: Iterable[dict], lang: str) -> dict[str, tuple[int, int]]:
    """``{clip id: (errors, reference length)}`` for one language, each clip scored on its own.

    The corpus figures are the sums of these: the scorer aligns each reference with its hypothesis.
    """
    out = {}
    for c in clips:
        if c["language"] == lang:
            if c["id"] in out:
                raise ValueError(f"clip id {c['id']!r} appears twice among the {lang} results")
            s = score([c["reference"]], [c["hypothesis"]], lang)
            out[c["id"]] = (s["errors"], s["reference_length"])
    return out


def delta_interval(
    base_errors: np.ndarray,
    cand_errors: np.ndarray,
    ref_lengths: np.ndarray,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float]:
    """The central ``level`` interval, in percentage points, of the paired bootstrap corpus delta."""
    n = len(ref_lengths)
    if n == 0 or not (len(base_errors) == len(cand_errors) == n):
        raise ValueError(
            f"delta_interval: {len(base_errors)}, {len(cand_errors)}, {n} clips: need equal, > 0"
        )
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    diff = (np.asarray(cand_errors) - np.asarray(base_errors))[draws].sum(axis=1)
    deltas = 100.0 * diff / np.asarray(ref_lengths)[draws].sum(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(deltas, [tail, 100.0 - tail])
    return float(low), float(high)


def delta_intervals(
    base_clips: list[dict], cand_clips: list[dict], metrics: dict[str, str]
) -> dict[str, float]:
    """``<metric>_delta_ci_low/<l>`` and ``..._high/<l>`` for every language of ``metrics``.

    ``metrics`` maps a language to its metric (``wer`` or ``cer``); a language is resampled over the
    clips both variants transcribed (at least ``MIN_CLIPS`` of them).
    """
    out: dict[str, float] = {}
    for lang, metric in sorted(metrics.items()):
        base, cand = clip_counts(base_clips, lang), clip_counts(cand_clips, lang)
        ids = sorted(base.keys() & cand.keys())
        if len(ids) < MIN_CLIPS:
            continue
        low, high = delta_interval(
            np.array([base[i][0] for i in ids]),
            np.array([cand[i][0] for i in ids]),
            np.array([base[i][1] for i in ids]),
        )
        out[f"{metric}_delta_ci_low/{lang}"], out[f"{metric}_delta_ci_high/{lang}"] = low, high
    return out
