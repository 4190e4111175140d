"""Which languages a Whisper model can be asked for, and the codes people type for them.

Kept apart from transcription so the stages that only check a split's languages (calibrate, evaluate)
do not depend on the decoding code.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

from .params import ParamError

# ISO 639-1 codes Whisper spells otherwise: Javanese is jw there, and iw is Hebrew's withdrawn code
# (still Java's and Android's); without these, "jv" was "not a language Whisper knows"
CODE_ALIASES = {"jv": "jw", "iw": "he"}


def language_code(language: str) -> str:
    """Whisper's code for ``language``, also given as a name or in capitals ("English", "EN" -> "en")."""
    code = TO_LANGUAGE_CODE.get(language.lower(), language.lower())
    code = CODE_ALIASES.get(code, code)
    if code not in LANGUAGES:
        raise ValueError(
            f"language {language!r}: not a language Whisper knows (a code such as en, or a name such as "
            "English); leave it out to detect the language"
        )
    return code


def code_for(value: str) -> str | None:
    """The code to write for what people type: a name, capitals, an ISO alias, a locale tag ("English",
    "EN", "jv", "zh-CN", "pt_BR"); None when it names no language Whisper knows. Params take codes
    only (they name ids and metrics), so this is the hint their refusal gives."""
    for candidate in (value, value.replace("_", "-").partition("-")[0]):
        try:
            return language_code(candidate.strip())
        except ValueError:
            continue
    return None


def check_codes(key: str, languages: Any, path: str = "params.yaml") -> None:
    """Whisper codes in a params list, each once: a wrong one is refused naming ``key``. A boolean is
    refused too (params are read with YAML 1.2 booleans, as DVC reads them, so ``no`` is Norwegian, but a
    YAML 1.1 reader such as ``yaml.safe_load`` gives ``false``); codes are lower case."""
    flags = [lang for lang in languages if isinstance(lang, bool)]
    if flags:
        raise ParamError(
            f"{path}: {key}: {flags[0]} is not a language code (a YAML boolean; Norwegian is no, "
            "which YAML 1.1 readers take for false: quote it, 'no')"
        )
    other = [lang for lang in languages if not isinstance(lang, str)]
    if other:
        raise ParamError(f"{path}: {key}: {other[0]!r} is not a language code; list codes such as en, de")
    unknown = [lang for lang in languages if lang not in LANGUAGES]
    if unknown:
        lower = [lang.lower() for lang in unknown if lang.lower() in LANGUAGES]
        hint = f" (codes are lower case: {', '.join(lower)})" if lower else ""
        # "english", "jv" (Whisper spells it jw), "zh-CN": "not a language Whisper knows" alone sent the
        # user looking for another model, where another spelling was all it took
        written = {lang: code_for(lang) for lang in unknown if lang.lower() not in LANGUAGES}
        spelled = ", ".join(f"{code} for {lang}" for lang, code in written.items() if code)
        hint += f" (write {spelled})" if spelled else ""
        raise ParamError(f"{path}: {key}: {', '.join(map(str, unknown))} not a language Whisper knows{hint}")
    twice = sorted({lang for lang in languages if list(languages).count(lang) > 1})
    if twice:
        raise ParamError(f"{path}: {key}: {', '.join(twice)} listed more than once; list each language once")


def corpus_languages(audio: dict, path: str = "params.yaml") -> list[str]:
    """``audio.languages``, checked: a non-empty list of Whisper codes. fetch_audio and promote both read
    it; promote alone (``dvc repro promote`` after an edit) must not take a bare ``en`` for e and n."""
    languages = audio.get("languages")
    if not isinstance(languages, list) or not languages:
        raise ParamError(f"{path}: audio.languages must be a non-empty list of language codes")
    check_codes("audio.languages", languages, path)
    return languages


def model_languages(model: nn.Module) -> list[str]:
    """The codes ``model`` has language tokens for: en for an English-only model (tiny.en, ...), else
    the first ``num_languages`` of Whisper's list (99; 100 with large-v3 and turbo, which add yue)."""
    return list(LANGUAGES)[: model.num_languages] if model.is_multilingual else ["en"]


def check_language(model: nn.Module, language: str | None) -> str | None:
    """``language`` as this model's code (None: detect), or a ValueError saying why the model cannot take it.

    An English-only tokenizer has no language tokens, so another language would silently decode as
    English; a 99-language model has no token for yue, and whisper's tokenizer fails obscurely on it.
    """
    if language is None:
        return None
    code = language_code(language)
    if code not in model_languages(model):
        if not model.is_multilingual:
            raise ValueError(
                f"language {language!r}: the model is English-only (an .en model such as tiny.en); give "
                "language en or none, or use a multilingual model"
            )
        raise ValueError(
            f"language {language!r}: not one of this model's {model.num_languages} languages (yue needs a "
            "100-language model: large-v3 or turbo)"
        )
    return code
