"""Closed captions read from coded packets (operators/cc_data.py) are what FFmpeg's decoders attach to the frames,
and a decoder that skips frames (keyframes only, unsampled frames) still reads every frame's captions.

The captioned streams are mux.js's real broadcast segments (tests/transcripts/media.py) and re-encodings of
them: libx264 with B-frames in MP4 (length-prefixed NAL units, frames out of presentation order), libx265 in
MPEG-TS and MP4, and MPEG-2 (whose captions are read from decoded frames). The encoders write each frame's A53
side data back as captions, the way a broadcast encoder does.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import pytest

from operators.cc_data import CcDataReader
from operators.config import DecodeConfig
from operators.decode import SegmentDecoder
from operators.frames import CaptionData, SegmentInfo
from pipelines.segmenter import iter_segments
from tests.transcripts.media import POP_ON, ROLL_UP

A53 = av.sidedata.sidedata.Type.A53_CC
# name: (encoder, container, options); None: mux.js's own segment
ENCODINGS = {
    "h264-ts": None,
    "h264-mp4-bframes": ("libx264", "mp4", {"bf": "3", "g": "60", "preset": "ultrafast", "a53cc": "1"}),
    "hevc-ts-bframes": ("libx265", "mpegts", {"g": "60", "preset": "ultrafast", "a53cc": "1",
                                              "x265-params": "bframes=3:log-level=error"}),
    "hevc-mp4": ("libx265", "mp4", {"g": "60", "preset": "ultrafast", "a53cc": "1",
                                    "x265-params": "bframes=0:log-level=error"}),
    "mpeg2-ts": ("mpeg2video", "mpegts", {"g": "60", "bf": "2", "a53cc": "1"}),
}


@pytest.fixture(scope="module")
def encoded(muxjs: Path, tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("cc-data")
    out = {}
    for name, how in ENCODINGS.items():
        out[name] = muxjs / ROLL_UP if how is None else reencode(muxjs / ROLL_UP, work / f"{name}.{how[1]}", *how)
    return out


def reencode(source: Path, target: Path, encoder: str, container: str, options: dict[str, str]) -> Path:
    """The source's pictures re-encoded, each frame's caption data handed to the encoder with it."""
    with av.open(str(source)) as src, av.open(str(target), "w", format=container) as dst:
        video = src.streams.video[0]
        rate = Fraction(30000, 1001)
        out = dst.add_stream(encoder, rate=rate, options=options)
        out.width, out.height, out.pix_fmt = video.codec_context.width, video.codec_context.height, "yuv420p"
        for i, frame in enumerate(src.decode(video)):
            frame.pts, frame.time_base, frame.pict_type = i, 1 / rate, av.video.frame.PictureType.NONE
            dst.mux(out.encode(frame))
        dst.mux(out.encode(None))
    return target


def by_packet_and_by_frame(path: Path) -> tuple[dict[int, bytes], dict[int, bytes]]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        reader = CcDataReader.for_stream(video.codec_context.codec.name, video.codec_context.extradata)
        packets, frames = {}, {}
        for packet in container.demux(video):
            if packet.size and packet.pts is not None and reader is not None:
                packets[packet.pts] = reader.read(bytes(packet))
            for frame in packet.decode():
                cc = frame.side_data.get(A53)
                frames[frame.pts] = bytes(cc) if cc is not None else b""
    return {pts: data for pts, data in packets.items() if data}, {pts: data for pts, data in frames.items() if data}


@pytest.mark.parametrize("name", [n for n in ENCODINGS if not n.startswith("mpeg2")])
def test_packets_carry_the_captions_the_decoder_attaches_to_each_frame(encoded: dict[str, Path], name: str):
    packets, frames = by_packet_and_by_frame(encoded[name])
    assert len(frames) > 100  # the roll-up sample captions nearly every frame
    assert packets == frames


def test_pop_on_captions_are_read_from_packets_too(muxjs: Path):
    packets, frames = by_packet_and_by_frame(muxjs / POP_ON)
    assert len(frames) > 100 and packets == frames


def test_a_codec_whose_packets_are_not_read_has_no_packet_reader():
    assert CcDataReader.for_stream("mpeg2video", None) is None
    assert CcDataReader.for_stream("vp9", None) is None
    with pytest.raises(ValueError, match="too short"):
        CcDataReader.for_stream("h264", b"\x01\x64")


def segment_captions(path: Path, config: DecodeConfig) -> list[list[CaptionData]]:
    decoder = SegmentDecoder(config)
    return [decoder.decode(SegmentInfo("t", "s", m.seq, 1e9 + m.media_start_s, m.media_start_s, m.duration_s,
                                       m.codec, m.container), m.payload).captions
            for m in iter_segments(str(path), target_s=2.0)]


@pytest.mark.parametrize("name", ["h264-ts", "hevc-ts-bframes"])
@pytest.mark.parametrize("skipping", [dict(keyframes_only=True), dict(skip_unsampled=True)],
                         ids=["keyframes-only", "skip-unsampled"])
def test_a_decoder_that_skips_frames_reads_every_frames_captions(encoded: dict[str, Path], name: str,
                                                                 skipping: dict):
    every = segment_captions(encoded[name], DecodeConfig())
    assert sum(map(len, every)) > 100
    assert segment_captions(encoded[name], DecodeConfig(**skipping)) == every


def test_other_codecs_read_captions_from_decoded_frames_and_say_what_skipping_loses(encoded: dict[str, Path],
                                                                                    caplog):
    every = segment_captions(encoded["mpeg2-ts"], DecodeConfig())
    assert sum(map(len, every)) > 50  # from the frames' A53 side data, as before packets were read
    with caplog.at_level(logging.WARNING, logger="operators.decode"):
        keyframes = segment_captions(encoded["mpeg2-ts"], DecodeConfig(keyframes_only=True))
    assert sum(map(len, keyframes)) < sum(map(len, every)) / 10
    warnings = [r.getMessage() for r in caplog.records if "closed captions of mpeg2video" in r.getMessage()]
    assert len(warnings) == 1  # once per decoder and codec, not per segment
