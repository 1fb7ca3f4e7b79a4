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
  clock (mapped through the video's timestamp repair; a few packets around a cut
  may sit in the neighbouring segment).
- Closed GOPs are assumed (x264's default): frames after a keyframe in decode
  order do not reference frames before it.

Timestamps:
- ``MediaSegment.media_start_s`` is stream time: seconds from the first frame
  of the stream, continuing across the files of a directory, across loops and
  across timestamp discontinuities of a live source. Packet times are repaired
  first (`pipelines.timestamps`: missing, DTS-only, wrapped, reset or jumping
  clocks), so any stream FFmpeg plays is cut, and each segment says what was
  repaired; after a reset or jump a new segment starts at the next keyframe,
  where presentation had ended (plus however long the source was silent).
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
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import av

from pipelines.segment_tracks import CarriedTracks, TrackMuxer, select_tracks
# CLOCK_HZ: the MPEG-TS clock; all bookkeeping is in its integer ticks, so nothing drifts.
from pipelines.timestamps import CLOCK_HZ, TimestampRepair

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
URL_SCHEMES = frozenset({"http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp"})
# Protocols that only ever carry live streams; over HTTP(S) a source is live when it has no known duration
# (an HLS playlist without #EXT-X-ENDLIST, a never-ending progressive download).
LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "rtp"})
# Which clock a segment's wall-clock time comes from: the publisher's session start plus stream time
# (files), the sender's own clock (RTSP's RTCP sender reports), or when the segment arrived.
WallclockSource = Literal["publisher", "rtcp", "arrival"]

# Network sources: a stalled server must not hang the publisher forever. PyAV's
# timeout covers opening and each read for every protocol; the options add what
# only some protocols know (HTTP reconnects for HLS, TCP for RTSP because UDP is
# often blocked and loses packets). A caller's options (`livelens publish -o`) go on top.
NETWORK_TIMEOUT_S = (15.0, 15.0)  # (open, read)
# A read that waits longer than this (or half a frame period, if longer) is at the live edge: FFmpeg had
# nothing buffered (frames of a live source come 17-80 ms apart; buffered ones are handed out in microseconds).
LIVE_EDGE_WAIT_S = 0.005
_URL_OPTIONS: dict[str, dict[str, str]] = {
    "http": {"reconnect": "1", "reconnect_streamed": "1", "reconnect_delay_max": "5", "rw_timeout": "15000000"},
    "rtsp": {"rtsp_transport": "tcp", "timeout": "15000000"},
    "rtmp": {"rw_timeout": "15000000"},
    "srt": {"rw_timeout": "15000000"},
    "udp": {"timeout": "15000000", "overrun_nonfatal": "1"},
    "rtp": {"timeout": "15000000"},
}


class SourceError(Exception):
    """The source cannot be segmented: missing, unreadable, no video track, or a codec MPEG-TS cannot carry.

    ``retryable``: the trouble may pass (a URL that could not be opened or whose connection dropped), so
    a live publisher waits and tries again; otherwise the input itself is wrong.
    """

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


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
    # Live sources only (files leave the defaults): epoch seconds of the first frame and which clock said
    # so (`WallclockSource`); seconds of stream time before this segment with no video (the source
    # dropped, stalled or restarted); what `TimestampRepair` repaired in its packets, by kind.
    wallclock_s: float | None = None
    clock: WallclockSource = "publisher"
    gap_before_s: float = 0.0
    repairs: Mapping[str, int] = field(default_factory=dict)
    live: bool = False  # read as it arrives (a stream without an end): never re-paced by a publisher

    def numbered(self, seq: int) -> MediaSegment:
        return replace(self, seq=seq)


@dataclass
class Timeline:
    """Where a stream stands between its inputs (the files of a directory, a live source's connections)."""

    end_ticks: int = 0  # stream time where the next segment may begin: the presentation end of the last one
    last_arrival: float | None = None  # monotonic seconds when the latest packet was read
    # A live source reconnected: the time it was silent (from its last packet to the new connection's first
    # keyframe, less a frame period) passes on the stream's timeline too, as a gap before the next segment.
    silence_passes: bool = False


