"""Decoding, conversion and checks of single clips (ffmpeg; numpy tones as fixtures)."""

from __future__ import annotations

import os
import re
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from whisper_int8.audio import AudioInputError
from whisper_int8.audio.wavio import SAMPLE_RATE, convert_array, decode_file, load_audio, read_wav, wav_bytes


def write_tone(
    path: Path,
    freq: float = 440.0,
    seconds: float = 1.0,
    rate: int = 16000,
    channels: int = 1,
    amplitude: float = 0.3,
) -> Path:
    """A sine as 16-bit PCM WAV at any rate and channel count (the test fixture for 'speech')."""
    t = np.arange(int(seconds * rate)) / rate
    mono = (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(mono[:, None], channels, axis=1).tobytes())
    return path  # fmt: skip


def dominant_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE)[spectrum.argmax()])


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (8000, 1), (48000, 1), (16000, 2)])
def test_resampling_keeps_the_pitch(tmp_path, rate, channels):
    pcm = decode_file(write_tone(tmp_path / "a.wav", 440.0, 2.0, rate, channels))
    assert len(pcm) == pytest.approx(2 * SAMPLE_RATE, abs=2)
    assert dominant_hz(pcm) == pytest.approx(440.0, abs=1.0)
    assert np.abs(pcm).max() == pytest.approx(0.3 * 32767, rel=0.05)  # stereo downmix keeps the level


@pytest.mark.parametrize("rate", [16000, 44100])  # read directly, decoded by ffmpeg
def test_load_audio_reads_only_the_start_of_a_longer_file(tmp_path, rate):
    """A server's bound on a request: a 2 h file was decoded whole (seconds, 1 GB) to be refused."""
    path = write_tone(tmp_path / "long.wav", seconds=3.0, rate=rate)
    assert len(load_audio(path)) == pytest.approx(3 * SAMPLE_RATE, abs=2)
    start = load_audio(path, max_seconds=1.0)
    assert len(start) == pytest.approx(SAMPLE_RATE, abs=2)
    np.testing.assert_allclose(start[:15000], load_audio(path)[:15000], atol=1e-4)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(path.read_bytes()[: 44 + 2 * rate])  # the header declares 3 s, 1 s is there
    with pytest.raises(AudioInputError, match=rf"\({rate} of the {3 * rate} frames its header declares\)"):
        load_audio(cut, max_seconds=1.5)  # the header's count, not the part asked for


def test_convert_array_resamples_float_input():
    t = np.arange(24000) / 24000
    pcm = convert_array(0.5 * np.sin(2 * np.pi * 1000 * t), 24000, "tone")
    assert len(pcm) == SAMPLE_RATE
    assert dominant_hz(pcm) == pytest.approx(1000.0, abs=1.0)


def test_wav_bytes_are_canonical_and_round_trip(tmp_path):
    pcm = decode_file(write_tone(tmp_path / "a.wav", rate=22050))
    assert wav_bytes(pcm) == wav_bytes(decode_file(tmp_path / "a.wav"))
    (tmp_path / "b.wav").write_bytes(wav_bytes(pcm))
    np.testing.assert_array_equal((read_wav(tmp_path / "b.wav") * 32768).astype(np.int16), pcm)


def test_read_wav_rejects_other_formats(tmp_path):
    with pytest.raises(AudioInputError, match=r"a\.wav: not a 16 kHz mono 16-bit PCM WAV"):
        read_wav(write_tone(tmp_path / "a.wav", rate=8000))


