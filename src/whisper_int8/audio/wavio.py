"""Decode any audio with ffmpeg into 16 kHz mono 16-bit PCM, check it, and write canonical WAV bytes.

Everything goes through one ffmpeg command line so that stereo, other sample rates and codecs
(including the raw G.722 of the Asterisk ``-g722`` packages) are converted the same way, and the
result is byte-identical from run to run.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import stat
import struct
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import AudioInputError, FfmpegMissingError

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 100  # 10 ms: one number, or a few, is no clip
# A clip whose loudest sample is below -50 dBFS carries no speech.
SILENCE_PEAK = 0.003
MAX_SECONDS = 30.0  # Whisper's window; longer clips are kept (evaluation handles long audio) but logged


def _ffmpeg() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise FfmpegMissingError(
            "ffmpeg not found on PATH; install it (Debian: apt-get install ffmpeg, or `make setup`)"
        )
    return exe


def _file_input(path: Path | str) -> str:
    """``path`` as ffmpeg's input: ffmpeg reads a name that starts like ``scheme:`` as a URL, so a
    relative ``call-10:30.wav`` or ``2024-01-05T10:30/x.wav`` was "unreadable or corrupt audio (Did you
    mean file:...)"; ``./`` keeps it a file, as an absolute path is."""
    text = str(path)
    return text if os.path.isabs(text) else os.path.join(".", text)


def _run_ffmpeg(
    input_args: list[str], name: str, stdin: bytes | None = None, max_seconds: float | None = None
) -> np.ndarray:
    cmd = [
        _ffmpeg(),
        *([] if stdin is not None else ["-nostdin"]),
        "-hide_banner",
        "-loglevel",
        "error",
        "-threads",
        "1",
        *input_args,
        *([] if max_seconds is None else ["-t", f"{max_seconds:.6f}"]),
        "-ac",
        "1",
        "-ar",
        str(SAMPLE_RATE),
        "-f",
        "s16le",
        "-acodec",
        "pcm_s16le",
        "-",
    ]
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        cause = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        source = input_args[input_args.index("-i") + 1]  # ffmpeg starts its reason with it
        reason = cause[-1].removeprefix(f"{source}: ").removeprefix(f"{name}: ") if cause else "ffmpeg failed"
        raise AudioInputError(f"{name}: unreadable or corrupt audio ({reason})")
    return np.frombuffer(proc.stdout, dtype="<i2").copy()


def decode_file(path: Path | str, fmt: str | None = None) -> np.ndarray:
    """Decode ``path`` (any format ffmpeg reads; ``fmt`` forces a demuxer: ``g722``) to 16 kHz mono int16."""
    path = Path(path)
    if not path.is_file():
        raise AudioInputError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: zero-length audio (empty file)")
    _canonical_samples(path)  # a truncated WAV is refused, not decoded in part
    args = (["-f", fmt] if fmt else []) + ["-i", _file_input(path)]
    return check_pcm(_run_ffmpeg(args, str(path)), str(path))


def decode_bytes(data: bytes, name: str) -> np.ndarray:
    """Decode an encoded file held in memory (any format ffmpeg reads) to 16 kHz mono int16."""
    if not data:
        raise AudioInputError(f"{name}: zero-length audio (no bytes)")
    return check_pcm(_run_ffmpeg(["-i", "pipe:0"], name, stdin=data), name)


