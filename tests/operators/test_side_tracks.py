"""The tracks beside the video: segments carry them, the decoder reads subtitle cues and 16 kHz audio."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from operators.config import DecodeConfig
from operators.decode import SegmentDecoder
from operators.frames import AudioClip, FrameBatch, SegmentInfo
from operators.side_tracks import ass_words, sidecar_lines
from pipelines.segmenter import iter_segments
from tests.transcripts.media import CUES, srt, vtt, write_subtitled_video


def decode_all(path: Path, **decode) -> tuple[list, list[FrameBatch]]:
    decoder = SegmentDecoder(DecodeConfig(**decode))
    segments = list(iter_segments(str(path)))
    return segments, [decoder.decode(SegmentInfo("t", "s", m.seq, 1e9 + m.media_start_s, m.media_start_s,
                                                 m.duration_s, m.codec, m.container), m.payload)
                      for m in segments]


@pytest.mark.parametrize("fmt, codec", [("mp4", "mov_text"), ("matroska", "subrip"), ("matroska", "webvtt"),
                                        ("matroska", "ass")])
def test_subtitle_cues_travel_in_segments_and_become_lines(tmp_path: Path, fmt: str, codec: str) -> None:
    source = write_subtitled_video(tmp_path / f"talk.{'mp4' if fmt == 'mp4' else 'mkv'}", fmt, codec)
    segments, batches = decode_all(source)

    # Text subtitles need Matroska (MPEG-TS has no text subtitle type); mov_text travels as SubRip.
    assert {(m.container, m.tracks) for m in segments} == {("matroska", ("video", "subtitle"))}
    # Each cue travels in exactly one segment (the one open when it was read): none lost, none twice.
    lines = [line for batch in batches for line in batch.subtitles]
    assert [line.text for line in lines] == [words for _, _, words in CUES]
    for line, (start, end, _) in zip(lines, CUES):
        assert line.start_s == pytest.approx(start, abs=0.002) and line.end_s == pytest.approx(end, abs=0.002)
        assert (line.source, line.language, line.confidence) == ("subtitle", "en", 1.0)


def test_sidecar_files_are_read_as_subtitle_lines(tmp_path: Path) -> None:
    (tmp_path / "talk.srt").write_text(srt())
    (tmp_path / "talk.fr.vtt").write_text(vtt())
    for path, language in [(tmp_path / "talk.srt", "en"), (tmp_path / "talk.fr.vtt", "fr")]:
        lines = sidecar_lines(path, offset_s=100.0)
        assert [(line.start_s, line.end_s, line.text) for line in lines] == [
            (100.0 + a, 100.0 + b, words) for a, b, words in CUES]
        assert {(line.source, line.channel) for line in lines} == {("subtitle", path.name)}
        if path.suffix == ".vtt":
            assert {line.language for line in lines} == {language}
    (tmp_path / "broken.srt").write_bytes(b"\x00\x01 not subtitles")
    with pytest.raises(ValueError):
        sidecar_lines(tmp_path / "broken.srt")


def test_ass_markup_is_not_words() -> None:
    assert ass_words(r"{\an7}{\pos(38,182)}WE'RE {\i1}LOSING{\i0}\NTIME") == "WE'RE LOSING TIME"


def test_audio_travels_copied_and_decodes_to_16k_mono_without_gaps(real_video_dir: Path) -> None:
    source = real_video_dir / "friday.mp4"
    segments, batches = decode_all(source, audio=True)

    assert {m.tracks for m in segments} == {("video", "audio")} and {m.container for m in segments} == {"mpegts"}
    with av.open(io.BytesIO(segments[0].payload), format="mpegts") as payload, av.open(str(source)) as original:
        assert payload.streams.audio[0].codec_context.name == original.streams.audio[0].codec_context.name == "aac"
        total_s = float(original.streams.audio[0].duration * original.streams.audio[0].time_base)
    clips: list[AudioClip] = [batch.audio for batch in batches]
    assert all(c.samples.dtype == np.float32 and c.samples.ndim == 1 for c in clips)
    assert clips[0].start_s == pytest.approx(0.0, abs=0.05)
    for a, b in zip(clips, clips[1:]):  # one track, cut in pieces: each starts where the last ended
        assert b.start_s == pytest.approx(a.start_s + a.duration_s, abs=0.005)
    assert sum(c.duration_s for c in clips) == pytest.approx(total_s, abs=0.1)
    assert 0.001 < float(np.abs(np.concatenate([c.samples for c in clips])).mean()) < 1.0  # sound, not silence


def test_decoding_audio_is_off_by_default_and_old_segments_still_read(real_video_dir: Path) -> None:
    _, batches = decode_all(real_video_dir / "friday.mp4")
    assert all(batch.audio is None for batch in batches)
    old = list(iter_segments(str(real_video_dir / "friday.mp4"), audio=False, subtitles=False))
    assert {m.tracks for m in old} == {("video",)}
    decoder = SegmentDecoder(DecodeConfig(audio=True))
    batch = decoder.decode(SegmentInfo("t", "s", 0, 1e9, 0.0, old[0].duration_s), old[0].payload)
    assert batch.audio is None and batch.subtitles == [] and len(batch) > 0


def test_a_sidecar_is_read_only_for_a_recording_without_a_subtitle_track(tmp_path: Path) -> None:
    from pipelines.ingest.sidecars import Sidecars

    tracked = write_subtitled_video(tmp_path / "tracked.mkv", "matroska", "subrip")
    plain = write_subtitled_video(tmp_path / "plain.mp4", "mp4", None)
    for video in (tracked, plain):
        video.with_suffix(".srt").write_text(srt())
    sidecars = Sidecars()
    everything = SegmentInfo("t", "s", 0, 1e9, 0.0, 10.0)
    sidecars.load("t", "s", tracked)  # its track already carries the cues: read twice, they would be stored twice
    assert sidecars.lines_of(everything) == []
    sidecars.load("t", "s", plain)
    assert [line.text for line in sidecars.lines_of(everything)] == [words for _, _, words in CUES]


def test_an_audio_track_that_never_sent_a_packet_stays_behind(tmp_path: Path, real_video_dir: Path) -> None:
    """nginx-rtmp's live HLS lists an AAC track in every fragment's PMT, audio or not: FFmpeg finds no sample
    rate or channels for it, and the MPEG-TS muxer refused a segment carrying it (EINVAL at its first packet)."""
    phantom = tmp_path / "phantom.ts"
    with av.open(str(real_video_dir / "friday.mp4")) as src, av.open(str(phantom), "w", format="mpegts") as out:
        video = out.add_stream_from_template(src.streams.video[0])
        out.add_stream("aac", rate=44100)  # declared, never written to
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = video
                out.mux(packet)
    with av.open(str(phantom)) as probed:
        [listed] = probed.streams.audio
        assert (listed.codec_context.name, listed.codec_context.sample_rate) == ("aac", 0)
    segments, batches = decode_all(phantom, audio=True)
    assert len(segments) >= 2 and {m.tracks for m in segments} == {("video",)}
    assert all(batch.audio is None and len(batch) for batch in batches)
