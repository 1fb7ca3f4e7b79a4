"""The segmenter against real clips and the sample broadcast: cuts, times, frames, errors.

Expectations are computed from the source itself (its keyframes, its frames' times), so
each clip checks the cutting rule rather than numbers copied from a previous run.
"""

from __future__ import annotations

import functools
import http.server
import io
import itertools
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import pytest

from pipelines.cli.sample_video import write_sample_video
from pipelines.segmenter import (
    CLOCK_HZ,
    SEGMENT_TS_OFFSET_S,
    MediaSegment,
    SourceError,
    iter_segments,
)

TICK_S = 1 / CLOCK_HZ
REAL_CLIPS = ["friday.mp4", "car-detection.mp4", "bottle-detection.mp4", "one-by-one-person-detection.mp4"]


@pytest.fixture(scope="module")
def sample_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "sample.mp4"
    write_sample_video(path, duration_s=20.0)
    return path


def source_facts(path: Path) -> dict:
    """What the source says about itself: codec, size, keyframe times and every frame's time
    (seconds from its first keyframe), by demuxing and decoding it directly."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        keyframes = [p.pts * stream.time_base for p in container.demux(stream) if p.size and p.is_keyframe]
        container.seek(0)
        frames = [f.pts * stream.time_base for f in container.decode(stream)]
        facts = {"codec": stream.codec_context.name, "size": (stream.width, stream.height)}
    first = keyframes[0]
    return facts | {"keyframes": [float(k - first) for k in keyframes], "frames": [float(f - first) for f in frames]}


def segment_frames(segment: MediaSegment) -> list[float]:
    """Stream times of the frames decoded from one segment alone."""
    with av.open(io.BytesIO(segment.payload)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return [segment.media_start_s + float(f.time) - SEGMENT_TS_OFFSET_S for f in container.decode(stream)]


def spans(segments: list[MediaSegment]) -> list[float]:
    """start, duration, start, duration, ... (flat, for pytest.approx)."""
    return [x for s in segments for x in (s.media_start_s, s.duration_s)]


def expected_starts(keyframes: list[float], target_s: float) -> list[float]:
    """The cutting rule, spelled out: cut at the first keyframe at or after target_s since the last cut."""
    starts = [keyframes[0]]
    for k in keyframes[1:]:
        if k - starts[-1] >= target_s - TICK_S:
            starts.append(k)
    return starts


@pytest.mark.parametrize(
    ("clip", "target_s"),
    [(name, 2.0) for name in REAL_CLIPS] + [("friday.mp4", 0.5), ("car-detection.mp4", 10.0), ("sample", 2.0)],
)
def test_segments_follow_the_source(clip: str, target_s: float, real_video_dir: Path, sample_path: Path) -> None:
    path = sample_path if clip == "sample" else real_video_dir / clip
    facts = source_facts(path)
    segments = list(iter_segments(str(path), target_s=target_s))

    assert [s.seq for s in segments] == list(range(len(segments)))
    starts = [s.media_start_s for s in segments]
    assert starts == pytest.approx(expected_starts(facts["keyframes"], target_s), abs=TICK_S)
    for a, b in itertools.pairwise(segments):
        assert b.media_start_s == pytest.approx(a.media_start_s + a.duration_s, abs=TICK_S)
        assert a.duration_s >= target_s - TICK_S  # only the last segment may be short
    frame_period = facts["frames"][1] - facts["frames"][0]
    total = segments[-1].media_start_s + segments[-1].duration_s
    assert total == pytest.approx(facts["frames"][-1] + frame_period, abs=frame_period / 2 + TICK_S)
    assert {(s.codec, s.width, s.height, s.source) for s in segments} == {(facts["codec"], *facts["size"], str(path))}

    times = []
    for segment in segments:
        with av.open(io.BytesIO(segment.payload)) as container:
            packet = next(p for p in container.demux(container.streams.video[0]) if p.size)
            # Remuxed, not re-encoded: the codec is the source's; the segment opens on a keyframe
            # in Annex-B form that carries its own parameter sets (SPS, NAL type 7), so it decodes alone.
            assert container.streams.video[0].codec_context.name == facts["codec"]
            assert packet.is_keyframe
            data = bytes(packet)
            assert data.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
            assert any(data[i + 3] & 0x1F == 7 for i in range(len(data) - 4) if data[i : i + 3] == b"\x00\x00\x01")
        frames = segment_frames(segment)
        assert frames[0] == pytest.approx(segment.media_start_s, abs=TICK_S)
        assert frames[-1] < segment.media_start_s + segment.duration_s
        times += frames
    # Every frame of the source comes out, once, at its own time.
    assert times == pytest.approx(facts["frames"], abs=2 * TICK_S)


def test_directory_plays_its_files_as_one_stream(tmp_path: Path, real_video_dir: Path) -> None:
    # Name order, not listing order; non-video files are skipped.
    shutil.copy(real_video_dir / "car-detection.mp4", tmp_path / "b.mp4")
    shutil.copy(real_video_dir / "friday.mp4", tmp_path / "a.mp4")
    (tmp_path / "notes.txt").write_text("not a video")
    first = list(iter_segments(str(tmp_path / "a.mp4")))
    second = list(iter_segments(str(tmp_path / "b.mp4")))
    both = list(iter_segments(str(tmp_path)))

    assert [s.seq for s in both] == list(range(len(first) + len(second)))
    assert [s.payload for s in both] == [s.payload for s in first + second]
    first_end = first[-1].media_start_s + first[-1].duration_s
    assert [s.media_start_s for s in both[len(first):]] == pytest.approx(
        [first_end + s.media_start_s for s in second], abs=TICK_S)
    assert {s.source for s in both[len(first):]} == {str(tmp_path / "b.mp4")}
    assert {(s.width, s.height) for s in both} == {(640, 480), (768, 432)}


def test_loop_keeps_media_time_running(real_video_dir: Path) -> None:
    once = list(iter_segments(str(real_video_dir / "friday.mp4")))
    looped = list(itertools.islice(iter_segments(str(real_video_dir / "friday.mp4"), loop=True), 2 * len(once) + 1))
    period = once[-1].media_start_s + once[-1].duration_s

    assert [s.seq for s in looped] == list(range(len(looped)))
    assert [s.payload for s in looped] == [s.payload for s in once * 3][: len(looped)]
    assert [s.media_start_s for s in looped] == pytest.approx(
        [k * period + s.media_start_s for k in range(3) for s in once][: len(looped)], abs=TICK_S)


def test_timestamp_discontinuity_starts_a_new_timeline(tmp_path: Path, real_video_dir: Path) -> None:
    # Segment payloads back to back: every segment restarts its clock, as a live source's
    # clock does when its encoder restarts. Media time must still run on without a gap.
    segments = list(iter_segments(str(real_video_dir / "friday.mp4")))
    joined = tmp_path / "restarts.ts"
    joined.write_bytes(b"".join(s.payload for s in segments))
    again = list(iter_segments(str(joined)))

    assert spans(again) == pytest.approx(spans(segments), abs=TICK_S)
    assert sum(len(segment_frames(s)) for s in again) == 185


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server for a folder: (folder, base URL)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


def test_hls_over_http(http_dir: tuple[Path, str], real_video_dir: Path) -> None:
    folder, base = http_dir
    segments = list(iter_segments(str(real_video_dir / "friday.mp4")))
    playlist = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:3", "#EXT-X-MEDIA-SEQUENCE:0"]
    for s in segments:
        (folder / f"{s.seq}.ts").write_bytes(s.payload)
        playlist += ["#EXT-X-DISCONTINUITY", f"#EXTINF:{s.duration_s:.3f},", f"{s.seq}.ts"]
    (folder / "live.m3u8").write_text("\n".join(playlist + ["#EXT-X-ENDLIST", ""]))

    url = f"{base}/live.m3u8"
    again = list(iter_segments(url))
    assert spans(again) == pytest.approx(spans(segments), abs=TICK_S)
    assert {s.source for s in again} == {url}


def _audio_only(path: Path, real_video_dir: Path) -> None:
    with av.open(str(real_video_dir / "friday.mp4")) as src, av.open(str(path), "w") as out:
        audio = out.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.size:
                packet.stream = audio
                out.mux(packet)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.mp4", None, "no such file"),
        ("garbage.mp4", lambda p, d: _write(p, os.urandom(64_000)), "cannot open"),
        # moov first, then mdat cut short: the first segments come out, then the cut packet fails.
        ("truncated.mp4", lambda p, d: _write(p, (d / "friday.mp4").read_bytes()[:300_000]), "truncated or corrupt"),
        ("audio.m4a", _audio_only, "no video track"),
        ("empty_dir", lambda p, d: p.mkdir(), "no video files"),
        ("ftp://example.com/a.mp4", None, "unsupported URL scheme"),
    ],
)
def test_bad_sources_raise_source_error(name, make, message, tmp_path: Path, real_video_dir: Path) -> None:
    source = name if "://" in name else str(tmp_path / name)
    if make is not None:
        make(tmp_path / name, real_video_dir)
    with pytest.raises(SourceError, match=message):
        list(iter_segments(source))
