"""Decode one container segment into sampled RGB frames and JPEG thumbnails, and what travelled with them.

Beside the frames a batch carries what speaks: every frame's closed-caption bytes (A53 cc_data, read by
operators/captions.py; for H.264 and HEVC straight from the packets, operators/cc_data.py, so frames the
decoder skips keep their captions; for other codecs from the frames decoded), the cues of the segment's
subtitle tracks as transcript lines, and with ``decode.audio`` its audio track as float32 mono 16 kHz for
speech recognition (operators/side_tracks.py). A video-only segment (every segment before tracks
travelled) gives none of them.

A segment is a short chunk (normally MPEG-TS) that starts at a keyframe. The
decoder is stateless: any actor can decode any segment, and replaying a segment
yields the same frames, which is what makes downstream writes idempotent.

Sampling keeps frames on a grid anchored at the stream's start: grid point k is
at k / sample_fps seconds, and the kept frame for a grid point is the first
candidate frame whose stream time is at or after it. A candidate claims the grid
points in (previous candidate, itself]. The previous candidate of a segment's
first frame lives in the previous segment, which this decoder never sees; it
sits one candidate period earlier (one frame in full decode, one GOP when
decoding keyframes only), and that period is measured inside the segment. For
constant-rate streams, the normal case for live encoders, consecutive segments
therefore claim disjoint grid points and together claim every one. Where the
period is misjudged it is underestimated (the smallest step seen; a lone
keyframe's GOP is its segment's span, short for a stream's last segment), so a
grid point can be missed but never sampled twice.

Bad input raises StageError with a stable code:
    bad_container      a container not in DecodeConfig.containers (playlist demuxers open nested URLs)
    decode_error       corrupt data, FFmpeg errors, a container FFmpeg cannot read
    decode_timeout     the segment took longer than DecodeConfig.deadline_s
    unknown_codec      no decoder for the declared codec, or no video track
    oversize_frame     width * height above DecodeConfig.max_pixels
    truncated_segment  the payload ends mid-packet or covers clearly less than its duration
    empty_segment      a video track without a single frame
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Iterator
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image

from operators.cc_data import CcDataReader
from operators.config import DecodeConfig
from operators.frames import CaptionData, FrameBatch, SegmentInfo, StageError
from operators.side_tracks import audio_clip, subtitle_lines

# A frame this many grid steps before a grid point counts as on it: stream times are
# sums of floats, and 6.0 must not come out as 5.999999999999999 and miss grid point 6.
_GRID_EPS = 1e-6
# Below this fraction of info.duration_s the payload is taken as cut short. Publishers
# round durations and the last frame's duration is estimated, so only a clear shortfall counts.
_MIN_COVERAGE = 0.5
# FFmpeg's MPEG-TS demuxer reads 188-byte packets, and 192 / 204 with timecode or FEC
# suffixes; a payload that is a whole number of none of them ended mid-packet.
_TS_PACKET_SIZES = (188, 192, 204)
# Thumbnails are previews; 80 keeps a 160 px frame around 5-8 KB.
_JPEG_QUALITY = 80
# Options of every open:
# - The payload is read from memory, never from a URL or a file: no demuxer may open anything else. FFmpeg
#   checks nested opens against this list, and no protocol has this name.
# - skip_frame=all reaches only the decoders FFmpeg opens to probe the streams (avformat_find_stream_info),
#   not the one that decodes: the probe then learns the video's size and rate from the headers without
#   decoding its first frames, which cost a 1080p keyframe segment a third of its decode time (~5 of 15 ms).
_OPEN_OPTIONS = {"protocol_whitelist": "none", "skip_frame": "all"}
# Closed captions (CEA-608/708 cc_data) that decoders attach to the frames they carry (MPEG-2, AV1, ...).
_A53_CC = av.sidedata.sidedata.Type.A53_CC

logger = logging.getLogger(__name__)


class SegmentDecoder:
    """Decodes segments with PyAV, keeping frames on the ``sample_fps`` grid.

    threads: FFmpeg decoder threads per segment. 1 suits many decoder actors
        sharing a machine (each is one core); 0 lets FFmpeg pick (all cores),
        which suits one decoder per machine.

    With ``config.hardware == "nvdec"``, full decodes run on the GPU's NVDEC engines (PyAV's own
    ``h264_cuvid`` / ``hevc_cuvid`` codecs, not ``hwaccel=``, which hung in worker processes); frames
    come back to host memory and are sampled, resized and thumbnailed as on the CPU path.
    """

    def __init__(self, config: DecodeConfig, frame_px: int = 448, threads: int = 1):
        if frame_px < 1 or threads < 0:
            raise ValueError(f"frame_px must be >= 1 and threads >= 0, got {frame_px}, {threads}")
        self.config = config
        self.frame_px = frame_px
        self.threads = threads
        # NVDEC decoders by codec, opened once and flushed between segments (opening one costs GPU setup);
        # None where cuvid could not open, so the CPU fallback is decided (and logged) once per codec.
        self._cuvid: dict[str, av.codec.context.CodecContext | None] = {}
        self.cpu_fallbacks = 0  # segments decoded on the CPU although nvdec was asked for
        self._frame_caption_codecs: set[str] = set()  # codecs already warned of: captions of skipped frames unread
        self.frames_decoded = 0  # frames the decoders gave back, sampled or not: what decoding cost

    def decode(self, info: SegmentInfo, payload: bytes) -> FrameBatch:
        """Sampled frames of one segment; an empty batch only when no grid point falls inside it."""
        if not payload:
            raise StageError("empty_segment", "the payload is empty")
        if info.container not in self.config.containers:
            raise StageError("bad_container", f"container {info.container!r} is not allowed (decode.containers: "
                             f"{', '.join(self.config.containers)})")
        _check_decoder_exists(info.codec)
        deadline = time.monotonic() + self.config.deadline_s
        try:
            container = av.open(io.BytesIO(payload), format=info.container, options=_OPEN_OPTIONS)
        except av.FFmpegError as exc:
            raise StageError("decode_error", f"FFmpeg cannot read the payload as {info.container}: {exc}") from exc
        except ValueError as exc:  # PyAV's answer to a format name FFmpeg does not know
            raise StageError("decode_error", f"no demuxer for container {info.container!r}: {exc}") from exc
        with container:
            try:
                return self._decode(info, container, len(payload), deadline)
            except av.FFmpegError as exc:
                raise StageError("decode_error", f"FFmpeg failed while decoding: {exc}") from exc

    def _decode(self, info: SegmentInfo, container: av.container.InputContainer, payload_size: int,
                deadline: float) -> FrameBatch:
        if not container.streams:
            raise StageError("decode_error", f"no streams found: not a {info.container} payload")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            raise StageError("unknown_codec", f"no video track (tracks: {', '.join(kinds)})")
        # Checked once FFmpeg has recognised the payload as TS: garbage is a decode error, not a cut.
        if info.container == "mpegts" and not any(payload_size % n == 0 for n in _TS_PACKET_SIZES):
            raise StageError("truncated_segment", f"{payload_size} bytes is not a whole number of TS packets")
        stream = container.streams.video[0]
        context = stream.codec_context
        if context is None:
            raise StageError("unknown_codec", f"FFmpeg has no decoder for the video track ({stream.codec_tag!r})")
        if av.codec.Codec(info.codec, "r").canonical_name != context.codec.canonical_name:
            raise StageError("decode_error", f"segment declares {info.codec} but its video track is {context.name}")
        self._check_size(context.width, context.height)
        # Both must be set before the first packet opens the decoder.
        context.thread_count = self.threads
        if self.threads != 1:
            context.thread_type = "AUTO"  # frame and slice threads
        if self.config.keyframes_only:
            context.skip_frame = "NONKEY"
        decoder = context
        if self.config.hardware == "nvdec" and not self.config.keyframes_only:
            decoder = self._nvdec(context) or context

        # Demux everything first: the payload is already in memory, and the packet timestamps
        # give coverage and candidate period before a single frame is decoded. The other tracks' packets
        # (audio, subtitles: pipelines/segment_tracks.py) are set aside for after the frames.
        packets = []
        others: dict[int, list[av.Packet]] = {}
        for packet in container.demux():
            self._check_deadline(deadline)
            if packet.stream.index != stream.index:
                others.setdefault(packet.stream.index, []).append(packet)
            elif packet.size and packet.pts is not None:
                packets.append(packet)
        if not packets:
            raise StageError("empty_segment", "the video track holds no frames")
        tb = stream.time_base
        all_pts = sorted(p.pts for p in packets)
        frame_ticks = _min_step(all_pts)
        if not frame_ticks and stream.guessed_rate:  # a one-frame segment: trust the stream's rate
            frame_ticks = round(1 / (stream.guessed_rate * tb))
        end_pts = max(p.pts + (p.duration or frame_ticks) for p in packets)
        covered = float((end_pts - all_pts[0]) * tb)
        if covered < _MIN_COVERAGE * info.duration_s:
            raise StageError("truncated_segment",
                             f"frames cover {covered:.3f} s of the declared {info.duration_s:.3f} s")

        video_packets = packets
        needed: set[int] | None = None  # the pts of the frames that will be samples, where known
        if self.config.keyframes_only:
            key_pts = sorted(p.pts for p in packets if p.is_keyframe)
            if not key_pts:
                raise StageError("decode_error", "keyframes_only, but the segment has no keyframe")
            # One GOP per segment is the norm: then the GOP is the segment's own span.
            period_ticks = _min_step(key_pts) or end_pts - key_pts[0]
            # The decoder would discard the others unread (skip_frame=NONKEY); not handing them over saves
            # a call a frame.
            packets = [p for p in packets if p.is_keyframe]
        else:
            period_ticks = frame_ticks
            if self.config.skip_unsampled:
                grid = _Grid(info.media_start_s, period_ticks * tb, info.sample_fps or self.config.sample_fps)
                needed = {pts for pts in all_pts if grid.claims(float((pts - all_pts[0]) * tb))}
        try:
            cc_reader = CcDataReader.for_stream(context.codec.name, context.extradata)
        except ValueError as exc:  # extradata that names no NAL length size
            raise StageError("decode_error", f"cannot read the stream's closed captions: {exc}") from exc
        if cc_reader is None and (self.config.keyframes_only or needed is not None):
            self._warn_frame_captions(context.codec.name)
        try:
            batch = self._sample(info, stream, decoder, packets, period_ticks * tb, deadline, needed,
                                 frame_captions=cc_reader is None)
        finally:
            if decoder is not context:
                decoder.flush_buffers()  # the NVDEC decoder serves the next segment
        if cc_reader is not None:
            batch.captions = self._packet_captions(cc_reader, video_packets, info.media_start_s, all_pts[0], tb)
        self._side_tracks(batch, container, others, float(all_pts[0] * tb))
        return batch

    def _packet_captions(self, reader: CcDataReader, packets: list[av.Packet], start_s: float, first_pts: int,
                         tb: Fraction) -> list[CaptionData]:
        """Every packet's cc_data, in presentation order, on the clock the frames are put on."""
        found = [(p.pts, reader.read(bytes(p))) for p in packets]
        return [CaptionData(start_s + float((pts - first_pts) * tb), data) for pts, data in sorted(found) if data]

    def _warn_frame_captions(self, codec: str) -> None:
        if codec not in self._frame_caption_codecs:
            self._frame_caption_codecs.add(codec)
            logger.warning("decode: closed captions of %s are read from decoded frames only (operators/cc_data.py "
                           "reads H.264 and HEVC packets): with keyframes_only or skip_unsampled, the captions of "
                           "frames not decoded are not read", codec)

    def _side_tracks(self, batch: FrameBatch, container: av.container.InputContainer,
                     others: dict[int, list[av.Packet]], anchor_s: float) -> None:
        """The subtitle cues, and with ``audio`` on the sound, of the tracks beside the video."""
        info = batch.segment

        def to_stream_s(payload_s: float) -> float:  # the clock _sample puts frames on
            return max(0.0, info.media_start_s + payload_s - anchor_s)

        for track in container.streams.subtitles:
            batch.subtitles.extend(subtitle_lines(track, others.get(track.index, []), to_stream_s,
                                                  f"subtitle:{track.index}"))
        batch.subtitles.sort(key=lambda line: (line.start_s, line.channel))
        if self.config.audio and container.streams.audio:
            track = container.streams.audio[0]
            batch.audio = audio_clip(track, others.get(track.index, []), to_stream_s)

    def _nvdec(self, context: av.codec.context.CodecContext) -> av.codec.context.CodecContext | None:
        """The stream's NVDEC decoder (FFmpeg's <codec>_cuvid), or None, loudly, when it cannot be opened."""
        codec = context.codec.name
        if codec not in self._cuvid:
            try:
                hw = av.CodecContext.create(f"{codec}_cuvid", "r")
                if context.extradata:
                    hw.extradata = context.extradata
                hw.open()
                self._cuvid[codec] = hw
            except (av.FFmpegError, ValueError, OSError) as exc:
                logger.warning("decode: nvdec asked for, but %s_cuvid cannot open (%s); decoding %s on the CPU",
                               codec, exc, codec)
                self._cuvid[codec] = None
        if self._cuvid[codec] is None:
            self.cpu_fallbacks += 1
        return self._cuvid[codec]

    def _check_deadline(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise StageError("decode_timeout", f"decoding took longer than deadline_s={self.config.deadline_s:g}")

    def _sample(
        self, info: SegmentInfo, stream: av.VideoStream, decoder: av.codec.context.CodecContext,
        packets: list[av.Packet], period: Fraction, deadline: float, needed: set[int] | None, frame_captions: bool
    ) -> FrameBatch:
        """Decode in presentation order, keeping each frame that claims a grid point; ``period`` as above.

        ``needed``: the pts of the frames expected to claim grid points (predicted from the packets, so
        ``decode.skip_unsampled`` can skip the rest); None decodes every frame. ``frame_captions``: take the
        captions from the decoded frames' A53 side data (codecs whose packets are not read for them).
        """
        grid = _Grid(info.media_start_s, period, info.sample_fps or self.config.sample_fps)
        last_needed = max(needed, default=None) if needed is not None else None
        first_pts: int | None = None
        previous_time = -math.inf
        corrupt_at: float | None = None
        pts_s: list[float] = []
        captions: list[CaptionData] = []
        images: list[np.ndarray] = []
        thumbnails: list[bytes] = []
        size: tuple[int, int] | None = None
        # One scaler per output size, kept for the segment: FFmpeg reuses its scaling context
        # across frames, which halves the cost of a conversion against a fresh one per frame.
        to_rgb, to_thumbnail = VideoReformatter(), VideoReformatter()
        for frame in _frames(decoder, packets, needed):
            self.frames_decoded += 1
            self._check_deadline(deadline)
            if corrupt_at is not None:
                raise StageError("decode_error", f"corrupt frame at {corrupt_at:.3f} s")
            if frame.pts is None:
                raise StageError("decode_error", "a decoded frame has no timestamp")
            self._check_size(frame.width, frame.height)
            if first_pts is None:
                first_pts = frame.pts
            offset_s = float((frame.pts - first_pts) * stream.time_base)
            t = info.media_start_s + offset_s
            if t <= previous_time:
                raise StageError("decode_error", f"frame timestamps go backwards at {t:.3f} s")
            previous_time = t
            cc = frame.side_data.get(_A53_CC) if frame_captions else None
            if cc is not None:
                captions.append(CaptionData(t, bytes(cc)))
            if frame.is_corrupt:
                corrupt_at = t  # an error unless it turns out to be the last frame
                continue
            if not grid.claims(offset_s):
                continue
            out = _fit(frame.width, frame.height, self.frame_px)
            if size is not None and out != size:
                raise StageError("decode_error", f"resolution changes inside the segment ({size} -> {out})")
            size = out
            pts_s.append(t)
            images.append(to_rgb.reformat(frame, width=out[0], height=out[1], format="rgb24").to_ndarray())
            thumbnails.append(self._thumbnail(frame, images[-1], to_thumbnail))
            if last_needed is not None and frame.pts >= last_needed:
                break  # no later frame of the segment claims a grid point
        if first_pts is None:
            raise StageError("empty_segment", "no video frame could be decoded")
        if corrupt_at is not None:
            # Damage confined to the last frame is what a payload cut mid-frame looks like.
            raise StageError("truncated_segment", f"the last frame ({corrupt_at:.3f} s) is incomplete")
        if not images:
            width, height = _fit(stream.codec_context.width, stream.codec_context.height, self.frame_px)
            return FrameBatch(info, np.zeros(0), np.zeros((0, height, width, 3), np.uint8), [], captions)
        return FrameBatch(info, np.array(pts_s), np.stack(images), thumbnails, captions)

    def _check_size(self, width: int, height: int) -> None:
        if width * height > self.config.max_pixels:
            raise StageError("oversize_frame", f"{width}x{height} is above max_pixels={self.config.max_pixels}")

    def _thumbnail(self, frame: av.VideoFrame, resized: np.ndarray, scaler: VideoReformatter) -> bytes:
        width, height = _fit(frame.width, frame.height, self.config.thumbnail_px)
        if width <= resized.shape[1]:
            # From the resized frame: Pillow's filter widens with the scale, so the preview is as sharp as one
            # scaled from the decoded frame, and a 1080p frame is not read a second time (~1 ms of a core).
            image = Image.fromarray(resized).resize((width, height), Image.BILINEAR)
        else:  # a preview larger than the frames
            image = scaler.reformat(frame, width=width, height=height, format="rgb24").to_image()
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=_JPEG_QUALITY)
        return out.getvalue()


