"""The gate's thresholds, its champion comparison, and params validation (pure logic, no MLflow)."""

from __future__ import annotations

import json
import re

import pytest

from whisper_int8.gate import _over, check_against_champion, check_thresholds, gate_config
from whisper_int8.params import ParamError

from .eval_fixtures import report


def test_within_every_threshold_passes():
    d = check_thresholds(report({"en": 10.0, "zh": 20.0}, {"en": 10.3, "zh": 20.4}), gate_config({}))
    assert d.passed and d.status == "passed" and d.reasons == []
    assert d.metrics["wer/en"] == pytest.approx(10.3)
    assert d.metrics["cer_delta/zh"] == pytest.approx(0.4)
    assert d.metrics["speedup"] == pytest.approx(2.0)


def test_each_threshold_names_its_reason():
    rep = report({"en": 10.0, "zh": 20.0}, {"en": 11.0, "zh": 20.0}, speedup=0.8, size_ratio=0.9)
    d = check_thresholds(rep, gate_config({}))
    assert not d.passed and d.status == "failed"
    text = " | ".join(d.reasons)
    assert "wer/en +1.00 pp over FP32 (10.00 -> 11.00; 100 -> 110 errors in 1000 words)" in text
    assert "overall error rate" not in text  # 0.5 is within the 0.5 limit
    assert "speedup 0.80x below" in text
    assert "size ratio 0.900 above" in text
    assert "cer/zh" not in text


def test_a_delta_just_over_its_limit_reads_as_over():
    """Spanish's one word in 199 is +0.5025 pp: '+0.50 pp over FP32 ..., limit 0.5 pp' read as a tie."""
    rep = report({"en": 10.0}, {"en": 10.503})
    assert check_thresholds(rep, gate_config({})).reasons[0].startswith("wer/en +0.503 pp over FP32")
    assert _over(0.50004, 0.5) == "+0.50004" and _over(0.75, 0.5) == "+0.75"


@pytest.mark.parametrize("limit", [0.5, 0.0, -0.5])
def test_a_delta_exactly_at_its_limit_passes_and_one_just_over_fails(limit):
    """The boundary, for every kind of limit (a negative one asks INT8 to improve on FP32)."""
    cfg = gate_config({"max_wer_delta_pp": limit, "max_overall_wer_delta_pp": 100})
    assert check_thresholds(report({"en": 10.0}, {"en": 10.0 + limit}), cfg).passed
    refused = check_thresholds(report({"en": 10.0}, {"en": 10.0 + limit + 0.001}), cfg)
    assert not refused.passed and refused.reasons[0].startswith(f"wer/en {limit + 0.001:+.3f} pp over FP32")
    at = {"max_overall_wer_delta_pp": limit, "max_wer_delta_pp": 100}
    assert check_thresholds(
        report({"en": 10.0, "de": 10.0}, {"en": 10.0 + limit, "de": 10.0 + limit}), gate_config(at)
    ).passed
    over = report({"en": 10.0, "de": 10.0}, {"en": 10.0 + limit + 0.002, "de": 10.0 + limit + 0.002})
    assert check_thresholds(over, gate_config(at)).reasons[0].startswith("overall error rate")


@pytest.mark.parametrize("key", ["wer_delta/en", "error_rate_delta/overall", "speedup", "size_ratio"])
def test_a_metric_that_is_not_a_number_fails_the_gate(key):
    """Regression: every comparison with NaN is false, so a NaN passed every threshold and promote
    moved the alias to it."""
    rep = report({"en": 10.0}, {"en": 10.0})
    rep["comparison"][key] = float("nan")
    d = check_thresholds(rep, gate_config({}))
    assert not d.passed and d.reasons == [
        f"{key} is nan, not a measured number: rerun evaluate (dvc repro evaluate)"
    ]
    worse = check_against_champion({"wer/en": float("nan")}, {"wer/en": 10.0}, 0.0, "v1")
    assert worse == ["wer/en is nan, not a measured number: rerun evaluate (dvc repro evaluate)"]


def test_refusal_counts_characters_for_cer_and_tolerate_older_reports():
    rep = report({"en": 10.0, "zh": 20.0}, {"en": 10.0, "zh": 21.0})
    assert (
        "(20.00 -> 21.00; 200 -> 210 errors in 1000 characters)"
        in check_thresholds(rep, gate_config({})).reasons[0]
    )
    for variant in ("fp32", "int8"):  # eval.json written before the counts existed
        rep[variant] = {k: v for k, v in rep[variant].items() if not k.startswith(("errors/", "ref_length/"))}
    assert (
        "cer/zh +1.00 pp over FP32 (20.00 -> 21.00), limit"
        in check_thresholds(rep, gate_config({})).reasons[0]
    )


