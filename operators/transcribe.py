"""The transcript stage: what was said in a segment, from captions, subtitles and speech recognition.

Per segment it gathers three sources into `TranscriptLine`s (operators/transcript.py):

1. closed captions (CEA-608 CC1 in the video's A53 data; `operators.captions.CaptionReader`, stateful per
   stream because a caption row outlives segments);
2. the cues of the segment's text subtitle tracks (decoded with the frames: ``FrameBatch.subtitles``);
3. speech recognition on the audio (``FrameBatch.audio``), when ``transcript.asr`` is on and a recogniser is
   given (`Recognizer`; operators/speech builds them: voice activity detection, then the engine). Each
   stream's audio is buffered across segments and recognised in windows that end in a pause
   (`operators.speech_windows.SpeechWindows`), so words are not cut at segment edges; a recognised line comes
   out with the segment in which its window closed (at most ``transcript.asr_max_window_s`` late).

Authored words win: captions and subtitles are what a broadcaster wrote, recognition is a guess. Recognition
pauses on a stream while its captions showed words within ``transcript.asr_pause_s`` (a caption is reported
when it leaves the screen, so the first segments of a captioned stream are still recognised), and a
recognised line that overlaps a subtitle cue or caption line seen while its window filled is dropped. Every
kept line is embedded with the same MiniLM model as on-screen text
(`operators.ocr.TextEmbedder`), so memory searches both with one query vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from operators.captions import CaptionReader
from operators.config import TranscriptConfig
from operators.frames import FrameBatch, StageError
from operators.speech_windows import SpeechWindows, Window
from operators.state import RecentAnswers, restore_steps, snapshot_steps
from operators.transcript import TranscriptLine

if TYPE_CHECKING:
    from operators.config import SpeechConfig
    from operators.ocr import TextEmbedder
    from operators.speech.audio import SpeechRegion
    from operators.speech.vad import VoiceActivityDetector


class Recognizer(Protocol):
    """What the transcript stage asks of a speech recogniser (operators.speech.recognizer.SpeechRecognizer):
    float32 mono 16 kHz in, lines on the stream's clock out. Its VAD (None: off) finds the pauses windows end
    in, reading each stream on across segments; ``read`` recognises the regions it found."""

    config: SpeechConfig
    vad: VoiceActivityDetector | None

    def read(self, audio: np.ndarray, regions: list[SpeechRegion], start_s: float,
             channel: str) -> list[TranscriptLine]: ...

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

    Stateful through its caption reader and its speech windows (snapshot / restore / forget); subtitles are per
    segment.
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
        self.speech = (SpeechWindows(recognizer.vad, recognizer.config, config.asr_max_window_s)
                       if self.recognizer is not None else None)
        # A segment read again (a live source's retry, after its successors) is not heard again: its audio is
        # in the windows already, and fed twice it would be recognised twice (operators.state.RecentAnswers).
        self._heard_before: RecentAnswers[list[TranscriptLine]] = RecentAnswers()

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
        if self.speech is None or batch.audio is None or len(batch.audio.samples) == 0:
            return []
        key = (batch.segment.tenant_id, batch.segment.stream_id)
        if self._captioned(batch):
            self.speech.forget(*key)  # the broadcaster's captions cover this stream now, what was buffered too
            return []
        heard = self._heard_before.get(batch.segment)
        if heard is not None:
            return list(heard)
        audio = batch.audio
        try:
            windows = self.speech.add(key, audio.samples, audio.start_s, audio.channel,
                                      [(line.start_s, line.end_s) for line in authored])
        except StageError:
            raise
        except Exception as exc:  # the VAD's own error on this audio: bad input for this stage
            raise StageError("asr_error", f"{type(exc).__name__}: {exc}", stage="transcript") from exc
        heard = self._heard(windows)
        self._heard_before.put(batch.segment, list(heard))
        return heard

    def _heard(self, windows: list[Window]) -> list[TranscriptLine]:
        """What the recogniser hears in ``windows``, less what overlaps captions and subtitles of their time."""
        lines = []
        for window in windows:
            try:
                recognised = (self.recognizer.transcribe(window.samples, window.start_s, window.channel)
                              if window.regions is None else
                              self.recognizer.read(window.samples, window.regions, window.start_s, window.channel))
            except StageError:
                raise
            except Exception as exc:  # an engine's own error on this audio: bad input for this stage
                raise StageError("asr_error", f"{type(exc).__name__}: {exc}", stage="transcript") from exc
            lines += [line for line in recognised if not any(line.start_s < end and start < line.end_s
                                                             for start, end in window.covered)]
        return lines

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

    # -- state: the caption reader's and the speech windows' --------------------------------------------

    def flush(self, tenant_id: str, stream_id: str) -> Transcript:
        """The stream ended: the caption rows still on screen (`CaptionReader.flush`) and the speech still
        buffered (`SpeechWindows.flush`), as lines."""
        lines = self.captions.flush(tenant_id, stream_id) if self.captions is not None else []
        if self.speech is not None:
            lines += self._heard(self.speech.flush(tenant_id, stream_id))
        self._heard_before.forget(tenant_id, stream_id)
        return self.embed(sorted(lines, key=lambda line: (line.start_s, line.source, line.channel)))

    def forget(self, tenant_id: str, stream_id: str) -> None:
        if self.captions is not None:
            self.captions.forget(tenant_id, stream_id)
        if self.speech is not None:
            self.speech.forget(tenant_id, stream_id)
        self._heard_before.forget(tenant_id, stream_id)

    def snapshot(self) -> dict:
        """The caption reader's snapshot, with the speech windows' under "speech"."""
        state = self.captions.snapshot() if self.captions is not None else {}
        return state | ({"speech": self.speech.snapshot()} if self.speech is not None else {})

    def restore(self, state: dict) -> None:
        if self.captions is not None:
            self.captions.restore(state)
        if self.speech is not None:  # a snapshot taken with asr off has no speech buffered
            self.speech.restore(state.get("speech", SpeechWindows.EMPTY))

    def _parts(self) -> dict[str, CaptionReader | SpeechWindows]:
        return {name: part for name, part in (("captions", self.captions), ("speech", self.speech))
                if part is not None}

    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict | None:
        """One stream's caption and speech state, by part; None when neither holds any."""
        return snapshot_steps(self._parts(), tenant_id, stream_id)

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict) -> None:
        """Take back `snapshot_stream`'s result; a part it holds nothing of starts the stream afresh. ValueError
        for a part not here (kept while captions or asr were configured otherwise)."""
        restore_steps(self._parts(), tenant_id, stream_id, state)
