"""Closed captions on real broadcast video: CEA-608 read from the frames' A53 data, checked against mux.js.

The streams are mux.js's own captioned test segments (npm, fetched at test time: tests/transcripts/media.py);
mux.js's CEA-608 decoder, run by node on the same files, is the independent reading to match.
"""

from __future__ import annotations

from pathlib import Path

import av
import pytest

from operators.captions import CaptionReader
from operators.config import DecodeConfig, TranscriptConfig
from operators.decode import SegmentDecoder
from operators.frames import FrameBatch, SegmentInfo
from operators.transcript import TranscriptLine
from pipelines.ingest.snapshots import pack, unpack
from pipelines.segmenter import iter_segments
from tests.transcripts.media import POP_ON, ROLL_UP, muxjs_cues


def decoded(path: Path, stream: str = "news") -> list[FrameBatch]:
    """The file as a publisher cuts it and a decode actor decodes it, segment by segment."""
    decoder = SegmentDecoder(DecodeConfig())
    return [decoder.decode(SegmentInfo("t", stream, m.seq, 1e9 + m.media_start_s, m.media_start_s, m.duration_s,
                                       m.codec, m.container), m.payload)
            for m in iter_segments(str(path), target_s=2.0)]


def caption_lines(batches: list[FrameBatch], reader: CaptionReader) -> list[TranscriptLine]:
    lines = [line for batch in batches for line in reader.read(batch)]
    return lines + reader.flush("t", batches[0].segment.stream_id)


def stream_zero_s(path: Path) -> float:
    """Where stream time 0 is on the file's clock: its first video keyframe."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        first = next(p for p in container.demux(video) if p.is_keyframe and p.pts is not None)
        return float(first.pts * video.time_base)


def plain(text: str) -> str:
    return text.replace("\u2019", "'")  # FFmpeg renders the CEA-608 apostrophe as a typographic one


@pytest.mark.parametrize("sample", [ROLL_UP, POP_ON])
def test_caption_lines_match_muxjs(muxjs: Path, sample: str) -> None:
    path = muxjs / sample
    ours = caption_lines(decoded(path), CaptionReader(TranscriptConfig()))
    zero = stream_zero_s(path)
    theirs: dict[str, tuple[float, float]] = {}  # CC1 row -> (first shown, last shown), stream seconds
    for cue in muxjs_cues(muxjs, path):
        if cue["stream"] != "CC1":
            continue
        for row in cue["rows"]:
            start, end = cue["startPts"] / 90_000 - zero, cue["endPts"] / 90_000 - zero
            theirs[row] = (theirs.get(row, (start, end))[0], end)
    assert theirs, "mux.js reads CC1 captions in the sample"

    by_text = {plain(line.text): line for line in ours}
    for row, (start, end) in theirs.items():
        assert row in by_text, f"mux.js reads {row!r}; livelens read {sorted(by_text)}"
        assert by_text[row].start_s == pytest.approx(start, abs=0.05) and by_text[row].end_s == pytest.approx(
            end, abs=0.05), row
    # mux.js drops what precedes the first channel-select code of the stream; livelens keeps a caption already
    # on screen when the recording starts, from the first caption data on.
    extra = [line for line in ours if plain(line.text) not in theirs]
    assert all(line.start_s == pytest.approx(0.0, abs=0.1) for line in extra), extra
    assert {(line.source, line.channel, line.confidence) for line in ours} == {("caption", "CC1", 1.0)}


def test_a_restored_reader_continues_as_an_uninterrupted_one(muxjs: Path) -> None:
    batches = decoded(muxjs / POP_ON)
    assert len(batches) >= 2
    whole = caption_lines(batches, CaptionReader(TranscriptConfig()))

    first = CaptionReader(TranscriptConfig())
    before = [line for line in first.read(batches[0])]
    restarted = CaptionReader(TranscriptConfig())  # a restarted actor, or a resumed backfill
    restarted.restore(first.snapshot())
    after = caption_lines(batches[1:], restarted)
    assert before + after == whole


def test_a_segment_read_again_after_later_ones_gets_its_lines_and_changes_nothing(muxjs: Path) -> None:
    """A retried segment reaches the transcript stage again after its successors were read (the source retries a
    segment whose memory write waited): it gets the lines it got the first time (they were never stored), and
    its caption bytes, fed already, must not rebuild old screens."""
    for sample in (POP_ON, ROLL_UP):
        batches = decoded(muxjs / sample)
        assert len(batches) >= 2
        whole = CaptionReader(TranscriptConfig())
        per_batch = [whole.read(batch) for batch in batches]
        assert any(per_batch), sample
        reader = CaptionReader(TranscriptConfig())
        got = [reader.read(batch) for batch in [*batches[:2], batches[0], *batches[2:]]]
        assert got == [*per_batch[:2], per_batch[0], *per_batch[2:]], sample
        # Older than the latest segments: fed already, so nothing rebuilt and nothing new.
        reader._recent.forget("t", batches[0].segment.stream_id)
        assert reader.read(batches[0]) == [], sample
        # The stream ended: its answers go with its state.
        ended = CaptionReader(TranscriptConfig())
        for batch in batches:
            ended.read(batch)
        assert ended._recent.get(batches[-1].segment) is not None
        ended.flush("t", batches[0].segment.stream_id)
        assert ended._recent.get(batches[-1].segment) is None


def test_one_stream_taken_back_alone_continues_as_an_uninterrupted_one(muxjs: Path) -> None:
    """A live transcript actor evicts a quiet stream and restores it when it returns (pipelines/ingest/idle.py)."""
    batches = decoded(muxjs / POP_ON)
    whole = caption_lines(batches, CaptionReader(TranscriptConfig()))
    first = CaptionReader(TranscriptConfig())
    before = first.read(batches[0])
    taker = CaptionReader(TranscriptConfig())
    taker.read(decoded(muxjs / POP_ON, "busy")[0])
    taker.restore_stream("t", batches[0].segment.stream_id,
                         unpack(pack(first.snapshot_stream("t", batches[0].segment.stream_id))))
    assert before + caption_lines(batches[1:], taker) == whole
    assert taker.snapshot_stream("t", "busy") is not None


def test_a_caption_left_up_is_stored_every_max_caption_s(muxjs: Path) -> None:
    lines = caption_lines(decoded(muxjs / POP_ON), CaptionReader(TranscriptConfig(max_caption_s=1.0)))
    asuka = [line for line in lines if line.text.startswith("ASUKA")]
    assert len(asuka) >= 2 and all(b.start_s == a.end_s for a, b in zip(asuka, asuka[1:]))


def test_streams_keep_their_own_caption_state(muxjs: Path) -> None:
    reader = CaptionReader(TranscriptConfig())
    one, two = decoded(muxjs / POP_ON, "one"), decoded(muxjs / POP_ON, "two")
    interleaved = [line for a, b in zip(one, two) for line in reader.read(a) + reader.read(b)]
    single = CaptionReader(TranscriptConfig())
    alone = [line for batch in one for line in single.read(batch)]
    assert alone and interleaved == [line for line in alone for _ in range(2)]
    reader.forget("t", "one")
    assert reader.flush("t", "one") == []
