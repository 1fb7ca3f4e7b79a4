"""The transcript stage: authored words (captions, subtitles) first, speech recognition for the rest.

The recogniser here is operators/speech's, with its real VAD and a scripted engine (a subclass-free stand-in
for pocketsphinx: `SpeechEngine`'s one method): what is tested is which audio the stage hands the engine and
what it does with the answer, not recognition.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydantic
import pytest

from operators.config import DecodeConfig, SpeechConfig, TranscriptConfig
from operators.decode import SegmentDecoder
from operators.frames import FrameBatch, SegmentInfo, StageError
from operators.ocr import TextEmbedder
from operators.speech.engine import Recognised
from operators.speech.recognizer import SpeechRecognizer
from operators.transcribe import Transcriber
from pipelines.config import LivelensConfig
from pipelines.ingest.snapshots import pack, unpack
from pipelines.segmenter import iter_segments
from tests.transcripts.media import POP_ON


class ScriptedEngine:
    """Says "someone is speaking" over each clip of speech it gets, and remembers the clips."""

    def __init__(self, fail: bool = False):
        self.clips: list[np.ndarray] = []
        self.fail = fail

    def recognise(self, clips: list[np.ndarray]) -> list[Recognised]:
        if self.fail:
            raise RuntimeError("the engine fell over")
        self.clips += clips
        return [Recognised("someone is speaking", 0.6) for _ in clips]


def scripted(fail: bool = False) -> SpeechRecognizer:
    return SpeechRecognizer(SpeechConfig(engine="pocketsphinx"), engine=ScriptedEngine(fail))


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder()


def decoded(path: Path) -> list[FrameBatch]:
    decoder = SegmentDecoder(DecodeConfig(audio=True))
    return [decoder.decode(SegmentInfo("t", "s", m.seq, 1e9 + m.media_start_s, m.media_start_s, m.duration_s,
                                       m.codec, m.container), m.payload) for m in iter_segments(str(path))]


def test_speech_is_recognised_where_nothing_is_captioned(real_video_dir: Path, embedder) -> None:
    recognizer = scripted()
    stage = Transcriber(TranscriptConfig(asr=True), embedder, recognizer)
    batches = decoded(real_video_dir / "friday.mp4")  # real speech, no captions, no subtitle track
    assert len(batches) > 1
    transcripts = [stage.read(batch) for batch in batches] + [stage.flush("t", "s")]
    lines = [line for t in transcripts for line in t.lines]
    assert all(t.embeddings.shape == (len(t), embedder.dim) for t in transcripts if len(t))

    # The stream's audio read as one: the speech the VAD finds in all of it, each region once, on its clock.
    audio = np.concatenate([b.audio.samples for b in batches])
    start = batches[0].audio.start_s
    regions = recognizer.vad.regions(audio)
    assert regions and [(round(line.start_s, 3), round(line.end_s, 3)) for line in lines] == [
        (round(start + r.start_s, 3), round(start + r.end_s, 3)) for r in regions]
    assert {(line.source, line.channel, line.text) for line in lines} == {
        ("asr", batches[0].audio.channel, "someone is speaking")}
    assert [len(clip) for clip in recognizer.engine.clips] == [len(r.samples(audio)) for r in regions]
    assert all(clip.dtype == np.float32 for clip in recognizer.engine.clips)


def test_captions_win_and_recognition_is_not_run_under_them(muxjs: Path, embedder) -> None:
    stage = Transcriber(TranscriptConfig(asr=True), embedder, scripted())
    batches = decoded(muxjs / POP_ON)
    key = (batches[0].segment.tenant_id, batches[0].segment.stream_id)
    assert stage.read(batches[0]).lines == []
    # The first caption is reported when it leaves the screen, in the next segment: until then, audio is buffered.
    assert stage.speech.buffered_s(key) > 0
    later = [line for batch in batches[1:] for line in stage.read(batch).lines]
    assert later and {line.source for line in later} == {"caption"}
    assert stage.speech.buffered_s(key) == 0.0 and stage.recognizer.engine.clips == []  # captions cover it all


def test_a_segment_read_again_is_not_heard_twice(real_video_dir: Path, embedder) -> None:
    """The source retries segments 1 and 2 after 2 went through (1's memory write gave up waiting): they get their
    first lines, their audio is not buffered again, and what follows is heard as without the retry."""
    batches = decoded(real_video_dir / "friday.mp4")
    assert len(batches) >= 3

    def heard(order: list[int]) -> list[list[tuple[float, float, str]]]:
        stage = Transcriber(TranscriptConfig(asr=True), embedder, scripted())
        out = [stage.read(batches[i]).lines for i in order] + [stage.flush("t", "s").lines]
        return [[(line.start_s, line.end_s, line.text) for line in lines] for lines in out]

    plain = heard(list(range(len(batches))))
    retried = heard([0, 1, 2, 1, 2, *range(3, len(batches))])
    assert sum(map(len, plain)) > 0
    assert retried == plain[:3] + plain[1:3] + plain[3:]


def test_speech_state_is_snapshot_restored_and_forgotten(real_video_dir: Path, embedder) -> None:
    batches = decoded(real_video_dir / "friday.mp4")
    first = Transcriber(TranscriptConfig(asr=True), embedder, scripted())
    first.read(batches[0])
    key = ("t", "s")
    assert first.speech.buffered_s(key) > 0
    second = Transcriber(TranscriptConfig(asr=True), embedder, scripted())
    second.restore(unpack(pack(first.snapshot())))  # through the backfill manifest's JSON, as a resume reads it
    def rest(stage: Transcriber) -> list[tuple[float, float]]:
        lines = [line for b in batches[1:] for line in stage.read(b).lines] + stage.flush(*key).lines
        return [(line.start_s, line.end_s) for line in lines]

    uninterrupted = rest(first)
    assert rest(second) == uninterrupted != []
    # A live actor evicting the quiet stream keeps its state in Redis (as JSON) and restores it on its return.
    third = Transcriber(TranscriptConfig(asr=True), embedder, scripted())
    third.read(batches[0])
    third.read(replace(batches[0], segment=replace(batches[0].segment, stream_id="other")))
    kept = unpack(pack(third.snapshot_stream(*key)))
    third.forget(*key)
    assert third.snapshot_stream(*key) is None and third.speech.buffered_s(("t", "other")) > 0
    third.restore_stream(*key, kept)
    assert third.speech.buffered_s(("t", "other")) > 0 and rest(third) == uninterrupted
    with pytest.raises(ValueError, match="speech"):
        Transcriber(TranscriptConfig(), embedder).restore_stream(*key, kept)  # asr off here

    second.read(batches[0])
    second.forget(*key)
    assert second.speech.buffered_s(key) == 0.0 and second.flush(*key).lines == []
    second.restore({"version": 1, "streams": []})  # a caption-only snapshot (asr off when it was taken)
    assert second.snapshot()["speech"]["streams"] == []


def test_asr_is_off_unless_configured(real_video_dir: Path, embedder) -> None:
    stage = Transcriber(TranscriptConfig(), embedder, scripted())
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
    lines = [line for batch in batches for line in stage.read(batch).lines] + stage.flush("t", "s").lines
    assert lines and {line.source for line in lines} == {"asr"}
    assert all(0.0 <= line.start_s <= line.end_s <= 6.5 and 0.0 <= line.confidence <= 1.0 for line in lines)


def test_an_engine_failure_is_a_stage_error(real_video_dir: Path, embedder) -> None:
    stage = Transcriber(TranscriptConfig(asr=True), embedder, scripted(fail=True))
    with pytest.raises(StageError) as raised:  # when a window closes, at the latest when the stream ends
        for batch in decoded(real_video_dir / "friday.mp4"):
            stage.read(batch)
        stage.flush("t", "s")
    assert (raised.value.code, raised.value.stage) == ("asr_error", "transcript")
