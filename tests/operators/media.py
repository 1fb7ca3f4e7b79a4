"""Test media: MPEG-TS segments cut from the real clips, and synthetic clips of known content.

Real segments are remuxed, not re-encoded: the decoder sees the exact H.264
bitstream a camera produced, cut at keyframes the way a live publisher cuts
its stream. Synthetic clips are encoded with libx264 when a test needs to know
what every frame shows.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from operators.frames import SegmentInfo


@dataclass(frozen=True)
class Segment:
    """One publisher chunk: an MPEG-TS payload that starts at a keyframe."""

    payload: bytes
    media_start_s: float
    duration_s: float
    keyframes_s: tuple[float, ...]  # stream times of the keyframes inside it

    def info(self, seq: int = 0, stream_id: str = "cam-1", tenant_id: str = "t1", **overrides) -> SegmentInfo:
        fields = dict(tenant_id=tenant_id, stream_id=stream_id, seq=seq,
                      wallclock_start=1_700_000_000.0 + self.media_start_s,
                      media_start_s=self.media_start_s, duration_s=self.duration_s)
        fields.update(overrides)
        return SegmentInfo(**fields)


def remux_segments(path: Path, keyframes_per_segment: int = 1) -> list[Segment]:
    """Cut the video track of ``path`` into MPEG-TS segments of ``keyframes_per_segment`` GOPs each.

    Packets keep their original timestamps, as in a live stream whose segments
    continue one another's clock.
    """
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        base = stream.start_time or 0
        packets = [p for p in src.demux(stream) if p.size]
        groups: list[list[av.Packet]] = []
        keys_seen = 0
        for packet in packets:
            if packet.is_keyframe:
                if keys_seen % keyframes_per_segment == 0:
                    groups.append([])
                keys_seen += 1
            groups[-1].append(packet)
        starts = [_seconds(g[0].pts - base, stream.time_base) for g in groups]
        end = max(_seconds(p.pts + p.duration - base, stream.time_base) for p in packets)
        segments = []
        for i, group in enumerate(groups):
            stop = starts[i + 1] if i + 1 < len(groups) else end
            keys = tuple(_seconds(p.pts - base, stream.time_base) for p in group if p.is_keyframe)
            segments.append(Segment(_mux_ts(stream, group), starts[i], stop - starts[i], keys))
    return segments


def frame_times(path: Path) -> list[float]:
    """Presentation times (s from the clip's start) of every frame of the video track, in order."""
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        base = stream.start_time or 0
        return sorted(_seconds(p.pts - base, stream.time_base) for p in src.demux(stream) if p.size)


def _seconds(ticks: int, time_base: Fraction) -> float:
    return float(ticks * time_base)


def _mux_ts(template: av.VideoStream, packets: list[av.Packet]) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as out:
        stream = out.add_stream_from_template(template)
        for packet in packets:
            packet.stream = stream
            out.mux(packet)
    return buffer.getvalue()


def encode_synthetic(frames: np.ndarray, fps: int = 10, gop: int = 10) -> bytes:
    """Encode RGB frames [N,H,W,3] (even H and W) as H.264 in MPEG-TS with a keyframe every ``gop`` frames."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # Fixed GOP and no scene-cut keyframes: tests know where every keyframe is.
        # Near-lossless (crf 10) so pixel content survives for tests that check it.
        stream.options = {"preset": "ultrafast", "crf": "10",
                          "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"}
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def encode_audio_only(seconds: float = 1.0) -> bytes:
    """An MPEG-TS payload with an MP2 audio track and no video."""
    buffer = io.BytesIO()
    rate = 48_000
    with av.open(buffer, "w", format="mpegts") as out:
        stream = out.add_stream("mp2", rate=rate)
        samples = int(seconds * rate)
        tone = (0.1 * np.sin(np.arange(samples) * 2 * np.pi * 440 / rate)).astype(np.float32)
        chunk = stream.frame_size or 1152
        for start in range(0, samples - chunk + 1, chunk):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + chunk].copy(), format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()