def _check_decoder_exists(codec: str) -> None:
    try:
        found = av.codec.Codec(codec, "r")
    except ValueError as exc:  # UnknownCodecError
        raise StageError("unknown_codec", f"FFmpeg has no decoder named {codec!r}") from exc
    if found.type != "video":
        raise StageError("unknown_codec", f"{codec} decodes {found.type}, not video")


def _frames(decoder: av.codec.context.CodecContext, packets: list[av.Packet],
            needed: set[int] | None) -> Iterator[av.VideoFrame]:
    """Decoded frames in presentation order, the decoder drained at the end.

    With ``needed``, a packet whose frame is not needed is decoded only if later frames refer to it: FFmpeg
    reads skip_frame as each packet is decoded (frame threads copy it from this context at each packet).
    cuvid decoders ignore it and decode everything.
    """
    for packet in packets:
        if needed is not None:
            decoder.skip_frame = "DEFAULT" if packet.pts in needed else "NONREF"
        yield from decoder.decode(packet)
    yield from decoder.decode(None)


class _Grid:
    """The sampling grid of one segment: which frames claim a grid point (the module docstring's rule).

    start_s: the segment's first frame on the stream clock; period: the candidate period, which places
    the previous segment's last candidate one period before the first frame.
    """

    def __init__(self, start_s: float, period: Fraction, fps: float):
        self.start_s, self.fps = start_s, fps
        self.previous_index = _grid_index(start_s - float(period), fps)

    def claims(self, offset_s: float) -> bool:
        """Whether the candidate ``offset_s`` after the first frame claims a grid point (call in time order)."""
        index = _grid_index(self.start_s + offset_s, self.fps)
        if index <= self.previous_index:
            return False
        self.previous_index = index
        return True


def _grid_index(t: float, fps: float) -> int:
    """Index of the last grid point at or before stream time t."""
    return math.floor(t * fps + _GRID_EPS)


def _min_step(sorted_pts: list[int]) -> int:
    """Smallest positive gap between timestamps (0 with fewer than two)."""
    steps = [b - a for a, b in zip(sorted_pts, sorted_pts[1:]) if b > a]
    return min(steps, default=0)


def _fit(width: int, height: int, longest: int) -> tuple[int, int]:
    """(width, height) scaled so the longest side is ``longest``, aspect kept."""
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))
