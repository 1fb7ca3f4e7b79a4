"""Incremental OCR reads what whole reads read; reading many streams together reads what reading each does."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from operators.config import OcrConfig
from operators.frames import StageError
from operators.ocr import LiveDeadline, ScreenTextReader, TextEmbedder
from operators.ocr_engine import OcrEngine
from pipelines.cli.sample_video import write_sample_video
from tests.operators.moderation import rooms
from tests.operators.test_ocr import HEADLINES, CountingEngine, batch, frame, similarity

ROOM_HEADLINES = ["EVENING NEWS WITH DANA", "CALL 555-0142 NOW", "EVENING NEWS WITH DANA", "BEST COCAINE IN TOWN",
                  "FOLLOW MY ONLYFANS", *rooms.BENIGN[1:7]]


def broadcast_frames(work: Path) -> list[np.ndarray]:
    """20 s of the sample broadcast (H.264: cuts, moving shapes, the lower-third headline changing) at 1 frame/s.
    (The real clip the OCR tests read, friday.mp4, shows no text, so it tells nothing here.)"""
    video = work / "broadcast.mp4"
    write_sample_video(video, duration_s=20.0, speech=False)
    with av.open(str(video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][::10]


SEQUENCES = {
    # tests/operators/moderation: the lexicon's acceptance frames, one headline after another on the banner
    "rooms": lambda _: [rooms.frame(h) for h in ROOM_HEADLINES],
    # tests/operators/test_ocr.py: headlines changing under fixed corner captions, then the corners changing
    "corners": lambda _: [frame(h, corners=("14:05", "LIVE")) for h in HEADLINES]
                         + [frame(HEADLINES[2], corners=("14:06", "LIVE")), frame(HEADLINES[2], corners=None)],
    "broadcast": broadcast_frames,
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ocr-incremental")


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder()


@pytest.fixture(scope="module")
def reader(embedder: TextEmbedder) -> ScreenTextReader:
    return ScreenTextReader(OcrConfig(), embedder)


@pytest.fixture(scope="module")
def whole_frame_reader(embedder: TextEmbedder) -> ScreenTextReader:
    """The reader as on a GPU (ocr.device cuda): a change away from text is looked at in the whole frame."""
    reader = ScreenTextReader(OcrConfig(detect_in_windows=False), embedder)
    reader.engine = CountingEngine(reader.config)
    return reader


@pytest.mark.parametrize("windows", [True, False], ids=["windows", "whole-frame"])
@pytest.mark.parametrize("name", SEQUENCES)
def test_incremental_reads_equal_whole_reads(reader: ScreenTextReader, whole_frame_reader: ScreenTextReader,
                                             work: Path, name: str, windows: bool):
    reader = reader if windows else whole_frame_reader
    frames = SEQUENCES[name](work)
    regions = reader.stats.regions
    texts = reader.read(batch(frames, stream=f"equal-{name}"))
    assert reader.stats.regions > regions  # some frames were read incrementally
    if not windows:  # the detector saw whole frames only
        assert reader.engine.detected_pixels == reader.engine.detections * frames[0].shape[0] * frames[0].shape[1]
    for image, text in zip(frames, texts):
        if not text.reused:
            whole = reader.recognise(image)
            assert [line.text for line in text.lines] == [line.text for line in whole]
            # Lines kept because the change did not touch them keep their box; the detector's box for them in
            # this frame can be a pixel off (its receptive field saw the change), never more.
            np.testing.assert_allclose([line.box for line in text.lines], [line.box for line in whole], atol=0.01)


def test_the_acceptance_headline_reads_with_its_spaces(reader: ScreenTextReader):
    """The regression that made the lexicon test fuzzy: read after another headline, the words ran together."""
    texts = reader.read(batch([rooms.frame("EVENING NEWS WITH DANA"), rooms.frame("BEST COCAINE IN TOWN")],
                              stream="spaces"))
    assert [t.text for t in texts] == ["EVENING NEWS WITH DANA", "BEST COCAINE IN TOWN"]


def test_a_headline_swapped_on_the_same_banner_is_read_again_not_reused(reader: ScreenTextReader):
    """Two headlines on one banner differ in a small part of the frame: the mean difference stays under
    ocr.change_threshold (DOW -> $AAPL: below 0.01), but the cells under the read line changed."""
    from operators import ocr_regions

    headlines = rooms.BENIGN[:6]
    frames = [rooms.frame(h) for h in headlines]
    quiet = [ocr_regions.change(ocr_regions.thumbnail(a), ocr_regions.thumbnail(b)) for a, b in zip(frames, frames[1:])]
    assert min(quiet) < OcrConfig().change_threshold  # the case the mean alone misses is in the table
    texts = reader.read(batch(frames + [frames[-1]], stream="swaps"))
    # What a whole read of each frame gives (the recogniser reads "DOW 38, 123.45": its own reading, not ours).
    assert [[line.text for line in t.lines] for t in texts] == [
        [line.text for line in reader.recognise(f)] for f in frames + [frames[-1]]]
    assert [t.reused for t in texts] == [False] * len(headlines) + [True]  # the same picture again is reused


def test_reading_streams_together_equals_reading_each(embedder: TextEmbedder, work: Path):
    together = ScreenTextReader(OcrConfig(recognition_batch=8), embedder)
    alone = ScreenTextReader(OcrConfig(), embedder)
    streams = {name: make(work) for name, make in SEQUENCES.items()}
    # Two segments per stream, all handed over at once, as the OCR actor drains its queue.
    batches = [batch(frames[half], start_s=float(i), stream=name) for name, frames in streams.items()
               for i, half in ((0, slice(None, len(frames) // 2)), (len(frames) // 2, slice(len(frames) // 2, None)))]
    results = together.read_many(batches)
    expected = [alone.read(b) for b in batches]
    assert together.stats == alone.stats
    for got, want in zip(results, expected):
        assert [t.pts_s for t in got] == [t.pts_s for t in want]
        assert [[(line.text, line.box) for line in t.lines] for t in got] == \
               [[(line.text, line.box) for line in t.lines] for t in want]
        assert [t.reused for t in got] == [t.reused for t in want]
        for a, b in zip(got, want):
            assert (a.embedding is None) == (b.embedding is None)
            if a.embedding is not None:
                np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)


def test_changed_lines_of_several_streams_share_one_recogniser_run(embedder: TextEmbedder):
    """Two channels switch to the same syndicated headline: its crops, one per stream, are read in one model
    run (crops share a run at the same input width: every crop up to 320/48 as wide as high, or equal lines)."""
    together = ScreenTextReader(OcrConfig(recognition_batch=8), embedder)
    alone = ScreenTextReader(OcrConfig(), embedder)
    for reader in (together, alone):
        reader.read_many([batch([frame(HEADLINES[i], corners=("14:05", "LIVE"))], stream=f"s{i}") for i in range(3)])
    runs_together, runs_alone = _count_recogniser_runs(together), _count_recogniser_runs(alone)
    switched = [batch([frame(HEADLINES[1], corners=("14:05", "LIVE"))], start_s=1.0, stream=f"s{i}") for i in (0, 2)]
    results = together.read_many(switched)
    expected = [alone.read(b) for b in switched]
    # Per stream, the headline and a corner caption whose box the detector moved by a pixel are read again: two
    # runs each alone, two in all together.
    assert runs_together["runs"] == 2 and runs_alone["runs"] == 4
    assert [[line.text for line in r[0].lines] for r in results] == [[line.text for line in e[0].lines]
                                                                     for e in expected]
    assert similarity(results[0][0].lines[2].text, HEADLINES[1]) >= 0.9


def test_a_live_reader_past_its_deadline_does_not_read_and_catches_up(embedder: TextEmbedder):
    """ocr.max_lag_s: changed frames that come too late are marked unread (not empty, not the last read's
    text), and the reader's state stays the last read frame's."""
    reader = ScreenTextReader(OcrConfig(), embedder)
    read_as = {h: "\n".join(line.text for line in reader.recognise(frame(h))) for h in HEADLINES[:3]}
    now = [0.0]
    deadline = LiveDeadline(max_lag_s=2.0, clock=lambda: now[0])
    first = batch([frame(HEADLINES[0]), frame(HEADLINES[1])], stream="live")  # ends at 1.7e9 + 2
    now[0] = first.segment.wallclock_start + first.segment.duration_s + 1.0  # on time
    read = reader.read(first, deadline)
    assert [t.text for t in read] == [read_as[HEADLINES[0]], read_as[HEADLINES[1]]] and not any(t.unread for t in read)

    late = batch([frame(HEADLINES[2]), frame(HEADLINES[1])], start_s=2.0, stream="live")
    now[0] = late.segment.wallclock_start + late.segment.duration_s + 2.5  # 2.5 s after it ended
    whole, unread = reader.stats.whole + reader.stats.regions, reader.stats.unread
    texts = reader.read(late, deadline)
    # The new headline is not read; the next frame shows what the last read frame showed: reused, not unread.
    assert [(t.unread, t.reused, t.text) for t in texts] == [(True, False, ""), (False, True, read_as[HEADLINES[1]])]
    assert texts[0].lines == [] and texts[0].embedding is None
    assert (reader.stats.whole + reader.stats.regions, reader.stats.unread) == (whole, unread + 1)

    caught_up = batch([frame(HEADLINES[2])], start_s=4.0, stream="live")
    now[0] = caught_up.segment.wallclock_start + caught_up.segment.duration_s + 0.5
    assert [(t.unread, t.text) for t in reader.read(caught_up, deadline)] == [(False, read_as[HEADLINES[2]])]


def test_past_its_deadline_a_change_away_from_text_still_keeps_the_lines(embedder: TextEmbedder):
    """A shape moving over the sky costs window detections only: done even when late, so the stream's reference
    picture moves on and its lines stand (not unread)."""
    reader = ScreenTextReader(OcrConfig(), embedder)
    headline = frame(HEADLINES[0])
    shape = headline.copy()
    shape[60:180, 200:440] = 255  # a white block over ~12% of the sky, far from the banner
    now = [0.0]
    deadline = LiveDeadline(max_lag_s=2.0, clock=lambda: now[0])
    first = batch([headline], stream="shapes")
    now[0] = first.segment.wallclock_start + first.segment.duration_s
    (read,) = reader.read(first, deadline)
    late = batch([shape], start_s=1.0, stream="shapes")
    now[0] = late.segment.wallclock_start + late.segment.duration_s + 10.0
    regions = reader.stats.regions
    (kept,) = reader.read(late, deadline)
    assert (kept.unread, kept.reused, kept.text) == (False, False, read.text) and read.text
    assert reader.stats.regions == regions + 1 and reader.stats.unread == 0


def test_the_deadline_is_checked_as_each_frame_comes_up(embedder: TextEmbedder):
    """Reading the first frame took the reader past the deadline: the second is not read."""
    reader = ScreenTextReader(OcrConfig(), embedder)
    first_read = "\n".join(line.text for line in reader.recognise(frame(HEADLINES[0])))
    segment = batch([frame(HEADLINES[0]), frame(HEADLINES[1])], stream="slow")
    end = segment.segment.wallclock_start + segment.segment.duration_s
    clock = iter([end + 1.0, end + 3.0])
    texts = reader.read(segment, LiveDeadline(max_lag_s=2.0, clock=lambda: next(clock)))
    assert [(t.unread, t.text) for t in texts] == [(False, first_read), (True, "")]


def test_without_a_deadline_every_changed_frame_is_read_however_late(embedder: TextEmbedder):
    """Backfill and replay pass no deadline: a segment from last year is read like any other."""
    reader = ScreenTextReader(OcrConfig(), embedder)
    texts = reader.read(batch([frame(HEADLINES[0]), frame(HEADLINES[1])], stream="archive"))
    assert [t.unread for t in texts] == [False, False] and all(t.lines for t in texts)


class FailingOnBlack(OcrEngine):
    """The real engine, except that its detector fails on an all-black frame."""

    def detect(self, image, window=None):
        if not image.any():
            raise StageError("ocr_error", "RuntimeError: black", stage="ocr")
        return super().detect(image, window)


def test_a_failing_frame_fails_its_batch_only(embedder: TextEmbedder):
    reader = ScreenTextReader(OcrConfig(), embedder)
    reader.engine = FailingOnBlack(reader.config)
    black = np.zeros_like(frame())
    good, bad, after = reader.read_many([batch([frame(HEADLINES[0])], stream="good"),
                                         batch([frame(HEADLINES[1]), black], stream="bad"),
                                         batch([frame(HEADLINES[2])], start_s=5.0, stream="bad")])
    assert isinstance(bad, StageError) and bad.code == "ocr_error"
    assert len(good) == 1 and similarity(good[0].text, HEADLINES[0]) >= 0.9
    assert len(after) == 1 and not after[0].reused  # the stream's next segment is read again
    with pytest.raises(StageError):
        reader.read(batch([black], stream="black"))


def _count_recogniser_runs(reader: ScreenTextReader) -> dict:
    """Counts the recogniser's model runs, wrapping the reader's engine's session call."""
    count = {"runs": 0}
    session = reader.engine._recogniser

    def counted(inputs):
        count["runs"] += 1
        return session(inputs)

    reader.engine._recogniser = counted
    return count
