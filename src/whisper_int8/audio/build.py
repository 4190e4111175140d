"""Select, split and write the corpus: ``calibration/`` and ``eval/`` with disjoint texts, plus a summary.

Per language the candidate items of every configured source are pooled, sorted by id, de-duplicated by
text, shuffled with ``seed`` and taken in that order, a text already chosen (in any language, or one
that evaluate scores as the same: accents, a parenthesized note) dropped: first every language's
evaluation clips, then every language's calibration clips (so the calibration count never changes an
evaluation set). A language left without evaluation clips stops the build. An
item that fails (bad audio, a transcript empty once normalized, an id that is not a plain file name
or is taken in any language...) is skipped or stops the build according to ``on_error``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import os
import random
import re
import unicodedata
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from whisper.tokenizer import LANGUAGES

from ..fsutil import (
    atomic_outputs,
    atomic_write_bytes,
    check_apart,
    check_dir_output,
    check_file_output,
    json_text,
    sha256_file,
)
from ..languages import check_codes, corpus_languages
from ..params import ParamError, reject_unknown_keys
from ..scoring import normalize
from ..tracking_uri import repo_root
from . import asterisk, hf, kokoro, local
from .errors import AudioInputError, ErrorPolicy
from .manifest import ID_RE, MANIFEST, MAX_ID_BYTES, Clip, Item
from .wavio import MAX_SECONDS, SAMPLE_RATE, wav_bytes

log = logging.getLogger(__name__)

SPLITS = ("calibration", "eval")
AUDIO_DIR = "audio"  # a split's clips; its manifest.jsonl names them audio/<id>.wav
KNOWN_LANGUAGES = set(LANGUAGES)


@dataclass(frozen=True)
class AudioParams:
    languages: list[str]
    sources: dict[str, Any]  # source spec -> [languages] (or {language: dataset config} for hf:)
    calib_per_lang: int
    eval_per_lang: int
    seed: int
    on_error: str
    cache_dir: Path
    asterisk_codec: str = "g722"
    min_words: int = 5
    max_words: int = 25
    tts_threads: int = 1
    workers: int = 2


# Source kinds; for one that takes an argument (``kind:<arg>``): what the argument is, an example.
SOURCE_KINDS: dict[str, tuple[str, str] | None] = {
    "asterisk": None,
    "kokoro": None,
    "local": ("a path (a csv, jsonl or folder)", "local:recordings/manifest.csv"),
    "hf": ("a dataset name", "hf:google/fleurs"),
}
# audio.<key> -> its smallest value (each is an integer)
COUNTS = {"calib_per_lang": 1, "eval_per_lang": 1, "seed": 0, "min_words": 0, "max_words": 0,
          "tts_threads": 0, "workers": 1}  # fmt: skip


def _check_source(spec: Any, langs: Any, path: str) -> None:
    """One ``audio.sources`` entry: a known kind, its argument if it takes one, its languages."""
    kind, sep, arg = str(spec).partition(":")
    if not isinstance(spec, str) or kind not in SOURCE_KINDS:
        raise ParamError(
            f"{path}: audio.sources: unknown source {spec!r} (asterisk, kokoro, local:<path>, hf:<name>)"
        )
    argument = SOURCE_KINDS[kind]
    if argument is not None and not arg.strip():
        raise ParamError(f"{path}: audio.sources: {spec!r} needs {argument[0]}, e.g. {argument[1]}")
    if argument is None and sep:
        raise ParamError(f"{path}: audio.sources: {spec!r}: {kind} takes no argument; write {kind}")
    mapping = kind == "hf" and isinstance(langs, dict)  # hf: may map language -> dataset config
    if not (isinstance(langs, list) or mapping) or not langs:
        raise ParamError(f"{path}: audio.sources.{spec} must list the languages to take from it")
    check_codes(f"audio.sources.{spec}", langs, path)
    configs = [c for c in langs.values() if c is not None and not isinstance(c, str)] if mapping else []
    if configs:
        raise ParamError(
            f"{path}: audio.sources.{spec}: {configs[0]!r} is not a dataset config; map each language "
            "to a config name, e.g. {nl: nl_nl}"
        )
    fixed = {"asterisk": tuple(asterisk.LICENSES), "kokoro": kokoro.LANGUAGES}.get(kind)
    lacking = [lang for lang in langs if fixed is not None and lang not in fixed]
    if lacking:
        raise ParamError(
            f"{path}: audio.sources.{spec}: {', '.join(lacking)} not in this source (it has "
            f"{', '.join(fixed)}); take {'it' if len(lacking) == 1 else 'them'} from another source"
        )


def parse_params(p: dict[str, Any], path: str = "params.yaml") -> AudioParams:
    """Validate the ``audio`` section; every error names the key and what to do."""
    reject_unknown_keys(p, "audio", set(AudioParams.__dataclass_fields__), path)

    def need(key: str) -> Any:
        if key not in p:
            raise ParamError(f"{path}: audio.{key} is missing")
        return p[key]

    need("languages")
    languages = corpus_languages(p, path)
    sources = need("sources")
    if not isinstance(sources, dict) or not sources:
        raise ParamError(
            f"{path}: audio.sources must map each source (asterisk, kokoro, local:<path>, hf:<name>) "
            "to its languages"
        )
    for spec, langs in sources.items():
        _check_source(spec, langs, path)
    uncovered = [lang for lang in languages if not any(lang in langs for langs in sources.values())]
    if uncovered:
        raise ParamError(f"{path}: audio.languages {', '.join(uncovered)} have no source in audio.sources")
    counts = {}
    optional = ("min_words", "max_words", "tts_threads", "workers")
    for key, least in COUNTS.items():
        value = p.get(key, AudioParams.__dataclass_fields__[key].default) if key in optional else need(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            what = "a non-negative integer" if least == 0 else f"an integer >= {least}"
            raise ParamError(f"{path}: audio.{key} must be {what}, got {value!r}")
        counts[key] = value
    if counts["min_words"] > counts["max_words"]:
        raise ParamError(
            f"{path}: audio.min_words ({counts['min_words']}) is above audio.max_words "
            f"({counts['max_words']}); no Asterisk prompt would be kept"
        )
    on_error = need("on_error")
    if on_error not in ("skip", "fail"):
        raise ParamError(f"{path}: audio.on_error must be 'skip' or 'fail', got {on_error!r}")
    codec = p.get("asterisk_codec", "g722")
    if codec not in asterisk.CODECS:
        raise ParamError(f"{path}: audio.asterisk_codec must be one of {asterisk.CODECS}, got {codec!r}")
    cache_dir = p.get("cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise ParamError(
            f"{path}: audio.cache_dir must be a folder path (text, e.g. cache), got {cache_dir!r}"
        )
    env = os.environ.get("WHISPER_INT8_CACHE")
    # A relative audio.cache_dir is the repository's (DVC_ROOT under `dvc exp run --temp/--queue`,
    # which runs stages in a copy), so experiments share one cache instead of refetching everything.
    cache = Path(env) if env else repo_root() / Path(cache_dir or "cache").expanduser()
    return AudioParams(
        languages=list(languages),
        sources=dict(sources),
        on_error=on_error,
        cache_dir=cache.resolve(),
        asterisk_codec=codec,
        **counts,
    )


def _source_items(spec: str, language: str, params: AudioParams) -> list[Item]:
    """Items of an asterisk, kokoro or hf source (local sources are read once per spec in collect())."""
    kind, _, arg = spec.partition(":")
    if kind == "asterisk":
        return asterisk.items(
            language, params.cache_dir, params.asterisk_codec, params.min_words, params.max_words
        )
    if kind == "kokoro":
        return kokoro.items(language, params.cache_dir, params.seed, params.tts_threads)
    configs = params.sources[spec]
    config = configs.get(language) if isinstance(configs, dict) else language  # a list: code = config
    return hf.items(arg, language, config, params.cache_dir)


def collect(params: AudioParams, policy: ErrorPolicy) -> dict[str, list[Item]]:
    """Candidate items per language from every configured source; unusable sources go through ``policy``.

    A local source is read once for all its languages, so a missing one or a bad item counts once.
    """
    pooled: dict[str, list[Item]] = {lang: [] for lang in params.languages}
    for spec, langs in params.sources.items():
        wanted = [lang for lang in langs if lang in pooled]
        if not wanted:
            continue
        if spec.startswith("local:"):
            try:
                found = local.items(spec[6:], list(langs), KNOWN_LANGUAGES, policy)
            except AudioInputError as e:
                policy.handle(e, wanted[0] if len(wanted) == 1 else None)
                continue
            for it in found:  # a listed language that audio.languages leaves out is not used
                if it.language in pooled:
                    pooled[it.language].append(it)
            continue
        for language in wanted:
            try:
                found = _source_items(spec, language, params)
            except AudioInputError as e:
                policy.handle(e, language)
                continue
            pooled[language].extend(found)
    return pooled


@dataclass
class Taken:
    """What the splits hold so far: a text, or a recording, goes to one language and one split only."""

    texts: set[str] = field(default_factory=set)
    sounds: set[str] = field(default_factory=set)  # digests of the decoded samples


# spaces between two characters of scripts written without them ("我们 明天" is "我们明天"; not
# Korean, written with spaces)
_CJK_GAP = re.compile(r"(?<=[\u3040-\u30ff\u3400-\u9fff])\s+(?=[\u3040-\u30ff\u3400-\u9fff])")


def _text_key(text: str) -> str:
    """What makes two transcripts the same text (never in both splits): NFKC (macOS writes NFD), case,
    punctuation, spacing."""
    words = re.sub(r"[^\w\s]", " ", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(_CJK_GAP.sub("", words).split())


@functools.cache
def _text_keys(text: str, language: str) -> frozenset[str]:
    """Every key under which ``text`` is a text already used: its own (:func:`_text_key`) and the form
    evaluate scores, where accents fold and parenthesized notes drop ("verouillée" and "vérouillée",
    "il nostro (enfatico) glorioso" and "il nostro glorioso": one speaker's two takes of a sentence)."""
    return frozenset({_text_key(text), _text_key(normalize(text, language))} - {""})


def _keys(it: Item) -> frozenset[str]:
    return _text_keys(it.text, it.language)


def _pcm_key(pcm: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pcm, dtype="<i2").tobytes()).hexdigest()


