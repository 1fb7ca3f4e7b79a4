"""What was said, end to end: captions and subtitles of real files backfilled into memory and found by questions,
and the live path's operators giving the same transcript as backfill.

Captions: mux.js's captioned broadcast segment (npm, fetched at test time; tests/transcripts/media.py), with
mux.js's own CEA-608 decoder giving the true times. Subtitles: a track written here and a sidecar file.
Speech: the sample broadcast's spoken phrases (espeak-ng voice, `livelens sample-video`'s ground truth).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from contracts import messages
from memory_store.service import MemoryStore
from operators.answer import Answerer
from operators.config import AnswerConfig
from operators.decode import SegmentDecoder
from operators.encode import VisionEncoder
from pipelines.config import LivelensConfig
from pipelines.ingest.backfill import Backfill, BackfillJob
from pipelines.ingest.chain import transcriber
from pipelines.cli.sample_video import write_sample_video
from pipelines.ingest.source import segment_info
from pipelines.kafka.publish import segment_header
from pipelines.query.engine import QueryEngine
from pipelines.segmenter import iter_segments
from tests.transcripts.media import CUES, ROLL_UP, muxjs_cues, srt, write_subtitled_video

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BRIDGE = ((0.8, 2.2, "the bridge on route nine is closed for repairs"),)


def make_config(tmp_path: Path, tiny_models: dict[str, Path]) -> LivelensConfig:
    return LivelensConfig(data_dir=tmp_path / "data", encode=dict(model=str(tiny_models["clip"])),
                          ocr=dict(enabled=False))


def store_for(redis_server, db: int, config: LivelensConfig) -> MemoryStore:
    url = redis_server.address.rsplit("/", 1)[0] + f"/{db}"
    return MemoryStore(redis.Redis.from_url(url), config.memory)


@pytest.fixture
def recordings(tmp_path: Path, muxjs: Path) -> dict[str, Path]:
    """A captioned news segment, a recording with a subtitle track, one with a sidecar .srt beside it."""
    folder = tmp_path / "recordings"
    folder.mkdir()
    news = folder / "news.ts"
    shutil.copy(muxjs / ROLL_UP, news)
    talk = write_subtitled_video(folder / "talk.mp4", "mp4", "mov_text")
    traffic = write_subtitled_video(folder / "traffic.mp4", "mp4", None)
    (folder / "traffic.srt").write_text(srt(BRIDGE))
    return {"news": news, "talk": talk, "traffic": traffic}


def ask(engine: QueryEngine, text: str) -> messages.Evidence:
    answer = engine.run(messages.Query(tenant_id="default", text=text, top_k=1, adaptive_k=False))
    assert answer.error is None and answer.evidence, text
    return answer.evidence[0]


def test_questions_find_captions_and_subtitles_within_two_seconds(tmp_path, redis_server, tiny_models, recordings,
                                                                  muxjs):
    config = make_config(tmp_path, tiny_models)
    store = store_for(redis_server, 0, config)
    summary = Backfill(config, store, workers=1, progress=False).run(
        [BackfillJob(path, stream, wallclock_start=START) for stream, path in recordings.items()])
    assert not summary.dead_letters
    engine = QueryEngine(config, store, VisionEncoder(config.encode, str(config.encode.model)),
                         Answerer(AnswerConfig(), None))

    # The caption's true time: when mux.js's decoder shows the row, on the stream's clock (0 = first keyframe).
    zero_pts = 126_000  # the segment's first video keyframe (90 kHz)
    [cue] = [c for c in muxjs_cues(muxjs, recordings["news"]) if "WE'RE LOSING TIME FROM QUESTION" in c["rows"]]
    said = ask(engine, "we are losing time from question period")
    assert (said.stream_id, said.source) == ("news", "caption") and "LOSING TIME" in said.text
    assert abs(said.t_start - (cue["startPts"] - zero_pts) / 90_000) <= 2.0

    subtitled = ask(engine, "when did they say the storm is coming ashore")
    assert (subtitled.stream_id, subtitled.source, subtitled.text) == ("talk", "subtitle", CUES[0][2])
    assert abs(subtitled.t_start - CUES[0][0]) <= 2.0 and subtitled.confidence == 1.0

    sidecar = ask(engine, "is the bridge closed")
    assert (sidecar.stream_id, sidecar.source, sidecar.text) == ("traffic", "subtitle", BRIDGE[0][2])
    assert abs(sidecar.t_start - BRIDGE[0][0]) <= 2.0
    assert sidecar.thumbnail is not None  # the frame on screen when it was said


def test_live_operators_give_the_transcript_backfill_gives(tmp_path, redis_server, tiny_models, recordings):
    config = make_config(tmp_path, tiny_models)
    backfilled = store_for(redis_server, 0, config)
    Backfill(config, backfilled, workers=1, progress=False).run(
        [BackfillJob(recordings[s], s, wallclock_start=START) for s in ("news", "talk")])

    # The live path: each segment over the wire to a decode actor, then the stream's transcript actor.
    decoder, live = SegmentDecoder(config.decode, frame_px=config.decode.frame_px), transcriber(config)
    lines: dict[str, list] = {}
    for stream in ("news", "talk"):
        for media in iter_segments(str(recordings[stream])):
            header = segment_header(media, stream_id=stream, tenant_id="default", start=START)
            value, headers = messages.segment_record(header, media.payload)
            received, _ = messages.decode(value, expect=messages.VideoSegment, headers=headers)
            assert received.tracks == list(media.tracks)
            lines.setdefault(stream, []).extend(live.read(decoder.decode(segment_info(received), media.payload)).lines)
        # A live stream keeps its last caption rows until they leave the screen; a backfilled file ends them.
        still_up = live.flush("default", stream).lines
        stored = [(line.start_s, line.end_s, line.text, line.source, line.channel)
                  for line in backfilled.transcript("default", stream)]
        assert stored == sorted((line.start_s, line.end_s, line.text, line.source, line.channel)
                                for line in lines[stream] + still_up)
    assert {line.source for line in lines["news"]} == {"caption"} and lines["talk"]


def test_every_spoken_phrase_of_the_sample_is_found_from_speech(tmp_path, redis_server, tiny_models) -> None:
    """The sample broadcast backfilled with speech recognition (pocketsphinx, segments of ~2 s recognised in
    windows that end in pauses): a question in each phrase's words finds it, from the recogniser, on time."""
    config = LivelensConfig(data_dir=tmp_path / "data", encode=dict(model=str(tiny_models["clip"])),
                            ocr=dict(enabled=False), decode=dict(audio=True), transcript=dict(asr=True),
                            speech=dict(engine="pocketsphinx"))
    truth = write_sample_video(tmp_path / "sample.mp4", duration_s=48.0, seed=0)
    assert len({phrase["text"] for phrase in truth["speech"]}) == len(truth["speech"]) == 6
    store = store_for(redis_server, 2, config)
    summary = Backfill(config, store, workers=1, progress=False).run(
        [BackfillJob(tmp_path / "sample.mp4", "sample", wallclock_start=START)])
    assert not summary.dead_letters
    engine = QueryEngine(config, store, VisionEncoder(config.encode, str(config.encode.model)),
                         Answerer(AnswerConfig(), None))
    for phrase in truth["speech"]:
        said = ask(engine, phrase["text"])
        assert (said.stream_id, said.source) == ("sample", "asr"), (phrase, said.text)
        assert abs(said.t_start - phrase["start"]) <= 2.0, (phrase, said)


