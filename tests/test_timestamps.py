"""Timestamp repair: made-up packet sequences through `TimestampRepair`, and real files with broken
timestamps (none at all, a reset mid-stream, a 33-bit wrap) cut by the segmenter with monotonic stream time."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import pytest

from pipelines.segmenter import iter_segments
from pipelines.timestamps import CLOCK_HZ, WRAP_TICKS, TimestampRepair

TB_90K = Fraction(1, CLOCK_HZ)
FRAME = 3600  # 25 fps in 90 kHz ticks


def run(repair: TimestampRepair, packets: list[tuple[int | None, int | None, float]]) -> list:
    """(pts, dts, arrival) per packet -> the stamps."""
    return [repair.stamp(pts, dts, FRAME, arrival) for pts, dts, arrival in packets]


def test_packets_without_timestamps_before_the_first_real_one_are_placed_by_frame_rate():
    """RTSP before its first RTCP report: the first packets carry nothing; then the sender's clock starts."""
    repair = TimestampRepair(TB_90K, FRAME)
    stamps = run(repair, [(None, None, 0.0), (None, None, 0.04), (900_000, 900_000, 0.08), (903_600, 903_600, 0.12)])
    assert [s.dts for s in stamps] == [0, FRAME, 2 * FRAME, 3 * FRAME]
    assert not any(s.discontinuity for s in stamps)
    assert repair.take_repairs() == {"missing": 2}


def test_dts_only_and_pts_only_packets_take_the_other_time():
    repair = TimestampRepair(TB_90K, FRAME)
    stamps = run(repair, [(None, 0, 0.0), (FRAME, None, 0.04)])
    assert [(s.pts, s.dts) for s in stamps] == [(0, 0), (FRAME, FRAME)]
    assert repair.take_repairs() == {"pts_from_dts": 1, "dts_from_pts": 1}


def test_a_33_bit_wrap_is_unwrapped():
    repair = TimestampRepair(TB_90K, FRAME)
    start = WRAP_TICKS - 2 * FRAME
    raw = [(start + i * FRAME) % WRAP_TICKS for i in range(5)]
    stamps = run(repair, [(t, t, i * 0.04) for i, t in enumerate(raw)])
    assert [s.dts - stamps[0].dts for s in stamps] == [i * FRAME for i in range(5)]
    assert not any(s.discontinuity for s in stamps)
    assert repair.take_repairs() == {"wrap": 1}


def test_a_reset_continues_where_presentation_ended_plus_the_silence():
    """An encoder restarted: its clock starts again near 0, 2 s after its last frame arrived."""
    repair = TimestampRepair(TB_90K, FRAME)
    before = run(repair, [(5_000_000 + i * FRAME, 5_000_000 + i * FRAME, i * 0.04) for i in range(3)])
    after = run(repair, [(i * FRAME, i * FRAME, 2.08 + i * 0.04) for i in range(2)])
    end = before[-1].pts + FRAME
    assert after[0].discontinuity and not after[1].discontinuity
    assert after[0].pts == pytest.approx(end + 2.0 * CLOCK_HZ - FRAME, abs=2)
    assert after[1].pts - after[0].pts == FRAME
    assert repair.take_repairs() == {"reset": 1}


def test_a_forward_jump_past_the_limit_is_a_discontinuity_but_a_short_one_is_not():
    repair = TimestampRepair(TB_90K, FRAME, max_jump_s=10.0)
    stamps = run(repair, [(0, 0, 0.0), (5 * CLOCK_HZ, 5 * CLOCK_HZ, 0.04), (3600 * CLOCK_HZ, 3600 * CLOCK_HZ, 0.08)])
    assert [s.discontinuity for s in stamps] == [False, False, True]
    assert stamps[2].pts == 5 * CLOCK_HZ + FRAME  # right after the frame before it: it arrived on time
    assert repair.take_repairs() == {"jump": 1}