def _check_id(it: Item, ids: dict[str, Item]) -> None:
    """An id names the clip's file (``audio/<id>.wav``): unique in the whole corpus, no path in it."""
    if not ID_RE.fullmatch(it.id):
        raise AudioInputError(
            f"{it.source}: id {it.id!r} cannot be a file name; use only letters, digits, '_', '.' and '-'"
        )
    if len(it.id.encode()) > MAX_ID_BYTES:
        raise AudioInputError(
            f"{it.source}: id {it.id[:40]!r}... is {len(it.id.encode())} bytes; at most {MAX_ID_BYTES} "
            "(it names the clip's file)"
        )
    if it.id in ids:
        hint = (
            "; ids must be unique: a local: clip without an id is named by its path inside its source, "
            "so the same path in two sources collides, or one listed twice in a manifest (merge the "
            "sources as subfolders of one, drop the repeated row, or give ids)"
            if it.source.startswith("local:") and ids[it.id].source.startswith("local:")
            else ""
        )
        raise AudioInputError(f"{it.source}: duplicate id {it.id!r} (also {ids[it.id].source}){hint}")


def _unique(items: list[Item], policy: ErrorPolicy, ids: dict[str, Item]) -> list[Item]:
    """Sorted by id; bad ids and ids in ``ids`` go through ``policy``; a text keeps its first item only."""
    texts: set[str] = set()
    out = []
    for it in sorted(items, key=lambda i: (i.id, i.source)):
        try:
            _check_id(it, ids)
        except AudioInputError as e:
            policy.handle(e, it.language)
            continue
        ids[it.id] = it
        key = _text_key(it.text)
        if key in texts:
            log.debug("%s: same text as an earlier item, not used (a text goes in one split only)", it.id)
            continue
        texts.add(key)
        out.append(it)
    return out