def iter_segments(source: str, *, target_s: float = 2.0, loop: bool = False, audio: bool = True,
                  subtitles: bool = True) -> Iterator[MediaSegment]:
    """Segments of ``source``: a file, a directory (its video files in name order, played as
    one stream) or a URL of any protocol FFmpeg opens (`URL_SCHEMES`), read once. ``loop`` plays
    it again from the start when it ends, forever; media time keeps counting up. A live source
    that should survive drops and restarts goes through `pipelines.live.live_segments` instead.
    ``audio`` / ``subtitles``: carry the audio track / the text subtitle tracks (``pipelines.segment_tracks``).
    """
    if target_s <= 0:
        raise ValueError(f"target_s must be positive, got {target_s}")
    inputs = _resolve(source)
    target_ticks = round(target_s * CLOCK_HZ)
    seq = 0
    timeline = Timeline()
    while True:
        for name in inputs:
            produced = 0
            for media in segments_of(name, target_ticks, timeline, audio=audio, subtitles=subtitles):
                yield media.numbered(seq)
                seq += 1
                produced += 1
            if not produced:
                # Without this, a source with no keyframe would make `loop` spin forever.
                raise SourceError(f"{name}: no keyframe in the video track, nothing to segment")
        if not loop:
            return


def is_url(source: str) -> bool:
    return urlparse(source).scheme.lower() in URL_SCHEMES


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


def _open(name: str, options: Mapping[str, str] | None = None) -> av.container.InputContainer:
    scheme = urlparse(name).scheme.lower()
    try:
        if scheme in URL_SCHEMES:
            # TLS variants (https, rtsps, rtmps) take the same options
            merged = {**_URL_OPTIONS[scheme.rstrip("s") if scheme != "rtsps" else "rtsp"], **(options or {})}
            return av.open(name, options=merged, timeout=NETWORK_TIMEOUT_S)
        return av.open(name, options=dict(options or {}))
    except av.error.ProtocolNotFoundError as exc:
        raise SourceError(f"{name}: this build of FFmpeg (PyAV's) has no {scheme!r} protocol: {exc}") from exc
    except av.FFmpegError as exc:
        raise SourceError(f"{name}: cannot open: {exc}", retryable=scheme in URL_SCHEMES) from exc


class _SegmentWriter:
    """Muxes the packets of one segment into an in-memory container as they arrive."""

    def __init__(self, template: av.VideoStream, start_ticks: int, container: str, tracks: CarriedTracks):
        self.start_ticks = start_ticks
        self.wallclock_s: float | None = None  # by the sender's clock (None: it has none, or a file)
        self.clock: WallclockSource = "publisher"
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


