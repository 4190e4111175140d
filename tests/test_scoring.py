"""Normalization and scoring: the same function on both sides removes format-only differences."""

from __future__ import annotations

import pytest

from whisper_int8.scoring import normalize, score, uses_cer


def test_uses_cer():
    assert all(uses_cer(lang) for lang in ("zh", "ja", "th", "lo", "my", "km"))
    assert not any(uses_cer(lang) for lang in ("en", "es", "fr", "ru", "de", "pt", "it"))


@pytest.mark.parametrize(
    ("lang", "reference", "hypothesis"),
    [("es", "Presione uno para continuar o el numero veintiuno", "Presione 1 para continuar, ó el número 21"),
     ("fr", "pour l'aide, appuyez sur zéro", "Pour l'aide, appuyez sur 0."),
     ("de", "Wir treffen uns um drei Uhr", "Wir treffen uns um 3 Uhr."),
     ("it", "chiama l'interno ottomilacinquecento", "Chiama l'interno 8500."),
     ("ru", "Введите пять номеров", "введите 5 номеров"),
     ("en", "Press one, then the third option", "press 1 then the 3rd option"),
     ("en", "The number I have is", "The number I have is..."),
     ("zh", "明天九点到，我们走吧。", "明天9點到,我們走吧"),
     ("zh", "我们的航班晚了两个小时。", "我们的航班晚了2个小时"),
     ("pt", "O voo atrasou duas horas", "o voo atrasou 2 horas"),
     ("ru", "Нажмите две кнопки", "нажмите 2 кнопки"),
     ("ja", "夜八時に始まる", "夜8時に始まる。"),
     # (a review) NFKC after the digits were read: "m²" and "m2" were two forms; where num2words has no
     # such language the comma of "1,000" parted it into two words
     ("es", "cinco metros dos", "5 metros²"),
     ("ja", "一番", "①番"),
     ("sw", "1000 km", "1,000 km"),
     ("fr", "trois un deux", "3½"),  # not "31⁄2": thirty-one
     ("vi", "hoà bình", "hòa bình")],  # two places of one tone mark
)  # fmt: skip
def test_format_differences_score_zero(lang, reference, hypothesis):
    assert normalize(reference, lang) == normalize(hypothesis, lang)
    assert score([reference], [hypothesis], lang)["error_rate"] == 0.0


def test_real_differences_still_count():
    assert score(["el numero veintiuno"], ["el numero 22"], "es")["substitutions"] >= 1
    assert score(["我们的邻居"], ["我們的林居"], "zh") == {
        "metric": "cer", "error_rate": 0.2, "errors": 1, "substitutions": 1, "deletions": 0, "insertions": 0,
        "hits": 4, "reference_length": 5, "clips": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("lang", "reference", "hypothesis", "errors"),
    [("th", "ข้าว", "ขาว", 1),  # rice / white: a tone mark apart
     ("hi", "मैं घर जा रहा हूँ", "मैं घर जा रही हूँ", 1),  # one vowel sign, in one of five words
     ("es", "atención", "atencion", 0),  # Latin accents are still folded
     ("ru", "ещё", "еще", 0),  # and ё, written е as often as not
     # (a review) but not the marks that make another letter, nor Vietnamese tones
     ("ru", "мой", "мои", 1),
     ("de", "schön", "schon", 1),
     ("es", "año", "ano", 1),
     ("pl", "być mą", "byc ma", 2),  # every alphabet's own letters
     ("cs", "být řeka", "byt reka", 2),
     ("sv", "år", "ar", 1),
     ("ro", "ştefan", "ștefan", 0),  # Romanian ș typed with the cedilla: one letter
     ("fr", "café", "cafe", 0),  # French accents still fold
     ("vi", "ma má mà", "ma ma ma", 2),
     ("ar", "كَتَبَ الوَلَدُ", "كتب الولد", 0),  # so are Arabic harakat, mostly left unwritten
     ("he", "שָׁלוֹם", "שלום", 0)],  # and Hebrew points
)  # fmt: skip
def test_vowel_signs_and_tone_marks_are_letters(lang, reference, hypothesis, errors):
    """Whisper's basic normalizer blanks every combining mark: Thai tone marks and Devanagari vowel
    signs vanished (errors in them never counted) and Hindi words fell apart into consonants."""
    out = score([reference], [hypothesis], lang)
    assert out["errors"] == errors
    if lang == "hi":
        assert out["reference_length"] == 5 and normalize(reference, lang) == "मैं घर जा रहा हूँ"