@pytest.mark.parametrize("layout", [["-ac", "1"], ["-ac", "2", "-ar", "44100"]])
def test_a_wav_written_to_a_pipe_is_not_taken_for_truncated(tmp_path, layout):
    """Regression: the truncation check read ffmpeg's placeholder length (0xFFFFFFFF) of a WAV written
    to a pipe as 1,073,741,823 missing frames, and refused a valid file."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=1:r=16000", *layout]
    streamed = subprocess.run([*cmd, "-f", "wav", "-"], capture_output=True, check=True).stdout
    assert streamed[4:8] == b"\xff\xff\xff\xff"  # the placeholder RIFF size: really streamed
    path = tmp_path / "s.wav"
    path.write_bytes(streamed)
    assert len(decode_file(path)) == SAMPLE_RATE and len(load_audio(path)) == SAMPLE_RATE


def test_a_recording_stopped_mid_write_reads_its_whole_frames(tmp_path):
    """Regression: a streamed WAV (placeholder length) ending mid-sample was numpy's "buffer size must be
    a multiple of element size", naming no file; one whose writer left 0 as the length read as empty."""
    pcm = (0.3 * 32767 * np.sin(np.arange(16000) / 5)).astype("<i2")
    head = wav_bytes(pcm)[:44]  # the canonical 44-byte header, then the samples
    for size, tail, frames in ((0xFFFFFFFF, b"\x01", 16000), (0, b"", 16000), (0, b"\x01", 16000)):
        path = tmp_path / f"s{size}-{len(tail)}.wav"
        riff = size.to_bytes(4, "little") if size == 0 else head[4:8]  # a 0 placeholder is in both
        path.write_bytes(head[:4] + riff + head[8:40] + size.to_bytes(4, "little") + pcm.tobytes() + tail)
        np.testing.assert_array_equal(read_wav(path), pcm.astype(np.float32) / 32768.0)
        assert len(load_audio(path)) == frames == len(decode_file(path))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(head[:40] + bytes(4))  # a header and no sample: empty, not streamed
    assert read_wav(empty).size == 0


