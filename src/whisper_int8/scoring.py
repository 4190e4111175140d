"""Text normalization and WER/CER scoring, identical for FP32 and INT8 transcripts.

Whisper writes digits ("7", "9點", "2个" for 两个) and Traditional Chinese where the references spell
numbers out and use Simplified characters; Spanish references carry no accents. :func:`normalize`
removes those differences by applying one function to both sides: digits become words
(``num2words``, ``cn2an`` for Chinese; decimals read with the language's separator, "2,5" as "dos
coma cinco"; English digits are left to Whisper's English normalizer, which maps "5%" and "five
percent" to one form), Traditional folds to Simplified (``zhconv``), accents on Latin, Greek and
Cyrillic letters are dropped (not the marks that make another letter: й, German umlauts, Spanish ñ,
Polish ą, Czech ř and the other letters of a language's alphabet, Vietnamese tones), then Whisper's
own normalizer runs (English, or basic keeping the marks of other scripts). :func:`score` adds up the
error counts over all clips so a language's rate weighs every word equally, not every clip.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from pathlib import Path

import jiwer
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

# Written without spaces between words: scored by character error rate.
CER_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "km", "bo", "yue"})
# A digit run with its separators: "7", "2,5", "1.234,5", "1,000", "1.5.2020"; a space, no-break or
# narrow no-break space joins groups of exactly 3 digits to a first group of 1 to 3 ("1 000",
# "10 000,5"), not a year to the number after it ("2019 150 Menschen": two numbers, not 2 019 150).
_NUMBER = re.compile(r"\d{1,3}(?:[ \u00a0\u202f]\d{3}(?!\d))+(?:[.,]\d+)*|\d+(?:[.,]\d+)*")
_SEPARATORS = re.compile(r"([.,\u00a0\u202f ])")
# Languages that write a decimal comma ("2,5") and group thousands with "." or a space; the others
# write a decimal point. A last group of exactly 3 digits is thousands either way ("2,500", "2.500").
DECIMAL_COMMA_LANGUAGES = frozenset({
    "es", "fr", "de", "it", "pt", "ru", "nl", "pl", "uk", "be", "bg", "cs", "sk", "sl", "hr", "sr", "bs",
    "ro", "hu", "da", "sv", "no", "nn", "fi", "et", "lv", "lt", "el", "tr", "ca", "gl", "eu", "is", "az",
    "kk", "id", "vi",
})  # fmt: skip


# What normalize and score depend on besides this file: a new release can move every error rate.
SCORING_PACKAGES = ("openai-whisper", "jiwer", "num2words", "cn2an", "zhconv")


def scorer_versions() -> str:
    """``openai-whisper 20250625; jiwer 4.0.0; ...; scoring.py 1a2b3c4d5e6f``: recorded with every
    evaluation (the evaluate stage's settings), so rates scored by other versions, or by an edited
    copy of this file (a stored FP32 baseline, stages run by hand), are not compared as equals."""
    from importlib.metadata import PackageNotFoundError, version

    def one(package: str) -> str:
        try:
            return f"{package} {version(package)}"
        except PackageNotFoundError:
            return f"{package} missing"

    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return "; ".join([*(one(p) for p in SCORING_PACKAGES), f"scoring.py {code}"])


def uses_cer(lang: str) -> bool:
    """True for languages scored by CER (written without spaces between words)."""
    return lang in CER_LANGUAGES


def _blank_symbols(text: str) -> str:
    """Symbols and punctuation as spaces; marks kept: Whisper's basic normalizer blanks those too, which
    drops Thai tone marks and Devanagari vowel signs ("ข้าว" and "ขาว" compared equal). Latin, Greek and
    Cyrillic accents are dropped by :func:`_strip_diacritics` instead."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(" " if unicodedata.category(c)[0] in "SP" else c for c in text)


@functools.cache
def _normalizer(lang: str):
    if lang == "en":
        return EnglishTextNormalizer()
    basic = BasicTextNormalizer()
    basic.clean = _blank_symbols
    return basic


# Numbers Whisper may write as digits where the text has a form that num2words / cn2an never produce:
# Chinese "两" (two before a measure word; cn2an writes "二"), feminine "duas", "две". Folded on both
# sides, so "两个小时" and "2个小时" score alike.
_NUMBER_WORDS = {"pt": {"duas": "dois"}, "ru": {"две": "два"}}


MAX_NUMBER_DIGITS = 15  # longer digit runs stay digits: a hallucination, not a number to spell
# num2words languages that fail on ordinary numbers: Amharic raises TypeError from 1000 up and never
# returns on 99999999, so its digits are kept as written.
NUM2WORDS_BROKEN = {"am"}
# num2words languages whose decimals come out wrong (digits dropped: "2.05" gives "2.4" in Turkish,
# "2.5" in Bengali, "two and a half" in Persian; Arabic and Vietnamese truncate): their integer and
# fraction parts are spelled as two numbers, as for any other run of groups.
NUM2WORDS_BROKEN_DECIMALS = {"ar", "bn", "fa", "tr", "vi"}
# num2words reads Spanish and Catalan decimals with "punto", "punt"; "2,5" is read "dos coma cinco".
_DECIMAL_WORD_FIX = {"es": ("punto", "coma"), "ca": ("punt", "coma")}


def _spell(number: str, lang: str) -> str | None:
    """``number`` ("25", or a decimal "2.5") in words, or None where it is kept as digits."""
    if len(number.replace(".", "")) > MAX_NUMBER_DIGITS or lang in NUM2WORDS_BROKEN:
        return None
    decimal = "." in number
    try:
        if lang in ("zh", "yue"):
            import cn2an

            return cn2an.an2cn(number)
        from num2words import num2words

        return num2words(float(number) if decimal else int(number), lang=lang)
    # No such language in num2words, or a number too long for it or cn2an: keep the digits, on both
    # sides alike. Any error: a language module's bug must not fail an evaluation's scoring.
    except Exception:
        return None


def _number_words(match: re.Match, lang: str) -> str:
    """A digit run (:data:`_NUMBER`) in words: thousands groups joined, a decimal read as one number.

    Groups after the first that all have exactly 3 digits are thousands ("1.000", "2,500", "1 000");
    a last group of any other length after the language's decimal separator is the decimal part
    ("2,5" and "1.234,5" in :data:`DECIMAL_COMMA_LANGUAGES`, "3.5" in the others). Anything else
    ("1.5.2020", "9.30" in German) is spelled group by group, separators kept, as is a decimal
    num2words cannot read in ``lang``.
    """
    token = match.group(0)
    parts = _SEPARATORS.split(token)  # digits, separator, digits, ...
    groups, seps = parts[::2], parts[1::2]
    pad = "" if lang in ("zh", "yue") else " "
    point = "," if lang in DECIMAL_COMMA_LANGUAGES else "."
    number = None
    if all(len(g) == 3 for g in groups[1:-1]):
        if len(groups) == 1 or len(groups[-1]) == 3:
            number = "".join(groups)
        elif seps[-1] == point and point not in seps[:-1] and lang not in NUM2WORDS_BROKEN_DECIMALS:
            number = "".join(groups[:-1]) + "." + groups[-1]
    words = _spell(number, lang) if number else None
    if words is not None:
        if "." in number and lang in _DECIMAL_WORD_FIX:
            wrong, right = _DECIMAL_WORD_FIX[lang]
            words = re.sub(rf"\b{wrong}\b", right, words)
        return pad + words + pad
    if number and "." not in number:  # an integer too long, or a language num2words lacks: its digits
        return f" {number} "  # ("1,000" and "1000" alike; the comma would part it into two words)
    spelled = [pad + (_spell(g, lang) or g) + pad for g in groups]
    return "".join(w + s for w, s in zip(spelled, [*seps, ""], strict=True))


# Hebrew points and Arabic harakat: optional vowel marks, mostly left unwritten (like Spanish accents)
_OPTIONAL_MARKS = re.compile("[\u0591-\u05c7\u064b-\u065f\u0670\u06d6-\u06ed]")


# Letters whose mark makes another letter, not an optional accent: Cyrillic й, ў, ї ("мой" is not
# "мои"; ё folds to е, which Russian texts write for it as often as not), and per language the
# letters of its alphabet ("być" and "byc", "být" and "byt" are not one word; their texts always
# write them). French, Italian, Portuguese, Catalan and Turkish dotted İ accents still fold.
_MARKED_LETTERS = frozenset("йЙўЎїЇ")
_LETTERS_BY_LANGUAGE = {
    "de": "äöü", "es": "ñ", "pl": "ąćęńóśźż", "cs": "áčďéěíňóřšťúůýž", "sk": "áäčďéíĺľňóôŕšťúýž",
    "hu": "áéíóöőúüű", "ro": "ăâîșț", "tr": "çğöşü", "da": "åæø", "no": "åæø", "nn": "åæø",
    "sv": "åäö", "fi": "åäö", "et": "äöõüšž", "is": "áéíóúýö", "lv": "āčēģīķļņšūž",
    "lt": "ąčęėįšųūž", "hr": "čćđšž", "bs": "čćđšž", "sr": "čćđšž", "sl": "čšž",
}  # fmt: skip
_MARKED_LETTERS_BY_LANGUAGE = {k: frozenset(v + v.upper()) for k, v in _LETTERS_BY_LANGUAGE.items()}
# Romanian ș and ț, often typed with a cedilla (ş, ţ, the Turkish letters): one spelling
_ONE_SPELLING = {"ro": str.maketrans("şţŞŢ", "șțȘȚ")}
# Latin script whose marks are tones (Vietnamese "ma", "má", "mà": three words): nothing folds
_TONE_MARKED = frozenset({"vi"})


def _strip_diacritics(text: str, lang: str) -> str:
    """Drop accents (combining marks after Latin, Greek or Cyrillic letters: references often omit
    them, Spanish "codigo", Russian ё written е) except where they make another letter, and Hebrew
    and Arabic vowel points (keeps Devanagari vowel signs and Thai tone marks, which are letters:
    :func:`_blank_symbols` keeps them too)."""
    if lang in _TONE_MARKED:
        return _tone_last(text)
    keep = _MARKED_LETTERS | _MARKED_LETTERS_BY_LANGUAGE.get(lang, frozenset())
    out: list[str] = []
    for letter in unicodedata.normalize("NFC", text).translate(_ONE_SPELLING.get(lang, {})):
        if letter in keep:
            out.append(letter)
            continue
        for ch in unicodedata.normalize("NFD", letter):
            if unicodedata.category(ch) == "Mn" and out and ord(out[-1]) < 0x0530:
                continue
            out.append(ch)
    return _OPTIONAL_MARKS.sub("", unicodedata.normalize("NFC", "".join(out)))


def _compatible(text: str) -> str:
    """NFKC, before the digits are read: "m²" as "m 2", "①" as "1", full-width "１２" as "12". A
    superscript, fraction or circled number stands apart ("3½" is "3 1⁄2", not "31⁄2"; "10²" "10 2")."""
    spaced = (f" {c} " if unicodedata.category(c) == "No" else c for c in text)
    return unicodedata.normalize("NFKC", "".join(spaced))


# Vietnamese tone marks (grave, acute, tilde, hook above, dot below), which two spellings place on
# different vowels of a syllable ("hoà" and "hòa"): moved to the syllable's end before comparing
_VI_TONES = frozenset("\u0300\u0301\u0303\u0309\u0323")


# A syllable in NFD: letters with their combining marks, up to a space, hyphen or punctuation
_SYLLABLE = re.compile(r"(?:\w|[\u0300-\u036f])+")


def _tone_last(text: str) -> str:
    """Each syllable's tone marks after its last letter: not after the punctuation that ends a word
    ("bình." put the tone on the period, and the normalizer blanked both: "binh", one error)."""

    def syllable(match: re.Match) -> str:
        tones = "".join(c for c in match.group(0) if c in _VI_TONES)
        return "".join(c for c in match.group(0) if c not in _VI_TONES) + tones

    return unicodedata.normalize("NFC", _SYLLABLE.sub(syllable, unicodedata.normalize("NFD", text)))


def normalize(text: str, lang: str) -> str:
    """Canonical form of ``text`` in ``lang`` for scoring (apply it to references and hypotheses alike)."""
    text = _compatible(text)
    if lang in ("zh", "yue"):
        import zhconv

        text = zhconv.convert(text, "zh-cn").replace("两", "二")  # see _NUMBER_WORDS
    # Whisper's English normalizer maps spoken and written numbers to one form itself ("five percent"
    # and "5%", "the nineteen nineties" and "the 1990s", "three point five" and "3.5"): spelling
    # English digits out first would only part them again.
    if lang != "en":
        text = _NUMBER.sub(lambda m: _number_words(m, lang), text)
    text = _strip_diacritics(text, lang)
    # Whisper's English normalizer keeps "." for decimals, so a trailing "..." would survive as a word.
    words = [w for w in _normalizer(lang)(text).split() if re.search(r"\w", w)]
    forms = _NUMBER_WORDS.get(lang, {})
    words = [forms.get(w, w) for w in words]
    return ("" if uses_cer(lang) else " ").join(words)


def check_references(clips: list, split: object) -> None:
    """Refuse a clip whose transcript normalizes to nothing, before any transcription: :func:`score`
    refuses such a reference, minutes of decoding later."""
    from .audio.errors import AudioInputError

    for clip in clips:
        if not normalize(clip.text, clip.language):
            raise AudioInputError(
                f"{split}: clip {clip.id}: its transcript {clip.text!r} is empty once normalized for "
                "scoring (bracketed or punctuation-only text); fix or drop it in the source"
            )


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
