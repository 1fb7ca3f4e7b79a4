"""The transcript stage: authored words (captions, subtitles) first, speech recognition for the rest.

The recogniser here is a scripted stand-in with the interface operators/speech implements
(``transcribe(audio, start_s, channel) -> list[TranscriptLine]``): what is tested is which audio the stage
hands it and what it does with the answer, not recognition.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic
import pytest

from operators.config import DecodeConfig, TranscriptConfig
from operators.decode import SegmentDecoder
from operators.frames import FrameBatch, SegmentInfo, StageError
from operators.ocr import TextEmbedder
from operators.transcribe import Transcriber
from operators.transcript import TranscriptLine
from pipelines.config import LivelensConfig
from pipelines.segmenter import iter_segments
from tests.transcripts.media import POP_ON


class ScriptedRecognizer:
    """Says "someone is speaking" over each piece of audio it gets, and remembers what it got."""

    def __init__(self, fail: bool = False):
        self.calls: list[tuple[int, float, str, np.dtype]] = []
        self.fail = fail

    def transcribe(self, audio: np.ndarray, start_s: float, channel: str) -> list[TranscriptLine]:
        if self.fail:
            raise RuntimeError("the engine fell over")
        self.calls.append((len(audio), start_s, channel, audio.dtype))
        return [TranscriptLine(start_s, start_s + len(audio) / 16_000, "someone is speaking", "asr", "en", 0.6,
                               channel)]


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder()


def decoded(path: Path) -> list[FrameBatch]:
    decoder = SegmentDecoder(DecodeConfig(audio=True))
    return [decoder.decode(SegmentInfo("t", "s", m.seq, 1e9 + m.media_start_s, m.media_start_s, m.duration_s,
                                       m.codec, m.container), m.payload) for m in iter_segments(str(path))]


def test_speech_is_recognised_where_nothing_is_captioned(real_video_dir: Path, embedder) -> None:
    recognizer = ScriptedRecognizer()
    stage = Transcriber(TranscriptConfig(asr=True), embedder, recognizer)
    batches = decoded(real_video_dir / "friday.mp4")  # real speech, no captions, no subtitle track
    transcripts = [stage.read(batch) for batch in batches]

    assert [(n, dtype) for n, _, _, dtype in recognizer.calls] == [
        (len(b.audio.samples), np.float32) for b in batches]
    assert [start for _, start, _, _ in recognizer.calls] == [b.audio.start_s for b in batches]
    assert all(len(t) == 1 and t.lines[0].source == "asr" and t.embeddings.shape == (1, embedder.dim)
               for t in transcripts)


def test_captions_win_and_recognition_is_not_run_under_them(muxjs: Path, embedder) -> None:
    recognizer = ScriptedRecognizer()
    stage = Transcriber(TranscriptConfig(asr=True), embedder, recognizer)
    batches = decoded(muxjs / POP_ON)
    first = stage.read(batches[0]).lines
    # The first caption is reported when it leaves the screen, in the next segment: until then, speech is heard.
    assert [line.source for line in first] == ["asr"] and len(recognizer.calls) == 1
    later = [line for batch in batches[1:] for line in stage.read(batch).lines]
    assert len(recognizer.calls) == 1 and later and {line.source for line in later} == {"caption"}


def test_asr_is_off_unless_configured(real_video_dir: Path, embedder) -> None:
    stage = Transcriber(TranscriptConfig(), embedder, ScriptedRecognizer())
    assert stage.recognizer is None
    assert all(len(stage.read(batch)) == 0 for batch in decoded(real_video_dir / "friday.mp4")[:1])
    with pytest.raises(ValueError, match="no speech recogniser"):
        Transcriber(TranscriptConfig(asr=True), embedder)
    with pytest.raises(pydantic.ValidationError, match="decode.audio"):
        LivelensConfig(transcript=dict(asr=True))
    with pytest.raises(pydantic.ValidationError, match="speech.engine"):
        LivelensConfig(transcript=dict(asr=True), decode=dict(audio=True))


def test_the_configured_engine_hears_real_speech_through_the_stage(real_video_dir: Path, embedder) -> None:
    """transcript.asr with speech.engine pocketsphinx: the chain builds operators/speech's recogniser (VAD, then
    pocketsphinx) and the stage hands it each segment's audio."""
    from operators.speech.recognizer import SpeechRecognizer
    from pipelines.ingest.chain import speech_recognizer

    config = LivelensConfig(ocr=dict(enabled=False), decode=dict(audio=True), transcript=dict(asr=True),
                            speech=dict(engine="pocketsphinx"))
    recognizer = speech_recognizer(config)
    assert isinstance(recognizer, SpeechRecognizer)
    stage = Transcriber(config.transcript, embedder, recognizer)
    batches = decoded(real_video_dir / "friday.mp4")
    # The film's dialogue is speech to the VAD (pocketsphinx reads few of its words: BENCHMARKS.md).
    assert any(recognizer.regions(batch.audio.samples) for batch in batches)
    lines = [line for batch in batches for line in stage.read(batch).lines]
    assert {line.source for line in lines} <= {"asr"}
    assert all(0.0 <= line.start_s <= line.end_s <= 6.5 and 0.0 <= line.confidence <= 1.0 for line in lines)


def test_an_engine_failure_is_a_stage_error(real_video_dir: Path, embedder) -> None:
    stage = Transcriber(TranscriptConfig(asr=True), embedder, ScriptedRecognizer(fail=True))
    with pytest.raises(StageError) as raised:
        stage.read(decoded(real_video_dir / "friday.mp4")[0])
    assert (raised.value.code, raised.value.stage) == ("asr_error", "transcript")