def test_refusal_gives_the_bootstrap_interval_when_the_report_has_it():
    rep = report({"en": 10.0}, {"en": 11.2})
    rep["comparison"].update({"wer_delta_ci_low/en": -0.4, "wer_delta_ci_high/en": 2.81})
    reason = check_thresholds(rep, gate_config({})).reasons[0]
    assert reason.endswith("errors in 1000 words; 95 % interval over clips -0.40 to +2.81 pp), limit 0.5 pp")


def test_per_language_override_and_overall_limit():
    rep = report({"en": 10.0, "zh": 20.0}, {"en": 10.0, "zh": 21.0})
    assert not check_thresholds(rep, gate_config({})).passed
    relaxed = gate_config({"max_wer_delta_pp_by_language": {"zh": 1.5}, "max_overall_wer_delta_pp": 0.6})
    assert check_thresholds(rep, relaxed).passed


@pytest.mark.parametrize(
    ("by_lang", "match"),
    [
        ({False: 1.5}, r"False is not a Whisper language code \(a YAML boolean; Norwegian is no"),
        ({"russian": 1.5}, "'russian' is not a Whisper language code"),
        ({"ru": None}, r"gate\.max_wer_delta_pp_by_language\.ru=None must be a number"),
        (["ru"], "must map language codes to numbers"),
    ],
)
def test_a_per_language_override_that_cannot_apply_is_refused(by_lang, match):
    with pytest.raises(ParamError, match=match):
        gate_config({"max_wer_delta_pp_by_language": by_lang})
    assert gate_config({"max_wer_delta_pp_by_language": {"no": 1.0}}).max_wer_delta_pp_by_language == {
        "no": 1.0
    }


def test_missing_language_fails_when_required():
    rep = report({"en": 10.0}, {"en": 10.0})
    rep["config"]["languages"] = ["en", "de"]
    d = check_thresholds(rep, gate_config({}))
    assert not d.passed and "de" in d.reasons[0]
    assert check_thresholds(rep, gate_config({"require_languages": False})).passed
    assert not check_thresholds(rep, gate_config({"require_languages": ["en", "fr"]})).passed


def test_champion_comparison_on_accuracy_only():
    champ = {"wer/en": 10.0, "error_rate/overall": 10.0, "speedup": 3.0}
    better = {"wer/en": 9.0, "error_rate/overall": 9.0, "speedup": 1.1}
    worse = {"wer/en": 10.5, "error_rate/overall": 10.5, "speedup": 5.0}
    assert check_against_champion(better, champ, 0.0, "v1") == []
    reasons = check_against_champion(worse, champ, 0.0, "v1")
    assert len(reasons) == 2 and "champion v1" in reasons[0]
    assert check_against_champion(worse, champ, 1.0, "v1") == []


@pytest.mark.parametrize(
    "section, key",
    [
        ({"max_wer_delta_pp": "half"}, "gate.max_wer_delta_pp"),
        ({"fail_on_reject": "yes"}, "gate.fail_on_reject"),
        ({"fail_on_reject": 1}, "gate.fail_on_reject"),
        # NaN compares false with every delta: a NaN limit would pass any model
        ({"max_wer_delta_pp": float("nan")}, "gate.max_wer_delta_pp=nan must be a number"),
        ({"max_wer_delta_pp_by_language": {"en": float("nan")}}, "by_language.en=nan must be a number"),
        ({"require_languages": "en"}, "gate.require_languages"),
        ({"max_wer_delta_pp_by_language": [1]}, "gate.max_wer_delta_pp_by_language"),
        ({"min_sped_up": 1}, r"unknown gate key\(s\) \['min_sped_up'\]; allowed: "),
    ],
)
def test_bad_params_name_the_key(section, key):
    with pytest.raises(ParamError, match=key.replace(".", r"\.")):
        gate_config(section)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"require_languages": ["en", "EN", "xx"]}, "gate.require_languages: EN, xx not a language Whisper "
         "knows (codes are lower case: en)"),
        ({"require_languages": ["en", "en"]}, "gate.require_languages: en listed more than once"),
        ({"max_size_ratio": -1}, "gate.max_size_ratio=-1 must be above 0 (.inf: no limit)"),
        ({"max_size_ratio": 0}, "gate.max_size_ratio=0 must be above 0"),
        ({"min_speedup": -0.5}, "gate.min_speedup=-0.5 must be >= 0 (0: no limit)"),
    ],
)  # fmt: skip
def test_a_gate_that_could_never_pass_is_refused_before_anything_is_registered(section, message):
    """Regression: these passed validation; promote registered a version and then refused it
    ("languages without results: EN, xx", "size ratio 0.294 above max_size_ratio -1.0")."""
    with pytest.raises(ParamError, match=re.escape(f"params.yaml: {message}")):
        gate_config(section)
    assert gate_config({"max_size_ratio": float("inf"), "min_speedup": 0}).min_speedup == 0