def _decode(item: Item) -> np.ndarray:
    if not item.text.strip():
        raise AudioInputError(f"{item.source}: empty transcript")
    if not normalize(item.text, item.language):  # "...", "[inaudible]": evaluate could not score it
        raise AudioInputError(f"{item.source}: transcript {item.text.strip()!r} has no words once normalized")
    return item.load()


def _decoded(order: list[Item], pool: ThreadPoolExecutor, ahead: int) -> Iterator[tuple[Item, Future]]:
    """``(item, future pcm)`` in ``order``, decoding up to ``ahead`` items ahead on ``pool``'s threads.

    Synthesis (ONNX Runtime) and ffmpeg release the GIL, so two workers use both cores; what comes
    out, and in which order, is the same for any worker count. One pool serves the whole selection:
    its threads keep their Kokoro sessions (one per thread) from one language and split to the next.
    """
    pending: deque[tuple[Item, Future]] = deque()
    items = iter(order)
    try:
        for item in itertools.islice(items, ahead):
            pending.append((item, pool.submit(_decode, item)))
        while pending:
            item, future = pending.popleft()
            following = next(items, None)
            if following is not None:
                pending.append((following, pool.submit(_decode, following)))
            yield item, future
    finally:  # the split is full (or a failure stops the build): drop what has not started
        for _, future in pending:
            future.cancel()
        wait([future for _, future in pending])