def test_cer_languages_ignore_spaces():
    assert normalize("今天 天气 很好", "zh") == normalize("今天天气很好", "zh") == "今天天气很好"


def test_rates_are_pooled_over_words_not_averaged_over_clips():
    refs = ["one short clip", "a much longer reference sentence with many more words in it"]
    hyps = ["one short clap", "a much longer reference sentence with many more words in it"]
    out = score(refs, hyps, "en")
    assert out["reference_length"] == 14 and out["substitutions"] == 1 and out["clips"] == 2
    assert out["error_rate"] == pytest.approx(1 / 14)  # a per-clip mean would give (1/3 + 0) / 2


def test_insertions_and_deletions():
    out = score(["hello world"], ["hello big world out there"], "en")
    assert (out["insertions"], out["deletions"], out["error_rate"]) == (3, 0, 1.5)
    assert score(["hello world"], [""], "en")["deletions"] == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        score(["a", "b"], ["a"], "en")
    with pytest.raises(ValueError, match="empty after normalization"):
        score(["¡!?"], ["a"], "es")
    with pytest.raises(ValueError, match="no references to score"):  # (mutation review)
        score([], [], "en")


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Das ist 10stündig", "de"),  # "st" after digits is German text, not an ordinal
        ("la 3rd opción", "es"),
        ("5th", "ja"),
        ("1" * 22, "zh"),  # longer than cn2an's 16 digits
        ("1" * 28, "es"),  # num2words OverflowError
        ("1" * 41, "ru"),  # num2words KeyError
        ("ሰላም 1990 99999999", "am"),  # num2words' Amharic: TypeError, and a loop that never returns
    ],
)
def test_digit_runs_any_model_may_write_never_crash_scoring(text, lang):
    """A hallucinated ordinal or digit run is scored (digits kept) instead of failing the evaluation."""
    assert score([text], [text], lang)["error_rate"] == 0.0
    assert normalize(text, lang)


@pytest.mark.parametrize(
    ("reference", "hypothesis"),
    [("five percent", "5%"),
     ("five dollars", "$5"),
     ("the nineteen nineties", "the 1990s"),
     ("three point five percent", "3.5%"),
     ("one point five million", "1.5 million"),
     ("one thousand people", "1,000 people")],
)  # fmt: skip
def test_english_spoken_and_written_numbers_score_zero(reference, hypothesis):
    """Whisper's English normalizer maps both forms to one; digits spelled out beforehand would not match."""
    assert normalize(reference, "en") == normalize(hypothesis, "en")
    assert score([reference], [hypothesis], "en")["errors"] == 0


def test_a_decimal_is_not_the_number_without_its_point():
    assert score(["3.5 percent"], ["35 percent"], "en")["errors"] == 1
    assert normalize("2,5", "es") == "dos coma cinco" and normalize("25", "es") == "veinticinco"