def test_a_language_too_small_for_its_limit_gets_a_note_that_decides_nothing():
    rep = report({"en": 10.0, "zh": 20.0}, {"en": 10.0, "zh": 20.0})
    assert check_thresholds(rep, gate_config({})).notes == []  # 1000 words: one error is 0.1 pp
    rep["fp32"]["ref_length/en"] = 199  # one error: 0.5025 pp
    d = check_thresholds(rep, gate_config({}))
    assert d.passed and d.as_dict()["notes"] == d.notes
    (note,) = d.notes
    assert note.startswith("wer/en: one error is 0.503 pp of its 199 words, above the 0.5 pp limit")
    assert check_thresholds(rep, gate_config({"max_wer_delta_pp_by_language": {"en": 0.6}})).notes == []
    assert check_thresholds(rep, gate_config({"max_wer_delta_pp": 0.0})).notes == []  # no split resolves 0
    rep["fp32"]["ref_length/zh"] = 150
    assert (
        "cer/zh: one error is 0.667 pp of its 150 characters"
        in check_thresholds(rep, gate_config({})).notes[1]
    )


def test_an_evaluation_capped_per_language_is_never_promoted():
    """`evaluate.max_clips_per_language` makes a quick look; its model must not become the champion,
    and the note says which key gives the split back."""
    rep = report({"en": 10.0, "zh": 20.0}, {"en": 10.0, "zh": 20.0})
    rep["fp32"]["ref_length/en"] = 12
    assert check_thresholds(rep, gate_config({})).passed
    assert (
        check_thresholds(rep, gate_config({}))
        .notes[0]
        .endswith("evaluate more clips (audio.eval_per_lang) for a limit the split can resolve")
    )
    rep["config"]["max_clips_per_language"] = 1
    d = check_thresholds(rep, gate_config({}))
    assert not d.passed and d.reasons == [
        "evaluated on the first 1 clip(s) of each language only (evaluate.max_clips_per_language); set it "
        "to null to evaluate the whole split and promote"
    ]
    assert "evaluate more clips (evaluate.max_clips_per_language: null)" in d.notes[0]


def test_every_threshold_set_in_params_is_the_one_applied():
    """A value in params.yaml's gate section moves the decision (not the built-in default)."""
    rep = report({"en": 10.0}, {"en": 10.8}, speedup=1.5, size_ratio=0.5)
    assert not check_thresholds(rep, gate_config({})).passed  # +0.8 pp over the default 0.5
    loose = {"max_wer_delta_pp": 1.0, "max_overall_wer_delta_pp": 1.0}
    assert check_thresholds(rep, gate_config(loose)).passed
    for key, value, reason in (
        ("min_speedup", 2.0, "speedup 1.50x below min_speedup 2.0x"),
        ("max_size_ratio", 0.4, "size ratio 0.500 above max_size_ratio 0.4"),
        ("max_overall_wer_delta_pp", 0.7, "overall error rate +0.80 pp"),
    ):
        d = check_thresholds(rep, gate_config({**loose, key: value}))
        assert not d.passed and reason in " | ".join(d.reasons), (key, d.reasons)
    champ = {"wer/en": 10.5, "error_rate/overall": 10.5}
    cand = {"wer/en": 10.8, "error_rate/overall": 10.8}
    assert check_against_champion(cand, champ, gate_config({}).champion_tolerance_pp, "v1")
    assert not check_against_champion(
        cand, champ, gate_config({"champion_tolerance_pp": 0.5}).champion_tolerance_pp, "v1"
    )


