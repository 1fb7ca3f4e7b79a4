"""The audio and subtitle tracks of a decoded segment: speech for recognition, subtitle cues as transcript lines.

Segments carry them beside the video (pipelines/segment_tracks.py). Their timestamps share the video's clock
inside the payload, so a packet's stream time is ``media_start_s`` plus its time minus the segment's first
video frame's time (``anchor_s``), exactly as the decoder places frames.

Subtitle cues of any text codec FFmpeg decodes (SubRip, ASS/SSA, WebVTT, mov_text) come out of its decoders as
ASS dialogue; the override tags (``{\\an7}``, ``{\\i1}``) are dropped and ``\\N`` line breaks become spaces,
since a transcript line is searched as words. Sidecar files (.srt / .vtt beside a recording) are read the same
way, through FFmpeg's demuxers (`sidecar_lines`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np
from av.audio.resampler import AudioResampler

from operators.frames import AudioClip
from operators.transcript import TranscriptLine

_ASS_TAG = re.compile(r"\{[^}]*\}")
# Subtitle tracks tag their language in ISO 639-2 (what Matroska and MP4 store); lines use the two-letter code.
_ISO639_2 = {"eng": "en", "fre": "fr", "fra": "fr", "ger": "de", "deu": "de", "spa": "es", "ita": "it",
             "por": "pt", "dut": "nl", "nld": "nl", "jpn": "ja", "chi": "zh", "zho": "zh", "kor": "ko", "rus": "ru",
             "ara": "ar", "hin": "hi"}
# A cue without a duration (some live WebVTT) is shown until the next one; the last one lasts this long.
_DEFAULT_CUE_S = 2.0


def language_of(stream: av.stream.Stream, default: str = "und") -> str:
    tag = (stream.metadata.get("language") or "").lower()
    return _ISO639_2.get(tag, tag) if tag and tag != "und" else default


def ass_words(dialogue: str) -> str:
    """The words of an ASS dialogue text: override tags removed, line breaks made spaces, whitespace collapsed."""
    return " ".join(_ASS_TAG.sub("", dialogue).replace("\\N", " ").replace("\\n", " ").split())


def subtitle_lines(stream: av.SubtitleStream, packets: Iterable[av.Packet], to_stream_s,
                   channel: str) -> list[TranscriptLine]:
    """Transcript lines (source "subtitle") of one subtitle track's packets; ``to_stream_s(seconds in the
    payload) -> stream seconds``."""
    decoder = av.CodecContext.create(stream.codec_context.name, "r")
    if stream.codec_context.extradata:
        decoder.extradata = stream.codec_context.extradata  # ASS keeps its style header there
    decoder.open()
    language = language_of(stream)
    cues: list[tuple[float, float | None, str]] = []
    for packet in packets:
        if packet.pts is None or not packet.size:
            continue
        start = float(packet.pts * stream.time_base)
        end = start + float(packet.duration * stream.time_base) if packet.duration else None
        subtitle = decoder.decode2(packet)
        if subtitle is None:
            continue
        words = " ".join(ass_words(rect.dialogue.decode("utf-8", errors="replace"))
                         for rect in subtitle.rects if getattr(rect, "type", b"") == b"ass")
        if words.strip():
            if end is None and subtitle.end_display_time:
                end = start + subtitle.end_display_time / 1000
            cues.append((start, end, words.strip()))
    return [TranscriptLine(to_stream_s(start), to_stream_s(_cue_end(cues, i)), words, "subtitle", language, 1.0,
                           channel) for i, (start, _, words) in enumerate(cues)]


def _cue_end(cues: list[tuple[float, float | None, str]], i: int) -> float:
    start, end, _ = cues[i]
    if end is not None and end >= start:
        return end
    return cues[i + 1][0] if i + 1 < len(cues) else start + _DEFAULT_CUE_S


def sidecar_lines(path: str | Path, offset_s: float = 0.0) -> list[TranscriptLine]:
    """The cues of a sidecar subtitle file (.srt, .vtt, .ass) as transcript lines, ``offset_s`` added to their
    times (where the recording starts on the stream's clock). ValueError when FFmpeg cannot read it."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise ValueError(f"{path}: not a subtitle file FFmpeg reads: {exc}") from exc
    with container:
        if not container.streams.subtitles:
            raise ValueError(f"{path}: holds no subtitle track")
        stream = container.streams.subtitles[0]
        lines = subtitle_lines(stream, container.demux(stream), lambda s: max(0.0, s + offset_s), Path(path).name)
    # A sidecar names its language in the file name at best (talk.en.vtt); its metadata rarely says.
    suffixes = Path(path).suffixes
    if len(suffixes) >= 2 and 2 <= len(suffixes[-2]) - 1 <= 3:
        tag = suffixes[-2][1:].lower()
        lines = [TranscriptLine(li.start_s, li.end_s, li.text, li.source, _ISO639_2.get(tag, tag), li.confidence,
                                li.channel) for li in lines]
    return lines


def audio_clip(stream: av.AudioStream, packets: Iterable[av.Packet], to_stream_s) -> AudioClip | None:
    """The track decoded and resampled to float32 mono 16 kHz; None when it decodes to nothing."""
    resampler = AudioResampler(format="flt", layout="mono", rate=AudioClip.SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    first: float | None = None
    decoder = stream.codec_context
    for packet in [*(p for p in packets if p.size), None]:  # demux ends each track with an empty packet
        for frame in decoder.decode(packet):
            if first is None and frame.pts is not None:
                first = float(frame.pts * stream.time_base)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    for out in resampler.resample(None):
        chunks.append(out.to_ndarray().reshape(-1))
    if first is None or not chunks:
        return None
    return AudioClip(max(0.0, to_stream_s(first)), np.concatenate(chunks).astype(np.float32, copy=False),
                     channel=f"audio:{language_of(stream, 'und')}")