def _take(
    language: str,
    split: str,
    wanted: int,
    order: list[Item],
    params: AudioParams,
    policy: ErrorPolicy,
    bar: tqdm,
    taken: Taken,
    pool: ThreadPoolExecutor,
) -> tuple[list, list[Item]]:
    """The first ``wanted`` items of ``order`` that decode, whose text and audio are not ``taken``.

    Returns ``([(item, pcm)], the items after the last one tried)``; the chosen ones join ``taken``.
    Items decoded ahead but not tried are decoded again by the next call (a cached synthesis or one
    ffmpeg run each), so what is chosen never depends on the worker count.
    """
    candidates = [it for it in order if not _keys(it) & taken.texts]
    chosen: list = []
    tried = 0
    for it, future in _decoded(candidates, pool, params.workers) if wanted else ():
        tried += 1
        if _keys(it) & taken.texts:  # scored as the text of a clip chosen in this call
            log.info("%s: the same text as a clip already chosen, not used (a text goes in one split)", it.id)
            continue
        try:
            pcm = future.result()
        except AudioInputError as e:
            policy.handle(e, language)
            continue
        if len(pcm) > MAX_SECONDS * SAMPLE_RATE:
            log.info(
                "%s: %.1f s, longer than %d s; kept (evaluation handles long audio)",
                it.id,
                len(pcm) / SAMPLE_RATE,
                MAX_SECONDS,
            )
        sound = _pcm_key(pcm)
        if sound in taken.sounds:  # one recording under two transcripts (a copied file)
            log.info(
                "%s: the same audio as a clip already chosen, not used (a recording goes in one split)", it.id
            )
            continue
        chosen.append((it, pcm))
        taken.texts |= _keys(it)
        taken.sounds.add(sound)
        bar.update(1)
        if len(chosen) == wanted:
            break
    if len(chosen) < wanted:
        log.warning("%s: only %d of %d %s clips (sources ran out)", language, len(chosen), wanted, split)
    return chosen, candidates[tried:]


def select(pooled: dict[str, list[Item]], params: AudioParams, policy: ErrorPolicy, bar: tqdm) -> dict:
    """Decode items in each language's seeded order until its splits are full: {split: [(item, pcm)]}.

    Every language's evaluation clips are chosen before any calibration clip, and a text goes to one
    language and one split only (the Asterisk prompt "M I S D N" exists in en, es and fr). So a
    calibration count never changes any language's evaluation set.
    """
    ids: dict[str, Item] = {}
    orders = {}
    for language in params.languages:
        orders[language] = _unique(pooled[language], policy, ids)
        random.Random(f"{params.seed}:{language}").shuffle(orders[language])
    lacking = [language for language, order in orders.items() if not order]
    if params.eval_per_lang and lacking:  # before any clip is decoded or synthesized
        raise AudioInputError(
            f"audio.languages: no candidate clip for {', '.join(lacking)}: every source of "
            f"{'it' if len(lacking) == 1 else 'them'} was skipped or empty (see the log); fix the source "
            "under audio.sources or remove the language from audio.languages"
        )
    with ThreadPoolExecutor(max_workers=params.workers, thread_name_prefix="fetch_audio") as pool:
        return _choose(orders, params, policy, bar, pool)


def _choose(
    orders: dict[str, list[Item]],
    params: AudioParams,
    policy: ErrorPolicy,
    bar: tqdm,
    pool: ThreadPoolExecutor,
) -> dict:
    """Evaluation clips of every language, then calibration clips: {split: [(item, pcm)]}."""
    taken = Taken()
    chosen: dict[str, list] = {s: [] for s in SPLITS}
    rest: dict[str, list[Item]] = {}
    empty = []
    for language, order in orders.items():
        picked, rest[language] = _take(
            language, "eval", params.eval_per_lang, order, params, policy, bar, taken, pool
        )
        if params.eval_per_lang and not picked:
            empty.append(f"{language} ({len(order)} candidate texts)")
        chosen["eval"] += picked
    if empty:
        raise AudioInputError(
            f"audio.languages: no evaluation clip for {', '.join(empty)}: each candidate was skipped (see "
            "the log) or its text is used by another language; add a source for each under audio.sources "
            "or remove it from audio.languages"
        )
    for language in params.languages:
        picked, _ = _take(
            language, "calibration", params.calib_per_lang, rest[language], params, policy, bar, taken, pool
        )
        chosen["calibration"] += picked
    if not chosen["calibration"]:  # calibrate needs clips: stop here, not one stage later
        raise AudioInputError(
            "audio.calib_per_lang: no calibration clip in any language: the evaluation split took every "
            "usable candidate; lower audio.eval_per_lang or add sources"
        )
    return chosen