def test_a_refusal_never_prints_a_number_that_looks_within_the_limit():
    """Regression (a review): a speedup of 0.998 read "1.00x below min_speedup 1.0x", a size ratio of
    0.6004 "0.600 above max_size_ratio 0.6", and a champion comparison "11.79 worse than (11.79)"."""
    rep = report({"en": 10.0}, {"en": 10.0}, speedup=0.998, size_ratio=0.6004)
    d = check_thresholds(rep, gate_config({"max_size_ratio": 0.6}))
    assert d.reasons == [
        "speedup 0.998x below min_speedup 1.0x",
        "size ratio 0.6004 above max_size_ratio 0.6",
    ]
    (reason,) = check_against_champion(
        {"error_rate/overall": 11.7912}, {"error_rate/overall": 11.7895}, 0.0, "v3"
    )
    assert reason.startswith("error_rate/overall 11.791 worse than champion v3 (11.790)"), reason
    (reason,) = check_against_champion({"wer/en": 10.8}, {"wer/en": 10.5}, 0.0, "v1")
    assert reason.startswith("wer/en 10.80 worse than champion v1 (10.50)"), reason


def test_an_eval_json_the_gate_cannot_judge_is_one_line_naming_it(tmp_path):
    from whisper_int8.eval_report import read_eval_report
    from whisper_int8.model_sources import ModelSourceError

    path = tmp_path / "eval.json"
    good = report({"en": 10.0, "zh": 20.0}, {"en": 10.0, "zh": 20.0})
    path.write_text(json.dumps(good))
    assert read_eval_report(path) == good
    no_zh = {**good, "comparison": {k: v for k, v in good["comparison"].items() if k != "cer_delta/zh"}}
    int8 = good["int8"]
    no_cer = {**good, "int8": {k: v for k, v in int8.items() if k != "cer/zh"}}
    no_size = {**good, "int8": {k: v for k, v in int8.items() if k != "model_size_mb"}}
    cases = [
        (json.dumps(good)[:300], r"unreadable \(.*\); rerun the evaluate stage"),
        ("[1, 2]", r"not an evaluation report \(no fp32/int8/comparison\)"),
        (
            json.dumps({**good, "comparison": {"speedup": 2.0}}),
            r"no comparison.wer_delta/en, comparison.cer_del",
        ),
        (
            json.dumps(no_zh),
            r"no comparison.cer_delta/zh in it; rerun the evaluate stage \(dvc repro evaluate\)$",
        ),
        (json.dumps(no_cer), r"no int8.cer/zh in it"),
        (json.dumps(no_size), r"no int8.model_size_mb in it"),
        # jq writes NaN as null: every comparison and MLflow log of it was a TypeError traceback
        (
            json.dumps({**good, "comparison": {**good["comparison"], "speedup": None}}),
            r"comparison.speedup=None: not a",
        ),
        (json.dumps({**good, "fp32": {**good["fp32"], "wer/en": "10"}}), r"fp32.wer/en='10': not a number"),
    ]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(ModelSourceError, match=rf"^{re.escape(str(path))}: {message}"):
            read_eval_report(path)


LIMITS = ["max_wer_delta_pp", "max_overall_wer_delta_pp", "min_speedup", "max_size_ratio"]


@pytest.mark.parametrize("key", [*LIMITS, "champion_tolerance_pp"])
@pytest.mark.parametrize("value", [True, float("nan")])
def test_a_threshold_read_as_a_boolean_or_nan_is_refused(key, value):
    """YAML's ``yes`` is True (an int in Python: a limit of 1) and ``.nan`` makes every comparison false,
    so a NaN limit would pass any candidate; both name the key instead."""
    with pytest.raises(ParamError, match=re.escape(f"gate.{key}={value!r} must be a number")):
        gate_config({key: value})
    with pytest.raises(ParamError, match=re.escape(f"gate.max_wer_delta_pp_by_language.en={value!r}")):
        gate_config({"max_wer_delta_pp_by_language": {"en": value}})


def test_an_empty_per_language_override_section_is_no_override():
    """``max_wer_delta_pp_by_language:`` left blank in params.yaml is YAML null: no override, no error."""
    assert gate_config({"max_wer_delta_pp_by_language": None}).max_wer_delta_pp_by_language == {}


