"""The accuracy gate: does the INT8 candidate pass the thresholds in params ``gate``, and beat the champion?

Pure functions over ``metrics/eval.json`` (see :mod:`whisper_int8.eval_report`); the registry side
(tags, alias) lives in :mod:`whisper_int8.registry`. Error rates are percent, deltas percentage points.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from whisper.tokenizer import LANGUAGES

from .eval_report import BASELINE, CANDIDATE, delta_key, error_key, judged_keys, shared_languages
from .languages import check_codes
from .params import ParamError, reject_unknown_keys

ACCURACY_PREFIXES = ("wer/", "cer/", "error_rate/")
DELTA_PREFIXES = ("wer_delta/", "cer_delta/", "error_rate_delta/")
# Rates are 100 * errors / words: a delta of exactly 0.5 pp can come out as 0.5000000000000004.
FLOAT_SLACK_PP = 1e-9
# The promote stage's exit status for a refusal under ``fail_on_reject``: not 1 (a crash, a Python
# traceback) nor 2 (a bad input or param, cli_common), so CI can tell "the model is worse" from both.
REFUSED_EXIT = 3


@dataclass(frozen=True)
class GateConfig:
    max_wer_delta_pp: float = 0.5
    max_wer_delta_pp_by_language: dict[str, float] = field(default_factory=dict)
    max_overall_wer_delta_pp: float = 0.5
    min_speedup: float = 1.0
    max_size_ratio: float = 0.6
    require_languages: bool | list[str] = True
    fail_on_reject: bool = False
    champion_tolerance_pp: float = 0.0

    def limit(self, language: str) -> float:
        """The largest increase over FP32 allowed in ``language``, pp."""
        return self.max_wer_delta_pp_by_language.get(language, self.max_wer_delta_pp)


def _number(section: dict, key: Any, default: float, where: str, name: str | None = None) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ParamError(f"{where}: gate.{name or key}={value!r} must be a number")
    return float(value)


def _at_least(value: float, least: float, key: str, where: str) -> float:
    if value < least:
        raise ParamError(f"{where}: gate.{key}={value:g} must be >= {least:g} ({least:g}: no limit)")
    return value


def _positive(value: float, key: str, where: str) -> float:
    if value <= 0:
        raise ParamError(f"{where}: gate.{key}={value:g} must be above 0 (.inf: no limit)")
    return value


def _language_limits(by_lang: Any, where: str) -> dict[str, float]:
    """``max_wer_delta_pp_by_language``: Whisper language codes to numbers; an override that cannot
    apply (a typo, YAML's ``no`` read as false) is an error, not a limit silently left at the default."""
    key = "max_wer_delta_pp_by_language"
    if not isinstance(by_lang, dict):
        raise ParamError(f"{where}: gate.{key} must map language codes to numbers")
    for lang in by_lang:
        if not isinstance(lang, str) or lang not in LANGUAGES:
            hint = " (a YAML boolean; Norwegian is no: quote it, 'no')" if isinstance(lang, bool) else ""
            raise ParamError(f"{where}: gate.{key}: {lang!r} is not a Whisper language code{hint}")
    return {lang: _number(by_lang, lang, 0.0, where, f"{key}.{lang}") for lang in by_lang}


def gate_config(section: dict[str, Any], where: str = "params.yaml") -> GateConfig:
    """Validate params ``gate``; every problem names the key."""
    reject_unknown_keys(section, "gate", set(GateConfig.__dataclass_fields__), where)
    d = GateConfig()
    by_lang = _language_limits(section.get("max_wer_delta_pp_by_language") or {}, where)
    req = section.get("require_languages", d.require_languages)
    if not isinstance(req, bool | list):
        raise ParamError(f"{where}: gate.require_languages must be true/false or a list of language codes")
    if isinstance(req, list):
        check_codes("gate.require_languages", req, where)
    fail = section.get("fail_on_reject", d.fail_on_reject)
    if not isinstance(fail, bool):
        raise ParamError(f"{where}: gate.fail_on_reject must be true or false")
    return GateConfig(
        max_wer_delta_pp=_number(section, "max_wer_delta_pp", d.max_wer_delta_pp, where),
        max_wer_delta_pp_by_language=by_lang,
        max_overall_wer_delta_pp=_number(
            section, "max_overall_wer_delta_pp", d.max_overall_wer_delta_pp, where
        ),
        min_speedup=_at_least(
            _number(section, "min_speedup", d.min_speedup, where), 0.0, "min_speedup", where
        ),
        max_size_ratio=_positive(
            _number(section, "max_size_ratio", d.max_size_ratio, where), "max_size_ratio", where
        ),
        require_languages=req,
        fail_on_reject=fail,
        champion_tolerance_pp=_number(section, "champion_tolerance_pp", d.champion_tolerance_pp, where),
    )


@dataclass
class Decision:
    passed: bool
    reasons: list[str]
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)  # cautions that decide nothing

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "status": self.status,
            "reasons": self.reasons,
            "notes": self.notes,
            "metrics": self.metrics,
        }

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"


