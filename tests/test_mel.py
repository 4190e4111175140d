"""log_mel_window: openai-whisper's 30 s log-Mel without the STFT of the padding, same values."""

from __future__ import annotations

import pytest
import torch
import whisper

from whisper_int8.mel import log_mel_window


def _tone(n: int) -> torch.Tensor:
    """A modulated tone plus noise: a spectrum with a real maximum, as speech has."""
    t = torch.arange(n) / 16000
    noise = 0.01 * torch.randn(n, generator=torch.Generator().manual_seed(n))
    return (0.3 * torch.sin(2 * torch.pi * 220 * t) * torch.sin(2 * torch.pi * 3 * t) + noise).float()


def _whisper(audio: torch.Tensor, n_mels: int) -> torch.Tensor:
    return whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), n_mels)


# 479320 samples is the longest clip with a frame of pure padding (the short path); from 479321 on, and
# for 30 s or more, log_mel_window hands the clip to whisper as it is
@pytest.mark.parametrize("n", [16000, 64037, 200000, 479320, 479321, 480000, 500000])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_same_values_as_whisper(n: int, n_mels: int) -> None:
    audio = _tone(n)
    assert torch.equal(log_mel_window(audio, n_mels), _whisper(audio, n_mels))


@pytest.mark.parametrize("n", [0, 1, 399, 1000])
def test_very_short_audio_within_rounding(n: int) -> None:
    audio = _tone(n)
    mel = log_mel_window(audio, 80)
    assert mel.shape == (80, 3000)
    torch.testing.assert_close(mel, _whisper(audio, 80), rtol=0, atol=1e-6)


def test_padding_frames_are_the_silent_value() -> None:
    """Frames past the audio hold Whisper's floor (max - 8, normalised), not zeros or garbage."""
    mel = log_mel_window(_tone(16000), 80)
    floor = mel.max() - 2.0  # (max - 8 + 4) / 4 = normalised max - 2
    assert torch.all(mel[:, 110:] == floor)
    assert not torch.all(mel[:, :100] == floor)