def segments_of(name: str, target_ticks: int, timeline: Timeline, options: Mapping[str, str] | None = None, *,
                audio: bool = True, subtitles: bool = True) -> Iterator[MediaSegment]:
    """Segments of one input (seq 0: the caller numbers them), from ``timeline`` on; updates ``timeline``.

    Timestamps go through `TimestampRepair` (missing, DTS-only, wrapped, reset), so any stream FFmpeg
    plays is cut; what was repaired goes with each segment. A read error after some segments (a dropped
    connection, a truncated file) first hands out the segment in progress, then raises SourceError.
    ``options``: FFmpeg format / protocol options over the defaults (e.g. rtsp_transport=udp). ``audio`` /
    ``subtitles``: carry the audio track / the text subtitle tracks (``pipelines.segment_tracks``).
    """
    container = _open(name, options)
    try:
        if not container.streams.video:
            raise SourceError(f"{name}: no video track")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None or not ctx.name:
            raise SourceError(f"{name}: video track has a codec FFmpeg does not know")
        # The codec's own name (av1), not this build's decoder for it (libdav1d): the consumer may decode with another.
        codec, width, height = ctx.codec.canonical_name, ctx.width, ctx.height
        scheme = urlparse(name).scheme.lower()
        live = scheme in LIVE_SCHEMES or (scheme in URL_SCHEMES and container.duration is None)
        tracks = select_tracks(container, audio=audio, subtitles=subtitles)
        container_format = tracks.container(codec in TS_CODECS)
        tb = stream.time_base
        # A packet without a duration (some live protocols) lasts one frame period.
        frame_ticks = round(CLOCK_HZ / stream.average_rate) if stream.average_rate else 0
        repair = TimestampRepair(tb, frame_ticks)

        base: int | None = None  # repaired pts (ticks) that maps to `origin`
        origin = timeline.end_ticks
        # After a reconnect: when the source went silent. The first segment then starts as much later as
        # the source was away, measured when that segment is whole.
        silent_since = timeline.last_arrival if timeline.silence_passes else None
        timeline.silence_passes = False
        # Monotonic seconds at which stream time 0 was sent, by the packets that arrived soonest: frames read
        # in a burst (FFmpeg probing the stream on connect, a playlist's backlog) arrived late, frames read as
        # they come tell the real pace. The arrival clock of every segment of the connection hangs off it, so
        # a live segment is held until a read waits for the network (the burst is over, the estimate good).
        sent_zero = math.inf
        held: list[MediaSegment] = []
        read_started = time.monotonic()
        # A read waiting half a frame period (at least LIVE_EDGE_WAIT_S) found nothing buffered.
        live_edge_wait = max(LIVE_EDGE_WAIT_S, frame_ticks / CLOCK_HZ / 2)
        wall_end = -math.inf  # epoch seconds where the last released segment ended on the arrival clock

        def emit(media: MediaSegment) -> Iterator[MediaSegment]:
            held.append(media)
            if not live:
                yield from release()

        def release() -> Iterator[MediaSegment]:
            nonlocal wall_end
            for media in held:
                if media.clock == "arrival":
                    # The estimate only improves (goes earlier) as packets come; a segment already out keeps
                    # its time, so the next never starts before it ended: wall clock stays monotonic.
                    sent = time.time() - (time.monotonic() - (sent_zero + media.media_start_s))
                    media = replace(media, wallclock_s=max(sent, wall_end))
                    wall_end = media.wallclock_s + media.duration_s
                yield media
            held.clear()

        def finish(seg: _SegmentWriter, end_ticks: int) -> MediaSegment:
            nonlocal origin, silent_since, sent_zero
            try:
                payload = seg.close()
            except av.FFmpegError as exc:
                raise SourceError(f"{name}: cannot write {codec} into {container_format}: {exc}") from exc
            if silent_since is not None:
                first_frame_at = sent_zero + seg.start_ticks / CLOCK_HZ
                away = max(0, round((first_frame_at - silent_since) * CLOCK_HZ) - frame_ticks)
                origin, seg.start_ticks, end_ticks = origin + away, seg.start_ticks + away, end_ticks + away
                sent_zero -= away / CLOCK_HZ
                silent_since = None
            gap = max(0, seg.start_ticks - timeline.end_ticks)
            timeline.end_ticks = end_ticks
            return MediaSegment(
                seq=0, media_start_s=seg.start_ticks / CLOCK_HZ, duration_s=(end_ticks - seg.start_ticks) / CLOCK_HZ,
                codec=codec, width=width, height=height, payload=payload, source=name, container=container_format,
                tracks=tracks.names, wallclock_s=seg.wallclock_s, clock=seg.clock, gap_before_s=gap / CLOCK_HZ,
                repairs=repair.take_repairs(), live=live)

        want_keyframe = True  # at the start, and after a timestamp reset: frames before a keyframe are dropped
        seg: _SegmentWriter | None = None
        # The other tracks keep the source's clock: the video's raw-to-repaired offset (ticks) maps them onto
        # the repaired timeline, so a reset or wrap moves them with the video.
        video_offset: int | None = None
        early: list[av.Packet] = []  # other tracks' packets read before the first segment opened
        others = [*([tracks.audio] if tracks.audio else []), *tracks.subtitles]
        try:
            for packet in _demux(container, [stream, *others], name):
                if packet.stream.index != stream.index:
                    if packet.pts is None:
                        continue
                    if seg is None or video_offset is None:
                        # Files interleave tracks in chunks: audio of the first second may precede the first keyframe.
                        early.append(packet)
                        continue
                    for other in [*early, packet]:
                        at = origin + round(other.pts * other.stream.time_base * CLOCK_HZ) + video_offset - base
                        if other is not packet and at < seg.start_ticks:
                            continue  # before the stream's first frame
                        length = round(other.duration * other.stream.time_base * CLOCK_HZ) if other.duration else 0
                        _mux_or_fail(name, container_format, lambda: seg.add_other(other, at, length))
                    early = []
                    continue
                arrival = timeline.last_arrival = time.monotonic()
                if held and arrival - read_started > live_edge_wait:
                    yield from release()
                stamp = repair.stamp(packet.pts, packet.dts, packet.duration, arrival)
                if stamp.discontinuity:
                    # Frames either side of a clock reset are not one timeline: close what we have.
                    if seg is not None:
                        yield from emit(finish(seg, seg.end_ticks))
                        seg = None
                    want_keyframe = True
                if want_keyframe:
                    if not packet.is_keyframe:
                        continue
                    want_keyframe = False
                if base is None:
                    base = stamp.pts
                if packet.pts is not None:
                    video_offset = stamp.pts - round(packet.pts * tb * CLOCK_HZ)
                pts, dts = origin + stamp.pts - base, origin + stamp.dts - base
                if packet.is_keyframe and (seg is None or pts - seg.start_ticks >= target_ticks):
                    if seg is not None:
                        # Closed GOP: every frame of the segment is presented before this keyframe.
                        yield from emit(finish(seg, pts))
                        pts, dts = origin + stamp.pts - base, origin + stamp.dts - base  # finish may move origin
                    seg = _SegmentWriter(stream, pts, container_format, tracks)
                    if live:
                        seg.wallclock_s = _sender_wallclock(container, packet, tb)
                        seg.clock = "rtcp" if seg.wallclock_s is not None else "arrival"
                sent_zero = min(sent_zero, arrival - pts / CLOCK_HZ)
                try:
                    seg.add(packet, pts, dts, stamp.duration)
                except av.FFmpegError as exc:
                    # The muxer's Annex-B filter parses every H.264/HEVC packet: a truncated or
                    # corrupt one fails here, as does a codec the container has no mapping for.
                    raise SourceError(f"{name}: {codec} packet at {pts / CLOCK_HZ:.3f} s cannot go into "
                                      f"{container_format} (truncated or corrupt source, or a codec "
                                      f"{container_format} cannot carry): {exc}") from exc
                read_started = time.monotonic()
        except SourceError as exc:
            if seg is not None and exc.retryable:  # what arrived before the connection dropped is whole
                held.append(finish(seg, seg.end_ticks))
            yield from release()
            raise
        if seg is not None:
            held.append(finish(seg, seg.end_ticks))
        yield from release()
    finally:
        container.close()


def _sender_wallclock(container: av.container.InputContainer, packet: av.Packet, tb: Fraction) -> float | None:
    """Epoch seconds of a live packet by the sender's own clock, where FFmpeg knows it: RTSP maps the RTCP
    sender reports onto the stream's time as ``start_time_realtime`` (from the first report on; None before)."""
    realtime = container.start_time_realtime
    if realtime and realtime > 0 and packet.pts is not None:
        return realtime / 1e6 + float(packet.pts * tb) - (container.start_time or 0) / 1e6
    return None


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
            raise SourceError(f"{name}: read error: {exc}", retryable=True) from exc
        if packet.size:  # demux ends with an empty flush packet
            yield packet