def gate_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The candidate figures the gate judges, also stored on the registered version for later comparisons."""
    cand, comp = report[CANDIDATE], report["comparison"]
    out = {k: v for k, v in cand.items() if k.startswith(ACCURACY_PREFIXES)}
    out.update({k: v for k, v in comp.items() if "_delta/" in k})
    out["speedup"] = comp["speedup"]
    out["size_ratio"] = comp["size_ratio"]
    out["model_size_mb"] = cand["model_size_mb"]
    return out


def _unit(key: str) -> str:
    return "characters" if key.startswith("cer/") else "words"


def _counts(base: dict[str, float], cand: dict[str, float], key: str) -> str:
    """``; 14 -> 16 errors in 178 words`` when the report has the counts (older reports lack them)."""
    lang = key.split("/", 1)[1]
    keys = (f"errors/{lang}", f"ref_length/{lang}")
    if not all(k in base for k in keys) or f"errors/{lang}" not in cand:
        return ""
    return f"; {base[keys[0]]:.0f} -> {cand[keys[0]]:.0f} errors in {base[keys[1]]:.0f} {_unit(key)}"


def _interval(comp: dict[str, float], key: str) -> str:
    """``; 95 % interval over clips -0.56 to +2.81 pp`` when the report has it (older reports lack it)."""
    metric, lang = key.split("/", 1)
    low, high = comp.get(f"{metric}_delta_ci_low/{lang}"), comp.get(f"{metric}_delta_ci_high/{lang}")
    if low is None or high is None:
        return ""
    return f"; 95 % interval over clips {low:+.2f} to {high:+.2f} pp"


def clip_cap(report: dict[str, Any]) -> int | None:
    """``evaluate.max_clips_per_language`` the report was made with (None: the whole split)."""
    return report.get("config", {}).get("max_clips_per_language")


def _decimals(apart: Callable[[int], bool], least: int = 2) -> int | None:
    """The fewest decimals (``least`` to 9) at which ``apart(decimals)`` holds, None if none: a
    refusal must not print numbers that look like they met the limit."""
    return next((d for d in range(least, 10) if apart(d)), None)


def _beyond(value: float, limit: float, below: bool = False, digits: int = 2, sign: str = "") -> str:
    """``value`` with the decimals it takes to read as over ``limit`` (under it with ``below``):
    0.5025 is 0.503, not 0.50; a speedup of 0.998 is 0.998x, not 1.00x."""

    def apart(d: int) -> bool:
        shown = float(f"{value:{sign}.{d}f}")
        return shown < limit if below else shown > limit

    d = _decimals(apart, digits)
    return f"{value:{sign}}" if d is None else f"{value:{sign}.{d}f}"


def _over(delta: float, limit: float) -> str:
    """``delta``, signed, as :func:`_beyond` shows it: -0.3 over a limit of -0.5 is -0.30."""
    return _beyond(delta, limit, sign="+")


def _not_numbers(values: dict[str, float]) -> list[str]:
    """A reason for each judged value that is not a finite number: every comparison with NaN is
    false, so it would pass each threshold (a damaged or hand-edited eval.json)."""
    return [
        f"{key} is {value!r}, not a measured number: rerun evaluate (dvc repro evaluate)"
        for key, value in values.items()
        if not (isinstance(value, int | float) and math.isfinite(value))
    ]


def check_thresholds(report: dict[str, Any], cfg: GateConfig) -> Decision:
    """Apply the thresholds of ``cfg`` to an eval.json report."""
    reasons: list[str] = []
    base, cand, comp = report[BASELINE], report[CANDIDATE], report["comparison"]
    evaluated = shared_languages(base, cand)
    if cfg.require_languages:
        expected = (
            cfg.require_languages
            if isinstance(cfg.require_languages, list)
            else report.get("config", {}).get("languages", evaluated)
        )
        missing = sorted(set(expected) - set(evaluated))
        if missing:
            reasons.append(f"languages without results for both variants: {', '.join(missing)}")
    reasons += _not_numbers({k: comp[k] for k in judged_keys(base, cand)})
    for lang in evaluated:
        key = error_key(cand, lang)
        delta = comp[delta_key(key)]
        limit = cfg.limit(lang)
        if delta > limit + FLOAT_SLACK_PP:
            reasons.append(
                f"{key} {_over(delta, limit)} pp over FP32 ({base[key]:.2f} -> {cand[key]:.2f}"
                f"{_counts(base, cand, key)}{_interval(comp, key)}), limit {limit} pp"
            )
    overall = comp["error_rate_delta/overall"]
    if overall > cfg.max_overall_wer_delta_pp + FLOAT_SLACK_PP:
        reasons.append(
            f"overall error rate {_over(overall, cfg.max_overall_wer_delta_pp)} pp over FP32, "
            f"limit {cfg.max_overall_wer_delta_pp} pp"
        )
    if comp["speedup"] < cfg.min_speedup:
        reasons.append(
            f"speedup {_beyond(comp['speedup'], cfg.min_speedup, below=True)}x below min_speedup "
            f"{cfg.min_speedup}x"
        )
    if comp["size_ratio"] > cfg.max_size_ratio:
        reasons.append(
            f"size ratio {_beyond(comp['size_ratio'], cfg.max_size_ratio, digits=3)} above "
            f"max_size_ratio {cfg.max_size_ratio}"
        )
    capped = clip_cap(report)
    if capped is not None:  # a quick look must not become what the serving fleet pulls
        reasons.append(
            f"evaluated on the first {capped} clip(s) of each language only "
            "(evaluate.max_clips_per_language); set it to null to evaluate the whole split and promote"
        )
    return Decision(not reasons, reasons, gate_metrics(report), coarse_languages(report, cfg))


def coarse_languages(report: dict[str, Any], cfg: GateConfig) -> list[str]:
    """A note for each language where one error weighs more than its limit.

    There a single word that INT8 transcribes differently from FP32 decides the gate, whatever the
    model's expected cost: greedy decoding flips near-ties under any perturbation of int8's size
    (docs/performance.md). More evaluation clips make the limit resolvable.
    """
    base, cand = report[BASELINE], report[CANDIDATE]
    more = "evaluate.max_clips_per_language: null" if clip_cap(report) is not None else "audio.eval_per_lang"
    notes = []
    for lang in shared_languages(base, cand):
        key, length, limit = error_key(cand, lang), base.get(f"ref_length/{lang}"), cfg.limit(lang)
        if length and 0 < limit < 100 / length - FLOAT_SLACK_PP:  # a limit of 0: no split resolves it
            notes.append(
                f"{key}: one error is {100 / length:.3f} pp of its {length:.0f} {_unit(key)}, above the "
                f"{limit} pp limit: one error more than FP32 fails the gate; evaluate more clips "
                f"({more}) for a limit the split can resolve"
            )
    return notes


def check_against_champion(
    candidate: dict[str, float],
    champion: dict[str, float],
    tolerance_pp: float,
    champion_label: str,
    same_eval_set: bool = True,
) -> list[str]:
    """Reasons the candidate is worse than the champion on the accuracy gate metrics both recorded.

    On the same evaluation set (clips, clip cap, decoding, device) the error rates are compared. On
    another set they are not comparable, so the increases over FP32 are, each measured against its own
    FP32 run. Latency is never compared across runs: it was measured at another time, perhaps on
    another machine.
    """
    prefixes = ACCURACY_PREFIXES if same_eval_set else DELTA_PREFIXES
    reasons = _not_numbers({k: v for k, v in sorted(candidate.items()) if k.startswith(prefixes)})
    if not any(k.startswith(prefixes) and k in champion for k in candidate):
        # a version this gate never judged (registered by hand or by another tool): without a figure in
        # common "not less accurate than the champion" cannot be checked, and must not pass unchecked
        reasons.append(
            f"champion {champion_label} records no gate metrics to compare with (no gate_metrics tag: "
            "not judged by this pipeline's gate); point the alias at a version it judged "
            "(`whisper-int8 alias --set N`) or remove it (`whisper-int8 alias --delete`), then promote again"
        )
    for key in sorted(set(candidate) & set(champion)):
        if key.startswith(prefixes) and candidate[key] > champion[key] + tolerance_pp + FLOAT_SLACK_PP:
            # the decimals it takes for the two printed numbers to differ by more than the tolerance
            cand, champ = candidate[key], champion[key]
            d = _decimals(lambda d, a=cand, b=champ: round(a, d) > round(b, d) + tolerance_pp) or 10
            ours, theirs = f"{cand:.{d}f}", f"{champ:.{d}f}"
            reasons.append(
                f"{key} {ours} worse than champion {champion_label} ({theirs}"
                f"{'' if same_eval_set else ', measured on another evaluation set'}), "
                f"tolerance {tolerance_pp} pp"
            )
    return reasons