def _write_split(dest: Path, chosen: list[tuple[Item, Any]]) -> list[Clip]:
    clips = []
    for it, pcm in sorted(chosen, key=lambda c: c[0].id):
        rel = f"{AUDIO_DIR}/{it.id}.wav"
        atomic_write_bytes(dest / rel, wav_bytes(pcm))
        clips.append(
            Clip(
                id=it.id,
                language=it.language,
                audio=rel,
                text=it.text.strip(),
                duration=round(len(pcm) / SAMPLE_RATE, 4),
                sha256=sha256_file(dest / rel),
                source=it.source,
                license=it.license,
            )
        )
    (dest / MANIFEST).write_text("".join(c.to_json() + "\n" for c in clips), encoding="utf-8")
    return clips


def _check_disjoint(chosen: dict[str, list]) -> None:
    """No text or recording in both splits: an evaluation clip seen in calibration would flatter the
    INT8 model."""
    for keys, what in ((lambda it, _: _keys(it), "text"), (lambda _, pcm: {_pcm_key(pcm)}, "audio")):
        calibration = {key: it for it, pcm in chosen["calibration"] for key in keys(it, pcm)}
        for it, pcm in chosen["eval"]:
            other = next((calibration[k] for k in sorted(keys(it, pcm)) if k in calibration), None)
            if other is not None:
                raise RuntimeError(
                    f"fetch_audio: the {what} of {it.id} selected for both splits ({other.id} in "
                    "calibration); a bug in the selection, please report it"
                )


def build(
    params: AudioParams, calib_dir: Path, eval_dir: Path, summary_path: Path, where: str = "params.yaml"
) -> dict:
    """Write both splits and the summary, all or none: on ``on_error: fail``, or any error, the previous
    outputs stay untouched.
    ``where``: the parameter file ``params`` came from, named by an error in them."""
    check_apart(calib_dir, eval_dir, summary_path)  # before any work: one would replace the other
    check_file_output(summary_path)  # and so before either split is replaced
    for split_dir in (calib_dir, eval_dir):
        check_dir_output(split_dir, (MANIFEST, AUDIO_DIR))
    for spec in params.sources:  # a mistyped path: before any source is fetched
        if spec.startswith("local:"):
            local.check_source(spec[len("local:") :], where)
    policy = ErrorPolicy(params.on_error)
    pooled = collect(params, policy)
    total = len(params.languages) * (params.calib_per_lang + params.eval_per_lang)
    with tqdm(total=total, desc="fetch_audio", unit="clip") as bar:
        chosen = select(pooled, params, policy, bar)
    _check_disjoint(chosen)
    written: dict[str, list[Clip]] = {}
    # both splits and the summary replaced, or none (a summary left from the last build would count
    # other clips)
    with atomic_outputs((calib_dir, eval_dir), (summary_path,)) as ((ctmp, etmp), (stmp,)):
        written["calibration"] = _write_split(ctmp, chosen["calibration"])
        written["eval"] = _write_split(etmp, chosen["eval"])
        summary = _summary(params, written, policy)
        stmp.write_text(json_text(summary), encoding="utf-8")
    return summary


def _summary(params: AudioParams, written: dict[str, list[Clip]], policy: ErrorPolicy) -> dict:
    splits: dict[str, dict] = {}
    for split, clips in written.items():
        per = {lang: {"clips": 0, "minutes": 0.0} for lang in params.languages}
        for c in clips:
            per[c.language]["clips"] += 1
            per[c.language]["minutes"] += c.duration / 60
        for v in per.values():
            v["minutes"] = round(v["minutes"], 3)
        splits[split] = {
            "languages": per,
            "clips": len(clips),
            "minutes": round(sum(c.duration for c in clips) / 60, 3),
        }
    sources = {
        lang: sorted({c.source.split(":")[0] for s in written.values() for c in s if c.language == lang})
        for lang in params.languages
    }
    kinds = {c.source.partition(":") for clips in written.values() for c in clips}
    sounds = {package for kind, _, package in kinds if kind == "asterisk"}
    packages = {k: v for pkg in sorted(sounds) for k, v in asterisk.versions(pkg, params.cache_dir).items()}
    return {
        "splits": splits,
        "sources": sources,
        # what a rerun on another machine must fetch to get the same clips
        "debian_packages": packages,
        "skipped": {"count": len(policy.skipped), "by_language": policy.counts(), "items": policy.skipped},
        "params": {
            "calib_per_lang": params.calib_per_lang,
            "eval_per_lang": params.eval_per_lang,
            "seed": params.seed,
            "asterisk_codec": params.asterisk_codec,
            "on_error": params.on_error,
        },
    }