def test_live_operators_hear_the_speech_backfill_hears(tmp_path, redis_server, tiny_models) -> None:
    """Speech recognised in windows across segments: the live path (each segment over the wire, then the
    transcript stage, the stream's buffer flushed at its end) gives the lines backfill stores."""
    config = LivelensConfig(data_dir=tmp_path / "data", encode=dict(model=str(tiny_models["clip"])),
                            ocr=dict(enabled=False), decode=dict(audio=True), transcript=dict(asr=True),
                            speech=dict(engine="pocketsphinx"))
    sample = tmp_path / "sample.mp4"
    write_sample_video(sample, duration_s=24.0, seed=3)
    backfilled = store_for(redis_server, 3, config)
    Backfill(config, backfilled, workers=1, progress=False).run([BackfillJob(sample, "sample", wallclock_start=START)])

    decoder, live = SegmentDecoder(config.decode, frame_px=config.decode.frame_px), transcriber(config)
    lines = []
    for media in iter_segments(str(sample)):
        header = segment_header(media, stream_id="sample", tenant_id="default", start=START)
        value, headers = messages.segment_record(header, media.payload)
        received, _ = messages.decode(value, expect=messages.VideoSegment, headers=headers)
        lines += live.read(decoder.decode(segment_info(received), media.payload)).lines
    lines += live.flush("default", "sample").lines
    heard = sorted((line.start_s, line.end_s, line.text) for line in lines if line.source == "asr")
    assert len(heard) == 3  # the sample's three phrases
    assert heard == [(line.start_s, line.end_s, line.text) for line in backfilled.transcript("default", "sample")
                     if line.source == "asr"]
