"""What was said or captioned: the one record every source of words produces.

Three sources feed it (issue 19): closed captions carried in the video stream (CEA-608/708 as A53 side
data), subtitle tracks of the container or sidecar files, and speech recognition on the audio. Whatever
produced a line, the rest of the pipeline (memory, search, standing queries, moderation, the timeline)
sees only ``TranscriptLine``s, so a caption and a recognised phrase are searched and shown alike and the
evidence can say where its words came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Where the words came from. Ranking prefers captions and subtitles (authored) over recognition (guessed).
TranscriptSource = Literal["caption", "subtitle", "asr"]
TRANSCRIPT_SOURCES: tuple[TranscriptSource, ...] = ("caption", "subtitle", "asr")


@dataclass(frozen=True)
class Word:
    """One word with its time span in stream media seconds, where the engine gives word timings."""

    text: str
    start_s: float
    end_s: float
    confidence: float = 1.0


@dataclass(frozen=True)
class TranscriptLine:
    """One line of words with its span in stream media seconds (the segments' ``media_start_s`` clock).

    ``channel`` names the track or caption service it came from (``CC1``, an audio or subtitle stream's
    index, a sidecar file's name); ``confidence`` is in [0, 1]: 1 for authored captions and subtitles, the
    engine's estimate for recognised speech.
    """

    start_s: float
    end_s: float
    text: str
    source: TranscriptSource
    language: str = "en"
    confidence: float = 1.0
    channel: str = ""
    words: tuple[Word, ...] = field(default=())

    def __post_init__(self):
        if self.source not in TRANSCRIPT_SOURCES:
            raise ValueError(f"transcript source must be one of {TRANSCRIPT_SOURCES}, not {self.source!r}")
        if not self.end_s >= self.start_s >= 0:
            raise ValueError(f"transcript line span must satisfy 0 <= start <= end, got {self.start_s}..{self.end_s}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"transcript confidence must be in [0, 1], got {self.confidence}")
        if not self.text.strip():
            raise ValueError("a transcript line must have words")