def test_decode_times_never_go_back_and_pts_never_precedes_dts():
    repair = TimestampRepair(TB_90K, FRAME)
    stamps = run(repair, [(0, 0, 0.0), (FRAME, FRAME, 0.04), (FRAME, FRAME - 10, 0.08), (FRAME, 3 * FRAME, 0.12)])
    dts = [s.dts for s in stamps]
    assert all(b > a for a, b in zip(dts, dts[1:]))
    assert all(s.pts >= s.dts for s in stamps)
    # The third packet moved one tick past the second; the fourth has its PTS before its DTS.
    assert repair.take_repairs() == {"non_monotonic": 1, "pts_before_dts": 1}


def test_millisecond_time_bases_convert_without_drift():
    """RTMP / FLV carry milliseconds; 40 ms steps are exactly 3600 ticks."""
    repair = TimestampRepair(Fraction(1, 1000), FRAME)
    stamps = [repair.stamp(i * 40, i * 40, 40, i * 0.04) for i in range(1000)]
    assert stamps[-1].dts == 999 * FRAME and not repair.take_repairs()


# --- real files ------------------------------------------------------------------------------


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def _monotonic(segments) -> None:
    for a, b in zip(segments, segments[1:]):
        assert b.media_start_s >= a.media_start_s + a.duration_s - 1e-6, (a, b)


def test_a_raw_h264_stream_without_any_timestamps_is_cut(tmp_path: Path, real_video_dir: Path):
    """An Annex-B elementary stream has no timestamps at all; FFmpeg plays it, so livelens takes it."""
    raw = tmp_path / "camera.h264"
    _ffmpeg("-i", str(real_video_dir / "friday.mp4"), "-an", "-c", "copy", "-bsf:v", "h264_mp4toannexb",
            "-f", "h264", str(raw))
    segments = list(iter_segments(str(raw)))
    assert len(segments) >= 2
    _monotonic(segments)
    assert sum(s.repairs.get("missing", 0) for s in segments) > 100  # every packet
    with av.open(str(real_video_dir / "friday.mp4")) as src:
        frames = sum(1 for p in src.demux(src.streams.video[0]) if p.size)
    # 185 frames at the frame rate FFmpeg assumes for a raw stream (25 fps: it carries none)
    assert sum(s.duration_s for s in segments) == pytest.approx(frames / 25, abs=0.05)


def test_a_timestamp_reset_mid_file_gives_monotonic_stream_time(tmp_path: Path, real_video_dir: Path):
    """Two recordings joined byte for byte (an encoder restarted): the second's clock starts again."""
    first, second = tmp_path / "a.ts", tmp_path / "b.ts"
    _ffmpeg("-i", str(real_video_dir / "friday.mp4"), "-an", "-c", "copy", "-output_ts_offset", "100", str(first))
    _ffmpeg("-i", str(real_video_dir / "friday.mp4"), "-an", "-c", "copy", str(second))
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    once = list(iter_segments(str(second)))
    segments = list(iter_segments(str(joined)))
    _monotonic(segments)
    # FFmpeg's MPEG-TS demuxer reads a step back as a 33-bit wrap and hands out a jump ~26 h forward.
    assert sum(s.repairs.get("reset", 0) + s.repairs.get("jump", 0) for s in segments) == 1
    # Both recordings are all there, back to back.
    assert sum(s.duration_s for s in segments) == pytest.approx(2 * sum(s.duration_s for s in once), abs=0.1)


def test_a_33_bit_wrap_inside_an_mpeg_ts_file_keeps_stream_time_going(tmp_path: Path, real_video_dir: Path):
    """A recording whose 90 kHz clock rolls over 2 s in (26.5 h after its encoder started)."""
    wrapped = tmp_path / "wrap.ts"
    _ffmpeg("-i", str(real_video_dir / "friday.mp4"), "-an", "-c", "copy",
            "-output_ts_offset", f"{WRAP_TICKS / CLOCK_HZ - 2.0:.6f}", str(wrapped))
    once = list(iter_segments(str(real_video_dir / "friday.mp4")))
    segments = list(iter_segments(str(wrapped)))
    _monotonic(segments)
    assert sum(s.duration_s for s in segments) == pytest.approx(sum(s.duration_s for s in once), abs=0.05)