def resample(samples: np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    """A float waveform in [-1, 1] (mono, or shape (n, channels)) as 16 kHz mono int16."""
    samples = np.asarray(samples, dtype="<f4")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    args = ["-f", "f32le", "-ar", str(int(sample_rate)), "-ac", str(channels), "-i", "pipe:0"]
    return _run_ffmpeg(args, name, stdin=samples.tobytes())


def convert_array(samples: np.ndarray, sample_rate: int, name: str) -> np.ndarray:
    """:func:`resample`, refusing an empty or silent result."""
    return check_pcm(resample(samples, sample_rate, name), name)


def check_length(samples: np.ndarray, name: str, hint: str = "") -> None:
    """Refuse no 16 kHz samples, or fewer than :data:`MIN_SAMPLES`: for a few, Whisper makes up words."""
    if samples.size == 0:
        raise AudioInputError(f"{name}: holds no audio (0 samples)")
    if samples.size < MIN_SAMPLES:
        raise AudioInputError(
            f"{name}: {samples.size} sample(s), {1000 * samples.size / SAMPLE_RATE:.2f} ms at 16 kHz: too "
            f"short for speech (at least {1000 * MIN_SAMPLES // SAMPLE_RATE} ms){hint}"
        )


def check_pcm(pcm: np.ndarray, name: str) -> np.ndarray:
    """Reject empty, too short (:func:`check_length`: what serving refuses is no corpus clip either)
    and silent clips with a message naming ``name``."""
    if pcm.size == 0:
        raise AudioInputError(f"{name}: zero-length audio (no samples after decoding)")
    check_length(pcm, name)
    peak = float(np.abs(pcm.astype(np.int32)).max()) / 32768.0
    if peak < SILENCE_PEAK:
        raise AudioInputError(f"{name}: silent clip (peak {20 * np.log10(max(peak, 1e-9)):.0f} dBFS)")
    return pcm


def wav_bytes(pcm: np.ndarray) -> bytes:
    """Canonical 16 kHz mono 16-bit WAV bytes (no metadata, so identical input gives identical bytes)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.asarray(pcm, dtype="<i2").tobytes())
    return buf.getvalue()


# A WAV written to a pipe cannot seek back to its header: it declares a placeholder length there
# (0xFFFFFFFF from ffmpeg, 0x7FFFF000 from sox, 0x7FFFFFFF from arecord, 0 from some streaming
# writers); for those, every whole frame the file holds is read and nothing is checked against it.
STREAMED_WAV_BYTES = 0x7FFFF000


@dataclass(frozen=True)
class _WavHeader:
    canonical: bool  # 16 kHz mono 16-bit PCM: read here, not by ffmpeg
    block: int  # bytes per frame
    rate: int
    data_at: int  # file offset of the first sample
    declared: int  # data bytes the header declares
    placeholder: bool  # the RIFF size is a pipe's placeholder (0 or ~4 GB): the data runs to the end


def _wav_header(f: io.BufferedReader) -> _WavHeader | None:
    """The RIFF/WAVE header of ``f`` in any sample format (also WAVE_FORMAT_EXTENSIBLE and float, as
    24-bit and multichannel recorders write, which Python's ``wave`` refuses); None for another file.
    ``f`` is then at the first sample."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        return None
    riff = int.from_bytes(head[4:8], "little")
    fmt = None
    while len(chunk := f.read(8)) == 8:
        name, size = chunk[:4], int.from_bytes(chunk[4:], "little")
        if name == b"data":
            if fmt is None or not fmt[3]:
                return None
            tag, channels, rate, block, bits = fmt
            canonical = (tag, channels, rate, bits) == (1, 1, SAMPLE_RATE, 16)
            placeholder = riff == 0 or riff >= STREAMED_WAV_BYTES
            return _WavHeader(canonical, block, rate, f.tell(), size, placeholder)
        if name == b"fmt " and 16 <= size <= 4096:
            body = f.read(size + size % 2)
            if len(body) < size:  # the file ends inside its header
                return None
            tag, channels, rate, _, block, bits = struct.unpack_from("<HHIIHH", body)
            if tag == 0xFFFE and size >= 26:  # EXTENSIBLE: the format is its SubFormat's first two bytes
                tag = struct.unpack_from("<H", body, 24)[0]
            fmt = (tag, channels, rate, block, bits)
        else:
            f.seek(size + size % 2, os.SEEK_CUR)
    return None


def _canonical_samples(path: Path | str, max_seconds: float | None = None) -> np.ndarray | None:
    """The int16 samples of a 16 kHz mono 16-bit PCM WAV (its first ``max_seconds``), None for any
    other file. A WAV of any sample format cut short (a copy or download stopped part-way) is an error:
    ffmpeg would decode the part that is there. A file that cannot be opened (permissions, a folder)
    is one too. Only the samples of a canonical WAV are read, never a whole recording's."""
    try:
        with open(path, "rb") as f:
            header = _wav_header(f)
            if header is None:
                return None
            held = os.fstat(f.fileno()).st_size - header.data_at
            # a 0-byte data chunk is a placeholder only beside a placeholder RIFF size (else: no audio,
            # and what follows is metadata, not samples)
            zero = header.declared == 0 and held > 0 and header.placeholder
            streamed = header.declared >= STREAMED_WAV_BYTES or zero
            frames = (held if streamed else header.declared) // header.block  # streamed: whole frames
            if held // header.block < frames:
                raise AudioInputError(
                    f"{path}: truncated WAV ({held // header.block} of the {frames} frames its header "
                    "declares); copy or fetch it again"
                )
            if not header.canonical:
                return None
            if max_seconds is not None:
                frames = min(frames, math.ceil(max_seconds * header.rate))
            data = f.read(header.block * frames)
    except (FileNotFoundError, AudioInputError):
        raise
    except OSError as e:
        raise AudioInputError(f"{path}: cannot be read ({e.strerror or e})") from None
    return np.frombuffer(data, dtype="<i2")


def read_wav(path: Path | str) -> np.ndarray:
    """Read a 16 kHz mono 16-bit WAV written by :func:`wav_bytes` as float32 in [-1, 1]."""
    samples = _canonical_samples(path)
    if samples is None:
        raise AudioInputError(f"{path}: not a 16 kHz mono 16-bit PCM WAV")
    return samples.astype(np.float32) / 32768.0


def check_regular(path: Path | str, name: str | None = None) -> None:
    """Refuse, before opening it, what holds no audio: a folder, device or pipe (a FIFO's open waits
    for a writer, /dev/zero never ends), or a file of 0 bytes, as /proc's files report themselves:
    reading /proc/kmsg blocks until the kernel logs something, which held a server's worker for good.
    A missing file stays a FileNotFoundError. ``name``: how the messages call it (the path)."""
    name = name or str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise
    except OSError as e:  # a name too long, a link loop, no permission
        raise AudioInputError(f"{name}: cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise AudioInputError(f"{name}: cannot be read (Is a directory)")
    if not stat.S_ISREG(info.st_mode):
        raise AudioInputError(f"{name}: not an audio file (a device, pipe or socket)")
    if info.st_size == 0:
        raise AudioInputError(f"{name}: zero-length audio (the file reports 0 bytes)")


def load_audio(path: Path | str, max_seconds: float | None = None) -> np.ndarray:
    """16 kHz mono float32 for the model: our WAVs are read directly, anything else is decoded by ffmpeg
    as ``whisper.load_audio`` does (the same resampling, int16 / 32768), except that an undecodable
    file is an :class:`AudioInputError` naming it and ffmpeg's reason, not ffmpeg's whole banner.
    ``max_seconds``: only the start of a longer file is read (a server's bound on a request's work).
    Only a regular file of at least one byte is opened (:func:`check_regular`)."""
    check_regular(path)
    samples = _canonical_samples(path, max_seconds)
    if samples is None:
        samples = _run_ffmpeg(["-i", _file_input(path)], str(path), max_seconds=max_seconds)
    return samples.astype(np.float32) / 32768.0
