"""Paired bootstrap intervals of the per-language error-rate delta."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_int8.scoring import score
from whisper_int8.significance import MIN_CLIPS, clip_counts, delta_interval, delta_intervals


def test_identical_models_have_a_zero_interval():
    errors = np.array([0, 2, 1, 5])
    assert delta_interval(errors, errors, np.array([10, 12, 9, 20])) == (0.0, 0.0)


def test_a_model_worse_on_every_clip_is_worse_in_every_resample():
    base = np.array([1, 0, 2, 1, 0, 3])
    lengths = np.array([10, 8, 12, 9, 11, 10])
    low, high = delta_interval(base, base + 1, lengths)
    observed = 100 * 6 / lengths.sum()
    assert 0 < low <= observed <= high


def test_interval_brackets_the_observed_delta_and_is_reproducible():
    rng = np.random.default_rng(1)
    base, cand = rng.integers(0, 5, 30), rng.integers(0, 5, 30)
    lengths = rng.integers(5, 20, 30)
    low, high = delta_interval(base, cand, lengths)
    observed = 100 * (cand.sum() - base.sum()) / lengths.sum()
    assert low < observed < high
    assert delta_interval(base, cand, lengths) == (low, high)  # seeded
    assert delta_interval(base, cand, lengths, level=0.5) != (low, high)
    lo50, hi50 = delta_interval(base, cand, lengths, level=0.5)
    assert low < lo50 < hi50 < high  # a lower level is a narrower interval


def test_mismatched_or_empty_inputs_fail():
    with pytest.raises(ValueError, match="need equal"):
        delta_interval(np.array([1, 2]), np.array([1]), np.array([3, 4]))
    with pytest.raises(ValueError, match="need equal"):
        delta_interval(np.array([]), np.array([]), np.array([]))


def _clip(i: int, lang: str, ref: str, hyp: str) -> dict:
    return {"id": f"{lang}-{i}", "language": lang, "reference": ref, "hypothesis": hyp}


def test_per_clip_counts_sum_to_the_corpus_score():
    refs = ["the cat sat on the mat", "hello there", "one two three four"]
    hyps = ["the cat sat on a mat", "hello there friend", "one three four"]
    counts = clip_counts(
        [_clip(i, "en", r, h) for i, (r, h) in enumerate(zip(refs, hyps, strict=True))], "en"
    )
    corpus = score(refs, hyps, "en")
    assert (
        sum(e for e, _ in counts.values())
        == corpus["substitutions"] + corpus["deletions"] + corpus["insertions"]
    )
    assert sum(n for _, n in counts.values()) == corpus["reference_length"]


def test_delta_intervals_pair_clips_by_id_per_language():
    n = MIN_CLIPS
    base = [_clip(i, "en", "a b c d", "a b c d") for i in range(n)]
    base += [_clip(i, "zh", "你好世界", "你好世界") for i in range(n)] + [
        _clip(0, "de", "ein zwei", "ein zwei")
    ]
    cand = [_clip(i, "en", "a b c d", "a b x d") for i in reversed(range(n))]  # another order
    cand += [_clip(i, "zh", "你好世界", "你好世界") for i in range(n)] + [_clip(0, "de", "ein zwei", "ein")]
    out = delta_intervals(base, cand, {"en": "wer", "zh": "cer", "de": "wer"})
    assert out["wer_delta_ci_low/en"] == out["wer_delta_ci_high/en"] == pytest.approx(25.0)
    assert out["cer_delta_ci_low/zh"] == out["cer_delta_ci_high/zh"] == 0.0
    assert "wer_delta_ci_low/de" not in out  # one clip: no interval worth the name
    with pytest.raises(ValueError, match="appears twice"):
        delta_intervals(base + base[:1], cand, {"en": "wer"})


def test_a_base_of_another_length_fails():
    with pytest.raises(ValueError, match="need equal"):
        delta_interval(np.array([1]), np.array([1, 2]), np.array([3, 4]))


def test_a_delta_the_same_on_every_clip_is_the_same_in_every_resample():
    """A resample's delta is its extra errors over its own words: clips of any length, each 10 pp worse,
    are 10 pp worse in every resample (not over the whole split's word count)."""
    lengths = np.array([10, 20, 50, 100, 30, 40, 60, 70, 80, 90])
    assert delta_interval(np.zeros(10, int), lengths // 10, lengths) == pytest.approx((10.0, 10.0))


def test_the_default_interval_is_the_95_percent_one_the_refusal_names():
    rng = np.random.default_rng(1)
    base, cand, lengths = rng.integers(0, 5, 30), rng.integers(0, 5, 30), rng.integers(5, 20, 30)
    assert delta_interval(base, cand, lengths) == delta_interval(base, cand, lengths, level=0.95)


def test_every_clip_can_be_drawn():
    """One error more on the first or the last clip alone shows in the interval's upper end."""
    for worse in (0, MIN_CLIPS - 1):
        cand = np.zeros(MIN_CLIPS, int)
        cand[worse] = 1
        low, high = delta_interval(np.zeros(MIN_CLIPS, int), cand, np.full(MIN_CLIPS, 10))
        assert low == 0.0 < high, worse


def test_a_clip_only_one_model_transcribed_is_left_out():
    """The pairs are the clips both variants transcribed: one in a single variant's results is left out."""
    base = [_clip(i, "en", "a b c d", "a b c d") for i in range(MIN_CLIPS + 1)]
    cand = [_clip(i, "en", "a b c d", "a b x d") for i in range(1, MIN_CLIPS + 2)]
    out = delta_intervals(base, cand, {"en": "wer"})
    assert out["wer_delta_ci_low/en"] == out["wer_delta_ci_high/en"] == pytest.approx(25.0)