@pytest.mark.parametrize(
    ("lang", "reference", "hypothesis"),
    [("es", "dos coma cinco por ciento", "2,5 por ciento"),  # num2words says "punto"; Spanish reads "coma"
     ("fr", "deux virgule cinq", "2,5"),
     ("de", "zwei Komma fünf Prozent", "2,5 Prozent"),
     ("it", "tre virgola zero cinque", "3,05"),
     ("pt", "dois vírgula cinco", "2,5"),
     ("ru", "две целых пять десятых", "2,5"),
     ("es", "mil doscientos treinta y cuatro coma cinco", "1.234,5"),
     ("es", "dos mil quinientos", "2.500"),  # a group of exactly 3 digits: thousands
     ("de", "zweitausendfünfhundert", "2.500"),
     ("fr", "mille personnes", "1 000 personnes"),
     ("fr", "dix mille", "10\u202f000"),
     ("de", "um neun dreißig", "um 9.30"),  # "." is no decimal point in German
     ("zh", "二点五", "2.5"),
     ("ja", "二点五", "2.5")],
)  # fmt: skip
def test_decimals_and_thousands_read_per_language(lang, reference, hypothesis):
    assert normalize(reference, lang) == normalize(hypothesis, lang)
    assert score([reference], [hypothesis], lang)["errors"] == 0


@pytest.mark.parametrize(
    ("reference", "hypothesis"),
    [("Xin chào, bạn khỏe không?", "xin chào bạn khỏe không"),
     ("hòa bình.", "hoà bình"),
     ("Tiếng Việt-Nam!", "tiếng việt nam")],
)  # fmt: skip
def test_a_vietnamese_tone_survives_the_punctuation_after_its_word(reference, hypothesis):
    """Regression (mutation review): the tone marks moved to the end of each space-separated word, after
    a comma or full stop that ended it, and were blanked with it: "bình." scored as "binh", one error
    for a punctuation difference."""
    assert normalize(reference, "vi") == normalize(hypothesis, "vi")
    assert score([reference], [hypothesis], "vi")["errors"] == 0


@pytest.mark.parametrize(
    ("lang", "text", "apart"),
    [("de", "Im Jahr 2019 150 Menschen", ("Im Jahr 2019", "150 Menschen")),
     ("fr", "en 1998 300 000 personnes", ("en 1998", "300 000 personnes")),
     ("es", "en 2020 10\u00a0000 casos", ("en 2020", "10 000 casos")),
     ("de", "Seite 5 12,5 Prozent", ("Seite 5", "12,5 Prozent"))],  # a group of 2: no thousands
)  # fmt: skip
def test_a_space_joins_thousands_only_after_a_group_of_three_digits_at_most(lang, text, apart):
    """Regression (mutation review): a space joined any run of digits to a following group of 3, so a
    year and the number after it were read as one number: "2019 150" as two million nineteen
    thousand one hundred fifty, three words against two in a spelled reference."""
    assert normalize(text, lang) == " ".join(normalize(part, lang) for part in apart)
    spelled = "en deux mille dix-neuf, cent cinquante personnes"
    assert score([spelled], ["en 2019 150 personnes"], "fr")["errors"] == 0


def test_cantonese_is_scored_by_characters_with_chinese_numerals():
    """(mutation review) yue is written without spaces, as zh: CER, and its digits read by cn2an
    (num2words has no Cantonese: they stayed digits)."""
    assert uses_cer("yue") and score(["两个人"], ["2個人"], "yue")["errors"] == 0


def test_a_symbol_inside_a_word_parts_it():
    """(mutation review) Symbols are blanked as punctuation is (Whisper's basic normalizer would drop
    the marks of other scripts with them): "gut+schnell" is two words."""
    assert normalize("gut+schnell", "de") == normalize("gut schnell", "de") == "gut schnell"


def test_digit_runs_are_spelled_up_to_fifteen_digits():
    """(mutation review) MAX_NUMBER_DIGITS: fifteen digits are a number, sixteen a run kept as written."""
    assert normalize("1234567", "de").startswith("eine million")
    assert not any(c.isdigit() for c in normalize("9" * 15, "de"))
    assert normalize("9" * 16, "de") == "9" * 16


def test_turkish_decimals_keep_their_digits():
    """(mutation review) num2words reads Turkish 2.05 as "2.4": its parts are spelled apart instead."""
    assert normalize("2,05", "tr").split()[0] == "iki"
    assert "dört" not in normalize("2,05", "tr") and normalize("2,05", "tr").endswith(normalize("5", "tr"))
