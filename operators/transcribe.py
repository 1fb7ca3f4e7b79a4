"""The transcript stage: what was said in a segment, from captions, subtitles and speech recognition.

Per segment it gathers three sources into `TranscriptLine`s (operators/transcript.py):

1. closed captions (CEA-608 CC1 in the video's A53 data; `operators.captions.CaptionReader`, stateful per
   stream because a caption row outlives segments);
2. the cues of the segment's text subtitle tracks (decoded with the frames: ``FrameBatch.subtitles``);
3. speech recognition on the segment's audio (``FrameBatch.audio``), when ``transcript.asr`` is on and a
   recogniser is given: any object with ``transcribe(audio, start_s, channel) -> list[TranscriptLine]``
   (operators/speech builds them: voice activity detection, then the engine).

Authored words win: captions and subtitles are what a broadcaster wrote, recognition is a guess. Recognition
pauses on a stream while its captions showed words within ``transcript.asr_pause_s`` (a caption is reported
when it leaves the screen, so the first segments of a captioned stream are still recognised), and a
recognised line that overlaps a subtitle cue or caption line of its segment is dropped. Every kept line is embedded with the same MiniLM model as on-screen text
(`operators.ocr.TextEmbedder`), so memory searches both with one query vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from operators.captions import CaptionReader
from operators.config import TranscriptConfig
from operators.frames import FrameBatch, StageError
from operators.transcript import TranscriptLine

if TYPE_CHECKING:
    from operators.ocr import TextEmbedder


class Recognizer(Protocol):
    """What the transcript stage asks of a speech recogniser (operators.speech.recognizer.SpeechRecognizer):
    float32 mono 16 kHz in, lines on the stream's clock out."""

    def transcribe(self, audio: np.ndarray, start_s: float, channel: str) -> list[TranscriptLine]: ...


@dataclass
class Transcript:
    """A segment's transcript lines in time order, and their MiniLM embeddings (float32 [len(lines), E])."""

    lines: list[TranscriptLine]
    embeddings: np.ndarray

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.lines):
            raise ValueError(f"{len(self.lines)} lines need [n, E] embeddings, got {self.embeddings.shape}")

    def __len__(self) -> int:
        return len(self.lines)


class Transcriber:
    """The stage: captions, subtitles and (optionally) recognised speech of each segment, embedded.

    Stateful through its caption reader (snapshot / restore / forget); subtitles and recognition are per segment.
    """

    def __init__(self, config: TranscriptConfig, embedder: TextEmbedder | None = None,
                 recognizer: Recognizer | None = None):
        if not config.enabled:
            raise ValueError("TranscriptConfig.enabled is False: the pipeline must not build a Transcriber")
        if config.asr and recognizer is None:
            raise ValueError("transcript.asr is on but no speech recogniser was given (operators/speech builds one)")
        self.config = config
        self._embedder = embedder  # loaded at the first line to embed: most streams carry no captions
        self.recognizer = recognizer if config.asr else None
        self.captions = CaptionReader(config) if config.captions else None

    def read(self, batch: FrameBatch) -> Transcript:
        lines = self.authored(batch)
        lines += self._recognised(batch, lines)
        lines.sort(key=lambda line: (line.start_s, line.source, line.channel))
        return self.embed(lines)

    def authored(self, batch: FrameBatch) -> list[TranscriptLine]:
        """Caption lines that ended in this segment and its subtitle cues."""
        lines = self.captions.read(batch) if self.captions is not None else []
        return lines + (list(batch.subtitles) if self.config.subtitles else [])

    def _recognised(self, batch: FrameBatch, authored: list[TranscriptLine]) -> list[TranscriptLine]:
        if self.recognizer is None or batch.audio is None or len(batch.audio.samples) == 0:
            return []
        if self._captioned(batch):
            return []  # the broadcaster's captions cover this stream now
        try:
            recognised = self.recognizer.transcribe(batch.audio.samples, batch.audio.start_s, batch.audio.channel)
        except StageError:
            raise
        except Exception as exc:  # an engine's own error on this audio: bad input for this stage
            raise StageError("asr_error", f"{type(exc).__name__}: {exc}", stage="transcript") from exc
        spans = [(line.start_s, line.end_s) for line in authored]
        return [line for line in recognised if not any(line.start_s < end and start < line.end_s
                                                       for start, end in spans)]

    def _captioned(self, batch: FrameBatch) -> bool:
        """Whether the stream's captions showed words within asr_pause_s of the segment's end."""
        if self.captions is None:
            return False
        shown = self.captions.words_since(batch.segment.tenant_id, batch.segment.stream_id)
        end = batch.segment.media_start_s + batch.segment.duration_s
        return shown is not None and end - shown <= self.config.asr_pause_s

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            from operators.ocr import TextEmbedder

            self._embedder = TextEmbedder()
        return self._embedder

    def embed(self, lines: list[TranscriptLine]) -> Transcript:
        if not lines:
            return Transcript([], np.zeros((0, 0), np.float32))
        return Transcript(lines, self.embedder.embed([line.text for line in lines]))

    # -- state: the caption reader's ----------------------------------------------------------------

    def flush(self, tenant_id: str, stream_id: str) -> Transcript:
        """The caption rows still on screen when a stream ends, as lines (`CaptionReader.flush`)."""
        return self.embed(self.captions.flush(tenant_id, stream_id) if self.captions is not None else [])

    def forget(self, tenant_id: str, stream_id: str) -> None:
        if self.captions is not None:
            self.captions.forget(tenant_id, stream_id)

    def snapshot(self) -> dict:
        return self.captions.snapshot() if self.captions is not None else {}

    def restore(self, state: dict) -> None:
        if self.captions is not None:
            self.captions.restore(state)

    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict | None:
        return self.captions.snapshot_stream(tenant_id, stream_id) if self.captions is not None else None

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict) -> None:
        if self.captions is not None:
            self.captions.restore_stream(tenant_id, stream_id, state)