def test_a_delta_at_its_limit_that_floats_round_up_passes():
    """Five errors more in 1000 words is +0.5 pp, which floats compute as 1.1 - 0.6 = 0.5000000000000001:
    at the limit, so it passes, per language and overall."""
    rep = report({"en": 0.6}, {"en": 1.1})
    assert rep["comparison"]["wer_delta/en"] > 0.5 and rep["comparison"]["error_rate_delta/overall"] > 0.5
    assert check_thresholds(rep, gate_config({"max_overall_wer_delta_pp": 100})).passed
    assert check_thresholds(rep, gate_config({"max_wer_delta_pp": 100})).passed


def test_a_speedup_or_size_ratio_exactly_at_its_limit_passes():
    """``min_speedup`` and ``max_size_ratio`` are inclusive bounds, like the error-rate limits."""
    rep = report({"en": 10.0}, {"en": 10.0})
    rep["comparison"].update(speedup=1.5, size_ratio=0.45)
    assert check_thresholds(rep, gate_config({"min_speedup": 1.5, "max_size_ratio": 0.45})).passed
    refused = check_thresholds(rep, gate_config({"min_speedup": 1.5001, "max_size_ratio": 0.4499}))
    assert [r.split(" ", 1)[0] for r in refused.reasons] == ["speedup", "size"]


@pytest.mark.parametrize(("key", "value"), [("wer_delta/en", float("-inf")), ("speedup", float("inf"))])
def test_a_metric_that_is_infinite_fails_the_gate(key, value):
    """An infinite delta or speedup (a damaged eval.json) is no measurement: -inf would pass every
    error-rate limit and inf every min_speedup."""
    rep = report({"en": 10.0}, {"en": 10.0})
    rep["comparison"][key] = value
    d = check_thresholds(rep, gate_config({}))
    assert not d.passed and d.reasons == [
        f"{key} is {value!r}, not a measured number: rerun evaluate (dvc repro evaluate)"
    ]


def test_no_note_where_one_error_is_exactly_the_limit():
    """One error in 200 words is +0.5 pp, within a 0.5 pp limit: one error more than FP32 passes, so the
    note saying it fails the gate would be wrong."""
    rep = report({"en": 10.0}, {"en": 10.5})
    rep["fp32"]["ref_length/en"] = 200
    d = check_thresholds(rep, gate_config({}))
    assert d.passed and d.notes == []


def test_a_candidate_level_with_the_champion_within_its_tolerance_passes():
    """A tie is not worse, and neither is exactly the tolerance worse (10.1 + 0.2 is 10.299999999999999
    in floats)."""
    assert check_against_champion({"wer/en": 10.1}, {"wer/en": 10.1}, 0.0, "v1") == []
    assert check_against_champion({"wer/en": 10.3}, {"wer/en": 10.1}, 0.2, "v1") == []
    assert check_against_champion({"wer/en": 10.31}, {"wer/en": 10.1}, 0.2, "v1")


def test_a_champion_with_no_figure_in_common_is_not_passed_unchecked():
    """Gate metrics that share no accuracy figure with the candidate's (none on this evaluation set's
    terms) check nothing: the candidate is refused as with no gate_metrics at all."""
    cand = {"wer/en": 10.0, "wer_delta/en": 0.1, "error_rate/overall": 10.0, "speedup": 2.0}
    for champ, same in (({"speedup": 3.0}, True), ({"wer/en": 10.0, "error_rate/overall": 10.0}, False)):
        reasons = check_against_champion(cand, champ, 0.0, "v1", same_eval_set=same)
        assert reasons and reasons[0].startswith("champion v1 records no gate metrics to compare with")


def test_an_eval_json_with_a_flag_for_a_metric_or_a_part_not_a_mapping_is_one_line(tmp_path):
    """(mutation review) ``true`` is no number (Python's bool is an int: it passed as 1), and a part
    that is not a mapping is named, not an AttributeError traceback."""
    from whisper_int8.eval_report import read_eval_report
    from whisper_int8.model_sources import ModelSourceError

    path = tmp_path / "eval.json"
    good = report({"en": 10.0}, {"en": 10.0})
    cases = [
        ({**good, "comparison": {**good["comparison"], "speedup": True}}, r"comparison.speedup=True: not a"),
        ({**good, "int8": None}, r"not an evaluation report \(no fp32/int8/comparison\)"),
    ]
    for content, message in cases:
        path.write_text(json.dumps(content))
        with pytest.raises(ModelSourceError, match=rf"^{re.escape(str(path))}: {message}"):
            read_eval_report(path)
