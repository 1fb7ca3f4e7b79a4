"""Cutting a clip: the GOPs of a span of segments' video, and their audio, remuxed into one MP4 (no decode).

A separate module from the clip ledger and cutter (pipelines/clips.py), which find the segments and read them;
this one only turns their bytes into a playable file.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import av
from av.bitstream import BitStreamFilterContext

from pipelines.segmenter import SEGMENT_TS_OFFSET_S

log = logging.getLogger(__name__)

# Fragmented MP4: the moov box comes first (empty), each keyframe starts a fragment. Browsers play it as it
# arrives and the muxer never seeks back, so it is written to memory in one pass.
MP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


class ClipError(Exception):
    """A clip that cannot be served as asked. ``code`` is stable (HTTP error bodies)."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


class Piece(Protocol):
    """What the cutter needs to know of a segment (pipelines.clips.SegmentLocation is one)."""

    container: str
    media_start_s: float

    @property
    def media_end_s(self) -> float: ...

    @property
    def segment_id(self) -> str: ...


@dataclass
class _Gop:
    start_s: float  # stream seconds of its keyframe
    packets: list[tuple[av.Packet, float]] = field(default_factory=list)  # (packet, stream seconds of pts 0)


def remux(pieces: Sequence[tuple[Piece, bytes]], t_from: float, t_to: float) -> tuple[bytes, float, float]:
    """The GOPs of the segments' video that overlap [t_from, t_to), and their audio over the same span, remuxed
    into one fragmented MP4 whose time 0 is the first kept keyframe. Returns (mp4 bytes, stream seconds of its
    start, of its end)."""
    inputs, gops, sound, template, audio_template = [], [], [], None, None
    try:
        for location, payload in pieces:
            container = av.open(io.BytesIO(payload), format=location.container)
            inputs.append(container)
            if not container.streams.video:
                raise ClipError("unreadable_segment", f"segment {location.segment_id} has no video track", 500)
            video = container.streams.video[0]
            audio = container.streams.audio[0] if container.streams.audio else None
            template = template or video
            audio_template = audio_template or audio
            # Payload times are segment-relative, the first frame at SEGMENT_TS_OFFSET_S (pipelines/segmenter.py).
            origin = location.media_start_s - SEGMENT_TS_OFFSET_S
            for packet in container.demux(*(s for s in (video, audio) if s is not None)):
                if not packet.size or packet.pts is None:
                    continue
                at = origin + float(packet.pts * packet.time_base)
                if packet.stream.type == "audio":
                    sound.append((packet, origin, at))
                    continue
                if packet.is_keyframe or not gops:
                    gops.append(_Gop(at))
                gops[-1].packets.append((packet, origin))
        end_of_video = pieces[-1][0].media_end_s
        ends = [g.start_s for g in gops[1:]] + [end_of_video]
        kept = [(g, end) for g, end in zip(gops, ends) if g.start_s < t_to and end > t_from]
        if not kept:
            raise ClipError("no_video", f"no frame of the stream falls in {t_from:.1f}-{t_to:.1f} s", 404)
        start, end = kept[0][0].start_s, kept[-1][1]
        out_buffer = io.BytesIO()
        with av.open(out_buffer, "w", format="mp4", options=MP4_OPTIONS) as output:
            stream = output.add_stream_from_template(template)
            heard = to_mp4 = None
            if audio_template is not None and audio_template.codec_context.name == "aac":
                heard = output.add_stream_from_template(audio_template)
                # MPEG-TS carries AAC as ADTS frames; MP4 wants the raw frames and the codec's config in its header.
                to_mp4 = BitStreamFilterContext("aac_adtstoasc", audio_template, heard)
                heard.codec_tag = "mp4a"  # MPEG-TS's stream type (0x0f) means nothing to MP4
            elif audio_template is not None:
                log.warning("clip of %s: its %s audio is not put in MP4 clips yet (AAC is); the clip is video only",
                            pieces[0][0].segment_id, audio_template.codec_context.name)
            packets = [(p, origin, stream) for gop, _ in kept for p, origin in gop.packets]
            # A segment may carry audio from just before its first keyframe, which the one before it ended with:
            # each moment of sound once, in order.
            last_at = float("-inf")
            for packet, origin, at in sound if heard is not None else ():
                if start <= at < end and at > last_at:
                    packets.append((packet, origin, heard))
                    last_at = at
            # Interleaved by decode time, each track's own order kept (a stable sort): the muxer writes as it goes.
            packets.sort(key=lambda item: item[1] + float((item[0].dts if item[0].dts is not None else item[0].pts)
                                                          * item[0].time_base))
            for packet, origin, into in packets:
                shift = round((origin - start) / packet.time_base)
                packet.pts += shift
                packet.dts = packet.pts if packet.dts is None else packet.dts + shift
                for filtered in (to_mp4.filter(packet) if into is heard else [packet]):
                    filtered.stream = into
                    output.mux(filtered)
        return out_buffer.getvalue(), start, end
    finally:
        for container in inputs:
            container.close()
