"""Which tracks of a source travel in its segments beside the video, and how they are muxed.

livelens remembers what was said as well as what was shown (issue 19), so a segment carries, beside the
first video track:

- the source's audio track (the default one, else the first, of those FFmpeg found the parameters of),
  packets copied as they are: speech recognition decodes it downstream (`operators.decode.SegmentDecoder.audio`).
  A track the container lists but that sent nothing while FFmpeg probed has no sample rate or channel count
  (nginx-rtmp's HLS lists an AAC track in every fragment's PMT, also for a stream that has no audio): no
  muxer can write its header (the MPEG-TS muxer refuses the segment with EINVAL at its first packet), and
  there is nothing to hear, so it stays behind;
- its text subtitle tracks (SubRip, ASS/SSA, WebVTT, MP4's mov_text), packets copied as they are, except
  mov_text, which Matroska has no codec id for: its samples are a 16-bit length, UTF-8 text and optional
  style boxes (3GPP TS 26.245), and the text alone goes in as SubRip. Bitmap subtitles (DVB, PGS) need
  OCR and stay behind.

Closed captions (CEA-608/708) need no track: they ride inside the video packets (A53 side data) and travel
with them.

MPEG-TS carries the common broadcast audio codecs but no text subtitles, so a segment with subtitles, or
with audio TS has no stream type for, travels in Matroska (which holds every codec here), still without
re-encoding. ``carry_audio`` / ``carry_subtitles`` off give the video-only segments of earlier versions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import av

# Audio codecs FFmpeg's MPEG-TS muxer has a stream type for (and its demuxer reads back).
TS_AUDIO_CODECS = frozenset({"aac", "mp3", "mp2", "ac3", "eac3", "opus"})
# Subtitle codecs that are text, so their words can be read without OCR.
TEXT_SUBTITLE_CODECS = frozenset({"subrip", "srt", "ass", "ssa", "webvtt", "mov_text", "text"})


@dataclass(frozen=True)
class CarriedTracks:
    """The tracks a source's segments carry beside its first video track."""

    audio: av.AudioStream | None = None
    subtitles: tuple[av.SubtitleStream, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The kinds of track a segment holds, as the segment contract lists them (``VideoSegment.tracks``)."""
        return ("video",) + (("audio",) if self.audio is not None else ()) + (("subtitle",) if self.subtitles else ())

    def container(self, ts_for_video: bool) -> str:
        """The FFmpeg format of the segments: MPEG-TS when it can hold the video and every carried track."""
        audio_ok = self.audio is None or self.audio.codec_context.name in TS_AUDIO_CODECS
        return "mpegts" if ts_for_video and audio_ok and not self.subtitles else "matroska"

    def carries(self, stream: av.stream.Stream) -> bool:
        return stream is self.audio or any(stream is s for s in self.subtitles)


def select_tracks(container: av.container.InputContainer, *, audio: bool = True,
                  subtitles: bool = True) -> CarriedTracks:
    """The audio track (the one marked default, else the first, of those with known parameters) and the text
    subtitle tracks of a source."""
    chosen_audio = None
    tracks = [s for s in container.streams.audio if _audible(s)] if audio else []
    if tracks:
        chosen_audio = next((s for s in tracks if s.disposition & av.stream.Disposition.default), tracks[0])
    chosen_subtitles: tuple = ()
    if subtitles:
        chosen_subtitles = tuple(s for s in container.streams.subtitles
                                 if s.codec_context is not None and s.codec_context.name in TEXT_SUBTITLE_CODECS)
    return CarriedTracks(chosen_audio, chosen_subtitles)


def _audible(stream: av.AudioStream) -> bool:
    """A codec FFmpeg knows (else nothing downstream could decode it) with the parameters its packets gave."""
    ctx = stream.codec_context
    return ctx is not None and bool(ctx.name) and ctx.sample_rate > 0 and ctx.channels > 0


class TrackMuxer:
    """The carried tracks' outputs in one segment's container; `map` gives each input track its output."""

    def __init__(self, output: av.container.OutputContainer, tracks: CarriedTracks):
        self._outputs: dict[int, av.stream.Stream] = {}
        self._mov_text: set[int] = set()
        if tracks.audio is not None:
            self._outputs[tracks.audio.index] = output.add_stream_from_template(tracks.audio, opaque=True)
        for sub in tracks.subtitles:
            if sub.codec_context.name == "mov_text" and output.format.name != "mp4":
                out = output.add_stream_from_template(_subrip_template(), opaque=True)
                self._mov_text.add(sub.index)
            else:
                out = output.add_stream_from_template(sub, opaque=True)
            # Keep the language tag: a transcript line says which language its words are in.
            if "language" in sub.metadata:
                out.metadata["language"] = sub.metadata["language"]
            self._outputs[sub.index] = out
        if tracks.audio is not None and "language" in tracks.audio.metadata:
            self._outputs[tracks.audio.index].metadata["language"] = tracks.audio.metadata["language"]

    def map(self, packet: av.Packet) -> av.Packet | None:
        """``packet`` pointed at its output track (a mov_text sample rewritten as SubRip); None for an empty cue."""
        index = packet.stream.index
        if index in self._mov_text:
            text = mov_text_words(bytes(packet))
            if not text:
                return None  # a mov_text "clear" sample: in SubRip the previous cue's end says the same
            rewritten = av.Packet(text.encode())
            rewritten.pts, rewritten.dts, rewritten.duration = packet.pts, packet.dts, packet.duration
            packet = rewritten
        packet.stream = self._outputs[index]
        return packet


def mov_text_words(sample: bytes) -> str:
    """The text of one mov_text (3GPP timed text) sample: a big-endian 16-bit length, then that much UTF-8."""
    if len(sample) < 2:
        return ""
    (length,) = struct.unpack(">H", sample[:2])
    return sample[2 : 2 + length].decode("utf-8", errors="replace").strip()


_SUBRIP: av.SubtitleStream | None = None


def _subrip_template() -> av.SubtitleStream:
    """A SubRip stream to copy codec parameters from (PyAV adds output streams from templates without an encoder)."""
    global _SUBRIP
    if _SUBRIP is None:
        import io

        source = io.BytesIO(b"1\n00:00:00,000 --> 00:00:01,000\nx\n\n")
        _SUBRIP = av.open(source, format="srt").streams.subtitles[0]
    return _SUBRIP
