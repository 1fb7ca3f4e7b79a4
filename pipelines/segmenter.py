"""Cut a video source into short MPEG-TS (or Matroska) segments without re-encoding.

A publisher sends video as self-contained container segments so that any
decoder can start at any segment. The segmenter only remuxes: packets are
copied from the source into an in-memory MPEG-TS, so segmenting costs a demux
and a mux, never a decode. MPEG-TS carries only a few video codecs
(``TS_CODECS``); every other codec (MPEG-4 Part 2, MS-MPEG4 from old AVIs,
MJPEG, VP8/VP9, AV1, ...) travels in Matroska, which can hold anything FFmpeg
decodes, still without re-encoding. A codec Matroska cannot hold either fails
here, at publish time, with a SourceError naming it. For H.264/HEVC read from MP4/MOV (length-prefixed
NAL units, parameter sets in the container header) FFmpeg's MPEG-TS muxer
inserts the ``*_mp4toannexb`` bitstream filter on its own (automatic BSF, on by
default), so every segment carries start codes and its SPS/PPS before the
keyframe; tests/test_segmenter.py checks both.

Cutting rules:
- A segment starts at a keyframe and ends at the first keyframe at or after
  ``target_s`` of accumulated duration. Segments are therefore as long as the
  source's GOP structure allows: a source with a keyframe every 8 s gives 8 s
  segments whatever ``target_s`` says. Packets before a source's first keyframe
  cannot be decoded alone and are dropped.
- The first video track is carried, and beside it the audio track and the text
  subtitle tracks (``pipelines.segment_tracks``: which, and the container they
  need); closed captions ride inside the video packets. Every other track is
  dropped. Packets of the other tracks go into the segment open when they are
  read, so each travels exactly once, its own timestamps kept on the segment's
  clock (a few packets around a cut may sit in the neighbouring segment).
- Closed GOPs are assumed (x264's default): frames after a keyframe in decode
  order do not reference frames before it.

Timestamps:
- ``MediaSegment.media_start_s`` is stream time: seconds from the first frame
  of the stream, continuing across the files of a directory, across loops and
  across timestamp discontinuities of a live source (a backward jump starts a
  new timeline where the previous one ended).
- Inside a payload, times are segment-relative: the segment's first frame is at
  ``SEGMENT_TS_OFFSET_S`` on the 90 kHz MPEG-TS clock, later frames keep their
  exact spacing. So a decoded frame's stream time is
  ``media_start_s + frame.time - SEGMENT_TS_OFFSET_S``. Segment-relative times
  never reach the 33-bit clock wrap (26.5 h) however long a stream runs; the
  offset keeps decode timestamps positive when B-frames are reordered
  (decode time precedes presentation time by the reorder delay).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlparse

import av

from pipelines.segment_tracks import CarriedTracks, TrackMuxer, select_tracks

CLOCK_HZ = 90_000  # the MPEG-TS clock; all bookkeeping is in these integer ticks, so nothing drifts
SEGMENT_TS_OFFSET_S = 10.0
_OFFSET_TICKS = int(SEGMENT_TS_OFFSET_S * CLOCK_HZ)
_TICK = Fraction(1, CLOCK_HZ)

# Codecs MPEG-TS has a stream type for that FFmpeg's TS demuxer reads back; the rest go in Matroska.
TS_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video"})
MPEGTS, MATROSKA = "mpegts", "matroska"


def segment_container(codec: str) -> str:
    """The FFmpeg format a segment of ``codec`` travels in."""
    return MPEGTS if codec in TS_CODECS else MATROSKA


VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".ts", ".m2ts", ".flv", ".avi"})
URL_SCHEMES = frozenset({"http", "https", "rtsp", "rtsps", "rtmp", "rtmps"})

# Network sources: a stalled server must not hang the publisher forever. PyAV's
# timeout covers opening and each read for every protocol; the options add what
# only some protocols know (HTTP reconnects for HLS, TCP for RTSP because UDP is
# often blocked and loses packets).
NETWORK_TIMEOUT_S = (15.0, 15.0)  # (open, read)
_URL_OPTIONS: dict[str, dict[str, str]] = {
    "http": {"reconnect": "1", "reconnect_streamed": "1", "reconnect_delay_max": "5", "rw_timeout": "15000000"},
    "rtsp": {"rtsp_transport": "tcp", "timeout": "15000000"},
    "rtmp": {"rw_timeout": "15000000"},
}


class SourceError(Exception):
    """The source cannot be segmented: missing, unreadable, no video track, or a codec MPEG-TS cannot carry."""


@dataclass(frozen=True)
class MediaSegment:
    """One self-contained segment of the video track and its ``tracks`` (``video``, ``audio``, ``subtitle``:
    what the segment contract's ``VideoSegment.tracks`` lists), in ``container`` (an FFmpeg format name)."""

    seq: int
    media_start_s: float
    duration_s: float
    codec: str
    width: int
    height: int
    payload: bytes
    source: str
    container: str = MPEGTS
    tracks: tuple[str, ...] = ("video",)


def iter_segments(source: str, *, target_s: float = 2.0, loop: bool = False, audio: bool = True,
                  subtitles: bool = True) -> Iterator[MediaSegment]:
    """Segments of ``source``: a file, a directory (its video files in name order, played as
    one stream) or an http(s)/HLS/rtsp/rtmp URL. ``loop`` plays it again from the start when
    it ends (for a URL: reconnects), forever; media time keeps counting up. ``audio`` /
    ``subtitles``: carry the audio track / the text subtitle tracks (``pipelines.segment_tracks``).
    """
    if target_s <= 0:
        raise ValueError(f"target_s must be positive, got {target_s}")
    inputs = _resolve(source)
    target_ticks = round(target_s * CLOCK_HZ)
    seq = 0
    timeline_start = 0  # ticks of stream time where the next input begins
    while True:
        for name in inputs:
            produced = 0
            for media in _segments_of(name, target_ticks, timeline_start, audio, subtitles):
                yield MediaSegment(seq=seq, **media)
                seq += 1
                produced += 1
                timeline_start = round((media["media_start_s"] + media["duration_s"]) * CLOCK_HZ)
            if not produced:
                # Without this, a source with no keyframe would make `loop` spin forever.
                raise SourceError(f"{name}: no keyframe in the video track, nothing to segment")
        if not loop:
            return


def _resolve(source: str) -> list[str]:
    scheme = urlparse(source).scheme.lower()
    if scheme in URL_SCHEMES:
        return [source]
    if len(scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise SourceError(f"{source}: unsupported URL scheme {scheme!r} (supported: {sorted(URL_SCHEMES)})")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
        if not files:
            raise SourceError(f"{source}: directory has no video files ({', '.join(sorted(VIDEO_EXTENSIONS))})")
        return [str(p) for p in files]
    if not path.is_file():
        raise SourceError(f"{source}: no such file or directory")
    return [source]


def _open(name: str) -> av.container.InputContainer:
    scheme = urlparse(name).scheme.lower()
    try:
        if scheme in URL_SCHEMES:
            options = _URL_OPTIONS[scheme.rstrip("s")]  # TLS variants (https, rtsps, rtmps) take the same options
            return av.open(name, options=options, timeout=NETWORK_TIMEOUT_S)
        return av.open(name)
    except av.FFmpegError as exc:
        raise SourceError(f"{name}: cannot open: {exc}") from exc


class _SegmentWriter:
    """Muxes the packets of one segment into an in-memory container as they arrive."""

    def __init__(self, template: av.VideoStream, start_ticks: int, container: str, tracks: CarriedTracks):
        self.start_ticks = start_ticks
        self.end_ticks = start_ticks  # presentation end of the latest frame added
        self._buffer = io.BytesIO()
        self._output = av.open(self._buffer, "w", format=container)
        # opaque: copy the codec parameters without looking up an encoder of the source's codec (there is
        # none for decoder-only names such as libdav1d, and a remux needs none).
        self._stream = self._output.add_stream_from_template(template, opaque=True)
        self._tracks = TrackMuxer(self._output, tracks)
        self._last_other: dict[int, int] = {}  # input track -> its last muxed timestamp (ticks in the segment)

    def add(self, packet: av.Packet, pts: int, dts: int, duration: int) -> None:
        packet.pts = pts - self.start_ticks + _OFFSET_TICKS
        packet.dts = dts - self.start_ticks + _OFFSET_TICKS
        packet.duration = duration
        packet.time_base = _TICK
        packet.stream = self._stream
        self._output.mux(packet)
        self.end_ticks = max(self.end_ticks, pts + duration)

    def add_other(self, packet: av.Packet, pts: int, duration: int) -> None:
        """A packet of a carried audio or subtitle track, ``pts`` in stream ticks on the video's timeline."""
        relative = pts - self.start_ticks + _OFFSET_TICKS
        track = packet.stream.index
        # Negative: before the stream's clock starts. Not after the track's previous packet: the source's
        # clock jumped (a live encoder restarting) and the video has not shown it yet; the muxer would refuse it.
        if relative < 0 or relative <= self._last_other.get(track, -1):
            return
        mapped = self._tracks.map(packet)
        if mapped is None:
            return
        self._last_other[track] = relative
        mapped.pts = mapped.dts = relative
        mapped.duration = duration
        mapped.time_base = _TICK
        self._output.mux(mapped)

    def close(self) -> bytes:
        self._output.close()
        return self._buffer.getvalue()


def _segments_of(name: str, target_ticks: int, timeline_start: int, audio: bool,
                 subtitles: bool) -> Iterator[dict]:
    """Segments of one input as MediaSegment fields (all but seq), stream time from ``timeline_start``."""
    container = _open(name)
    try:
        if not container.streams.video:
            raise SourceError(f"{name}: no video track")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or not ctx.name:
            raise SourceError(f"{name}: video track has a codec FFmpeg does not know")
        # The codec's own name (av1), not this build's decoder for it (libdav1d): the consumer may decode with another.
        codec, width, height = ctx.codec.canonical_name, ctx.width, ctx.height
        tracks = select_tracks(container, audio=audio, subtitles=subtitles)
        container_format = tracks.container(codec in TS_CODECS)
        tb = stream.time_base
        # A packet without a duration (some live protocols) lasts one frame period.
        frame_ticks = round(CLOCK_HZ / stream.average_rate) if stream.average_rate else 0

        def finish(seg: _SegmentWriter, end_ticks: int) -> dict:
            try:
                payload = seg.close()
            except av.FFmpegError as exc:
                raise SourceError(f"{name}: cannot write {codec} into {container_format}: {exc}") from exc
            return dict(media_start_s=seg.start_ticks / CLOCK_HZ, duration_s=(end_ticks - seg.start_ticks) / CLOCK_HZ,
                        codec=codec, width=width, height=height, payload=payload, source=name,
                        container=container_format, tracks=tracks.names)

        base: int | None = None  # source pts (in tb) that maps to `origin`; None: waiting for a keyframe
        origin = timeline_start
        last_dts: int | None = None
        seg: _SegmentWriter | None = None
        early: list[av.Packet] = []  # other tracks' packets read before the first segment opened
        for packet in _demux(container, [stream, *([tracks.audio] if tracks.audio else []), *tracks.subtitles], name):
            if packet.stream.index != stream.index:
                if packet.pts is None:
                    continue
                if seg is None:
                    # Files interleave tracks in chunks: audio of the first second may precede the first keyframe.
                    early.append(packet)
                    continue
                for other in [*early, packet]:
                    at = origin + round((other.pts * other.stream.time_base - base * tb) * CLOCK_HZ)
                    if other is not packet and at < seg.start_ticks:
                        continue  # before the stream's first frame
                    length = round(other.duration * other.stream.time_base * CLOCK_HZ) if other.duration else 0
                    _mux_or_fail(name, container_format, lambda: seg.add_other(other, at, length))
                early = []
                continue
            # Streams without B-frames may carry only one of the two (AVI, some RTP); they are equal then.
            raw_pts = packet.pts if packet.pts is not None else packet.dts
            raw_dts = packet.dts if packet.dts is not None else packet.pts
            if raw_pts is None:
                raise SourceError(f"{name}: video packet without timestamps")
            if last_dts is not None and raw_dts < last_dts:
                # A live source restarted its clock: close what we have and start a
                # new timeline where the old one ended, at the next keyframe.
                if seg is not None:
                    origin = seg.end_ticks
                    yield finish(seg, seg.end_ticks)
                    seg = None
                base = None
            last_dts = raw_dts
            if base is None:
                if not packet.is_keyframe:
                    continue
                base = raw_pts
            pts = origin + round((raw_pts - base) * tb * CLOCK_HZ)
            dts = origin + round((raw_dts - base) * tb * CLOCK_HZ)
            duration = round(packet.duration * tb * CLOCK_HZ) if packet.duration else frame_ticks
            if packet.is_keyframe and (seg is None or pts - seg.start_ticks >= target_ticks):
                if seg is not None:
                    # Closed GOP: every frame of the segment is presented before this keyframe.
                    yield finish(seg, pts)
                seg = _SegmentWriter(stream, pts, container_format, tracks)
            try:
                seg.add(packet, pts, dts, duration)
            except av.FFmpegError as exc:
                # The muxer's Annex-B filter parses every H.264/HEVC packet: a truncated or
                # corrupt one fails here, as does a codec the container has no mapping for.
                raise SourceError(f"{name}: {codec} packet at {pts / CLOCK_HZ:.3f} s cannot go into "
                                  f"{container_format} (truncated or corrupt source, or a codec {container_format} "
                                  f"cannot carry): {exc}") from exc
        if seg is not None:
            yield finish(seg, seg.end_ticks)
    finally:
        container.close()


def _mux_or_fail(name: str, container_format: str, mux) -> None:
    try:
        mux()
    except av.FFmpegError as exc:
        raise SourceError(f"{name}: an audio or subtitle packet cannot go into {container_format}: {exc}") from exc


def _demux(container: av.container.InputContainer, streams: list, name: str) -> Iterator[av.Packet]:
    """The packets of ``streams`` in file order; read errors (a truncated or corrupt file, a dropped connection)
    raise SourceError."""
    packets = container.demux(streams)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.FFmpegError as exc:
            raise SourceError(f"{name}: read error: {exc}") from exc
        if packet.size:  # demux ends with an empty flush packet
            yield packet
