"""Text normalization and WER/CER scoring, identical for FP32 and INT8 transcripts.

Whisper writes digits ("7", "9點") and Traditional Chinese where the references spell numbers out and
use Simplified characters; Spanish references carry no accents. :func:`normalize` removes those
differences by applying one function to both sides: digits become words (``num2words``, ``cn2an`` for
Chinese), Traditional folds to Simplified (``zhconv``), diacritics on Latin, Greek and Cyrillic letters
are dropped, then Whisper's own normalizer runs (English or basic). :func:`score` adds up the error
counts over all clips so a language's rate weighs every word equally, not every clip.
"""

from __future__ import annotations

import functools
import re
import unicodedata

import jiwer
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

# Written without spaces between words: scored by character error rate.
CER_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "km", "bo", "yue"})
_DIGITS = re.compile(r"\d+(?:[.,]\d{3})*")
_DIGITS_EN = re.compile(_DIGITS.pattern + "(?:st|nd|rd|th)?")  # English ordinals too: 1st, 22nd


def uses_cer(lang: str) -> bool:
    """True for languages scored by CER (written without spaces between words)."""
    return lang in CER_LANGUAGES


@functools.cache
def _normalizer(lang: str):
    return EnglishTextNormalizer() if lang == "en" else BasicTextNormalizer()


MAX_NUMBER_DIGITS = 15  # longer digit runs stay digits: a hallucination, not a number to spell
# num2words languages that fail on ordinary numbers: Amharic raises TypeError from 1000 up and never
# returns on 99999999, so its digits are kept as written.
NUM2WORDS_BROKEN = {"am"}


def _number_words(match: re.Match, lang: str) -> str:
    token = match.group(0)
    ordinal = lang == "en" and token[-2:] in ("st", "nd", "rd", "th")
    digits = re.sub(r"[.,]", "", token[:-2] if ordinal else token)
    if len(digits) > MAX_NUMBER_DIGITS or lang in NUM2WORDS_BROKEN:
        return f" {token} "
    try:
        if lang in ("zh", "yue"):
            import cn2an

            return cn2an.an2cn(digits)
        from num2words import num2words

        return f" {num2words(int(digits), lang=lang, to='ordinal' if ordinal else 'cardinal')} "
    # No such language in num2words, or a number too long for it or cn2an: keep the digits, on both
    # sides alike. Any error: a language module's bug must not fail an evaluation's scoring.
    except Exception:
        return f" {token} "


def _strip_diacritics(text: str) -> str:
    """Drop combining marks after Latin, Greek or Cyrillic letters (keeps Devanagari vowel signs, kana)."""
    out = []
    for ch in unicodedata.normalize("NFD", text):
        if unicodedata.category(ch) == "Mn" and out and ord(out[-1]) < 0x0530:
            continue
        out.append(ch)
    return unicodedata.normalize("NFC", "".join(out))


def normalize(text: str, lang: str) -> str:
    """Canonical form of ``text`` in ``lang`` for scoring (apply it to references and hypotheses alike)."""
    if lang in ("zh", "yue"):
        import zhconv

        text = zhconv.convert(text, "zh-cn")
    text = (_DIGITS_EN if lang == "en" else _DIGITS).sub(lambda m: _number_words(m, lang), text)
    text = _strip_diacritics(text)
    # Whisper's English normalizer keeps "." for decimals, so a trailing "..." would survive as a word.
    words = [w for w in _normalizer(lang)(text).split() if re.search(r"\w", w)]
    return ("" if uses_cer(lang) else " ").join(words)


def score(refs: list[str], hyps: list[str], lang: str) -> dict:
    """Error counts summed over all pairs and the rate (WER, or CER for :func:`uses_cer` languages).

    Returns ``{"metric", "error_rate", "errors", "substitutions", "deletions", "insertions", "hits",
    "reference_length", "clips"}``; ``errors`` is S + D + I, ``error_rate`` a fraction, errors / length.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"score: {len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise ValueError("score: no references to score")
    metric = "cer" if uses_cer(lang) else "wer"
    r = [normalize(x, lang) for x in refs]
    h = [normalize(x, lang) for x in hyps]
    empty = [i for i, x in enumerate(r) if not x]
    if empty:
        raise ValueError(f"score: reference {empty[0]} ({refs[empty[0]]!r}) is empty after normalization")
    out = (jiwer.process_characters if metric == "cer" else jiwer.process_words)(r, h)
    length = out.substitutions + out.deletions + out.hits
    errors = out.substitutions + out.deletions + out.insertions
    return {
        "metric": metric,
        "error_rate": errors / length,
        "errors": errors,
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "hits": out.hits,
        "reference_length": length,
        "clips": len(refs),
    }