@pytest.mark.parametrize("codec", ["pcm_s24le", "pcm_f32le"])
def test_a_truncated_wav_of_any_sample_format_is_refused(tmp_path, codec):
    """Regression (a review): Python's wave refuses WAVE_FORMAT_EXTENSIBLE (24-bit, float, as
    recorders write them), so a copy of one cut short skipped the check and ffmpeg decoded its part."""
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "sine=d=2:r=48000", "-ac", "2"]
    path = tmp_path / "rec.wav"
    subprocess.run([*cmd, "-c:a", codec, str(path)], check=True)
    assert path.read_bytes()[20:22] == b"\xfe\xff"  # WAVE_FORMAT_EXTENSIBLE: what the fix is for
    assert len(decode_file(path)) == 2 * SAMPLE_RATE  # whole: decoded by ffmpeg
    path.write_bytes(path.read_bytes()[: 48000 * 2 * 3 // 2])
    for read in (decode_file, load_audio):
        with pytest.raises(AudioInputError, match=r"rec\.wav: truncated WAV \(\d+ of the 96000 frames"):
            read(path)


def test_odd_wav_headers_are_read_or_refused_as_before(tmp_path):
    """Regression (a review of the RIFF reader): a file cut inside its header raised struct.error; a
    0-byte data chunk followed by metadata gave the metadata as samples; a data size that is no
    whole number of frames was "truncated" with every whole frame there."""
    pcm = (0.3 * 32767 * np.sin(np.arange(16000) / 5)).astype("<i2")
    whole = wav_bytes(pcm)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole[:30])
    with pytest.raises(AudioInputError, match=r"cut\.wav: unreadable or corrupt audio"):
        load_audio(cut)
    tagged = tmp_path / "tagged.wav"
    info = (
        b"LIST" + (26).to_bytes(4, "little") + b"INFOISFT" + (14).to_bytes(4, "little") + b"some encoder\0\0"
    )
    body = whole[12:36] + b"data" + bytes(4) + info
    tagged.write_bytes(b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WAVE" + body)
    assert read_wav(tagged).size == 0
    odd = tmp_path / "odd.wav"
    odd.write_bytes(whole[:40] + (len(pcm) * 2 + 1).to_bytes(4, "little") + pcm.tobytes())
    assert len(read_wav(odd)) == len(pcm)


def test_a_path_that_cannot_be_read_is_one_line_naming_it(tmp_path):
    """Regression: a folder (or a file without read permission) was an IsADirectoryError or
    PermissionError traceback in the CLI and a generic HTTP 500 from a server."""
    with pytest.raises(
        AudioInputError, match=rf"^{re.escape(str(tmp_path))}: cannot be read \(Is a directory\)$"
    ):
        load_audio(tmp_path)


def test_what_holds_no_audio_is_refused_before_it_is_opened(tmp_path, monkeypatch):
    """Regression (a security review): a request naming /proc/kmsg (a regular file of 0 bytes) held a
    server's worker for good, blocked in its read until the kernel logged something; a FIFO's open
    waits for a writer. Kernel files of 0 bytes and special files are now refused unopened."""
    import whisper_int8.audio.wavio as wavio

    monkeypatch.setattr(wavio, "_canonical_samples", lambda *a: pytest.fail("opened"))
    empty = tmp_path / "empty.wav"
    empty.touch()
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    refused = {
        empty: r"zero-length audio \(the file reports 0 bytes\)",
        fifo: r"not an audio file \(a device, pipe or socket\)",
        Path("/dev/zero"): "not an audio file",
    }
    if Path("/proc/self/environ").is_file():  # Linux: bytes to read, but a size of 0
        refused[Path("/proc/self/environ")] = "zero-length audio"
    for path, message in refused.items():
        with pytest.raises(AudioInputError, match=f"^{re.escape(str(path))}: {message}"):
            load_audio(path)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_truncated_wav_is_refused_not_read_in_part(tmp_path, rate):
    """Regression: a WAV cut short (a copy stopped part-way) was read, decoded and evaluated in part."""
    path = write_tone(tmp_path / "a.wav", rate=rate, seconds=1.0)
    path.write_bytes(path.read_bytes()[:3000])
    message = rf"a\.wav: truncated WAV \(1478 of the {rate} frames its header declares\)"
    for read in (decode_file, load_audio, *([read_wav] if rate == 16000 else [])):
        with pytest.raises(AudioInputError, match=message):
            read(path)


@pytest.mark.parametrize(
    ("content", "cause"),
    [(b"", "zero-length audio"), (b"RIFF\x00\x00not audio" * 10, "unreadable or corrupt audio")],
)
def test_bad_files_name_the_file_and_the_cause(tmp_path, content, cause):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioInputError, match=cause) as err:
        decode_file(path)
    assert str(path) in str(err.value)


def test_zero_samples_and_silence_are_rejected(tmp_path):
    with pytest.raises(AudioInputError, match=r"empty\.wav: zero-length audio"):
        decode_file(write_tone(tmp_path / "empty.wav", seconds=0))
    with pytest.raises(AudioInputError, match=r"quiet\.wav: silent clip"):
        decode_file(write_tone(tmp_path / "quiet.wav", amplitude=0.0005))


def test_missing_file(tmp_path):
    with pytest.raises(AudioInputError, match=r"nope\.wav: audio file not found"):
        decode_file(tmp_path / "nope.wav")


@pytest.mark.parametrize("name", ["call-10:30.wav", "2024-01-05T10:30/take.wav"])
def test_a_relative_name_with_a_colon_is_a_file_not_a_url(tmp_path, monkeypatch, name):
    """Regression (a review): ffmpeg took "call-10" in ``call-10:30.wav`` (or a folder named by an ISO
    time, as local:2024-01-05T10:30) for a URL protocol: every clip was "unreadable or corrupt audio
    (Did you mean file:...)"; a corrupt one keeps ffmpeg's reason without the path repeated."""
    write_tone(tmp_path / name, rate=8000)
    monkeypatch.chdir(tmp_path)
    assert len(decode_file(name)) == 16000
    assert len(load_audio(name)) == 16000
    (tmp_path / name).write_bytes(b"not audio")
    corrupt = rf"^{re.escape(name)}: unreadable or corrupt audio \(Invalid data"
    with pytest.raises(AudioInputError, match=corrupt):
        decode_file(name)
