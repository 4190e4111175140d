"""Bad-input handling: every problem names the file and the cause; ``on_error`` says skip or stop."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


class AudioInputError(ValueError):
    """An input clip, transcript, manifest row or source cannot be used; the message names it and why."""


class FfmpegMissingError(AudioInputError):
    """No ffmpeg to decode with: the machine's fault, not the clip's (a server answers HTTP 500)."""


@dataclass
class ErrorPolicy:
    """``skip`` logs the problem and counts it per language; ``fail`` raises it at once (and so does
    ``skip`` for a missing ffmpeg, which no other clip gets past)."""

    mode: str = "skip"
    skipped: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', got {self.mode!r}")

    def handle(self, error: AudioInputError, language: str | None = None) -> None:
        # no ffmpeg is the machine's fault, not the clip's: skipped, it failed every clip in turn (Kokoro
        # synthesizing each first) and the build then blamed the sources ("add a source for each")
        if self.mode == "fail" or isinstance(error, FfmpegMissingError):
            raise error
        log.warning("skipped: %s", error)
        self.skipped.append({"language": language, "cause": str(error)})

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s["language"] or "?" for s in self.skipped).items()))
