"""SegmentDecoder on real H.264 segments (remuxed to MPEG-TS) and on synthetic clips of known content."""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from operators.config import DecodeConfig
from operators.decode import SegmentDecoder
from operators.frames import StageError
from pipelines.config import LivelensConfig
from tests.operators.media import (
    Segment,
    encode_audio_only,
    encode_synthetic,
    frame_times,
    remux_segments,
)

# 768x432, 12.5 fps (a frame every 0.08 s), a keyframe every 4.8 s, no B-frames: segment 1 is [4.8, 9.6).
CAR = "car-detection.mp4"
# 768x432, 10 fps, a keyframe every second, B-frames (decode order differs from presentation order).
PERSON = "one-by-one-person-detection.mp4"


@pytest.fixture(scope="module")
def car(real_video_dir: Path) -> list[Segment]:
    return remux_segments(real_video_dir / CAR)


@pytest.fixture(scope="module")
def person(real_video_dir: Path) -> list[Segment]:
    """3-second segments (3 GOPs each) of the first 18 s."""
    return remux_segments(real_video_dir / PERSON, keyframes_per_segment=3)[:6]


def decoder(**config) -> SegmentDecoder:
    return SegmentDecoder(DecodeConfig(**config))


@pytest.mark.parametrize(
    ("fps", "expected_pts"),
    [
        (1.0, [5.04, 6.0, 7.04, 8.0, 9.04]),  # first frame at or after each whole second
        (2.0, [5.04, 5.52, 6.0, 6.56, 7.04, 7.52, 8.0, 8.56, 9.04, 9.52]),
        (0.25, [8.0]),  # grid 4, 8, 12: 4 belongs to the previous segment
        (1 / 4.8, [4.8]),  # a grid point exactly on the segment's first frame
        (0.1, []),  # no grid point in [4.8, 9.6): a valid, empty batch
        (12.5, [4.8 + 0.08 * i for i in range(60)]),  # the native rate keeps every frame
        (25.0, [4.8 + 0.08 * i for i in range(60)]),  # above it, still each frame once
    ],
)
def test_sampling_keeps_first_frame_at_or_after_each_grid_point(car, fps, expected_pts):
    batch = decoder(sample_fps=fps).decode(car[1].info(seq=1), car[1].payload)
    np.testing.assert_allclose(batch.pts_s, expected_pts, atol=1e-9)
    assert batch.images.shape == (len(expected_pts), 252, 448, 3)
    assert len(batch.thumbnails) == len(expected_pts)


def test_a_streams_own_sampling_rate_on_its_segment_info_wins_over_the_configured_one(car):
    """`livelens streams set --sample-fps`: the live DAG stamps the stream's rate on SegmentInfo."""
    info = dataclasses.replace(car[1].info(seq=1), sample_fps=0.25)
    np.testing.assert_allclose(decoder(sample_fps=2.0).decode(info, car[1].payload).pts_s, [8.0], atol=1e-9)


@pytest.mark.parametrize(("clip", "fps"), [(CAR, 1.0), (CAR, 3.0), (CAR, 0.3), (PERSON, 1.0), (PERSON, 4.0)])
def test_consecutive_segments_sample_each_grid_point_exactly_once(real_video_dir, car, person, clip, fps):
    segments = car if clip == CAR else person
    dec = decoder(sample_fps=fps)
    pts = np.concatenate([dec.decode(s.info(seq=i), s.payload).pts_s for i, s in enumerate(segments)])
    # Oracle from the whole clip, no segment boundaries: the first frame at or after each grid point.
    times = np.array(frame_times(real_video_dir / clip))
    end = segments[-1].media_start_s + segments[-1].duration_s
    times = times[times < end - 1e-9]
    grid = np.arange(math.floor(times[-1] * fps + 1e-6) + 1) / fps
    expected = np.unique([times[np.searchsorted(times, g - 1e-9)] for g in grid])
    np.testing.assert_allclose(pts, expected, atol=1e-6)


def test_replaying_a_segment_yields_the_same_frames(car):
    dec = decoder(sample_fps=2.0)
    first, again = (dec.decode(car[2].info(seq=2), car[2].payload) for _ in range(2))
    np.testing.assert_array_equal(first.pts_s, again.pts_s)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.thumbnails == again.thumbnails


@pytest.mark.parametrize("threads", [0, 2])
def test_threaded_decoding_matches_single_threaded(car, threads):
    one = decoder(sample_fps=2.0).decode(car[1].info(), car[1].payload)
    many = SegmentDecoder(DecodeConfig(sample_fps=2.0), threads=threads).decode(car[1].info(), car[1].payload)
    np.testing.assert_array_equal(one.pts_s, many.pts_s)
    np.testing.assert_array_equal(one.images, many.images)


@pytest.mark.parametrize("fps", [1.0, 0.5, 2.0, 1 / 3, 10.0])
@pytest.mark.parametrize("clip", ["car", "person"])
def test_skipping_unsampled_frames_keeps_the_same_samples_for_less_decoding(request, clip, fps):
    """Person has B-frames (skipped unless sampled) and three GOPs a segment; car has neither."""
    segments = request.getfixturevalue(clip)
    full, lean = decoder(sample_fps=fps), decoder(sample_fps=fps, skip_unsampled=True)
    for seq, seg in enumerate(segments):
        every, needed = full.decode(seg.info(seq=seq), seg.payload), lean.decode(seg.info(seq=seq), seg.payload)
        np.testing.assert_array_equal(needed.pts_s, every.pts_s)
        np.testing.assert_array_equal(needed.images, every.images)
        assert needed.thumbnails == every.thumbnails
    if fps < 10.0:  # at the clips' native rate every frame is a sample
        assert lean.frames_decoded < full.frames_decoded  # car: only the frames after each segment's last sample
    if clip == "person" and fps <= 1.0:
        assert lean.frames_decoded < 0.7 * full.frames_decoded


def test_skipping_unsampled_frames_is_allowed_while_captions_are_read():
    """Captions come from the packets (tests/operators/test_cc_data.py), so skipped frames keep theirs."""
    config = LivelensConfig(decode=dict(skip_unsampled=True))
    assert config.decode.skip_unsampled and config.transcript.captions


@pytest.mark.parametrize(
    ("frame_px", "thumbnail_px", "image_hw", "thumb_wh"),
    [(448, 160, (252, 448), (160, 90)), (224, 96, (126, 224), (96, 54)), (1024, 320, (576, 1024), (320, 180))],
)
def test_frames_and_thumbnails_keep_aspect_at_the_longest_side(car, frame_px, thumbnail_px, image_hw, thumb_wh):
    dec = SegmentDecoder(DecodeConfig(thumbnail_px=thumbnail_px), frame_px=frame_px)
    batch = dec.decode(car[0].info(), car[0].payload)
    assert batch.images.shape[1:] == (*image_hw, 3)
    for image, jpeg in zip(batch.images, batch.thumbnails):
        thumb = Image.open(io.BytesIO(jpeg))
        assert thumb.format == "JPEG" and thumb.size == thumb_wh
        # The thumbnail shows the same picture as the frame.
        small = np.asarray(Image.fromarray(image).resize(thumb_wh, Image.BILINEAR), dtype=np.float32)
        assert np.abs(small - np.asarray(thumb.convert("RGB"), dtype=np.float32)).mean() < 12


@pytest.mark.parametrize(
    ("segment", "fps", "expected_pts"),
    [
        (1, 1.0, [3.0, 4.0, 5.0]),  # segment 1 holds keyframes 3, 4, 5
        (1, 4.0, [3.0, 4.0, 5.0]),  # above the keyframe rate: every keyframe, nothing between
        (1, 0.5, [4.0]),  # grid 2, 4, 6: 2 was claimed by keyframe 2.0 of the previous segment
        (2, 1 / 3, [6.0]),
    ],
)
def test_keyframes_only_keeps_only_keyframes_on_the_grid(person, segment, fps, expected_pts):
    seg = person[segment]
    batch = decoder(sample_fps=fps, keyframes_only=True).decode(seg.info(seq=segment), seg.payload)
    np.testing.assert_allclose(batch.pts_s, expected_pts, atol=1e-9)
    assert set(np.round(batch.pts_s, 6)) <= set(np.round(seg.keyframes_s, 6))
    # A keyframe decodes to the same picture whether or not the frames around it are decoded.
    full = decoder(sample_fps=10.0).decode(seg.info(seq=segment), seg.payload)
    rows = np.searchsorted(np.round(full.pts_s, 6), np.round(batch.pts_s, 6))
    np.testing.assert_array_equal(batch.images, full.images[rows])


def test_keyframes_only_over_a_whole_clip_yields_each_keyframe_once(car):
    dec = decoder(sample_fps=1.0, keyframes_only=True)
    pts = np.concatenate([dec.decode(s.info(seq=i), s.payload).pts_s for i, s in enumerate(car)])
    np.testing.assert_allclose(pts, [k for s in car for k in s.keyframes_s], atol=1e-9)
    assert len(pts) == 7


def test_synthetic_frames_decode_to_their_content_in_rgb_order():
    # Frame i is pure red at brightness 40 + 8 i: the order, timing and channel order are all visible.
    levels = 40 + 8 * np.arange(20)
    frames = np.zeros((20, 96, 160, 3), np.uint8)
    frames[..., 0] = levels[:, None, None]
    payload = encode_synthetic(frames, fps=10, gop=10)
    seg = Segment(payload, media_start_s=30.0, duration_s=2.0, keyframes_s=(30.0, 31.0))
    batch = SegmentDecoder(DecodeConfig(sample_fps=10.0), frame_px=160).decode(seg.info(), payload)
    np.testing.assert_allclose(batch.pts_s, 30.0 + np.arange(20) / 10, atol=1e-9)
    assert batch.images.shape == (20, 96, 160, 3)
    red = batch.images[..., 0].mean(axis=(1, 2))
    np.testing.assert_allclose(red, levels, atol=4)
    assert batch.images[..., 2].mean() < 10


def _flip_bytes(payload: bytes) -> bytes:
    data = bytearray(payload)
    for i in np.random.default_rng(0).integers(1000, len(data), 50):
        data[i] ^= 0xFF
    return bytes(data)


def _garbage(payload: bytes) -> bytes:
    return np.random.default_rng(1).integers(0, 256, len(payload), dtype=np.uint8).tobytes()


BadInput = Callable[[bytes], bytes]
_SAME: BadInput = lambda payload: payload  # noqa: E731


@pytest.mark.parametrize(
    ("make_payload", "info_overrides", "config", "code"),
    [
        pytest.param(lambda p: p[: len(p) * 3 // 10 // 188 * 188], {}, {}, "truncated_segment", id="cut-to-30pct"),
        pytest.param(lambda p: p[:-100], {}, {}, "truncated_segment", id="ends-mid-ts-packet"),
        pytest.param(lambda p: p[: -188 * 3], {}, {}, "truncated_segment", id="last-frame-incomplete"),
        pytest.param(_flip_bytes, {}, {}, "decode_error", id="flipped-bytes"),
        pytest.param(_garbage, {}, {}, "decode_error", id="garbage"),
        pytest.param(_SAME, {"container": "mp4"}, {}, "decode_error", id="ts-declared-mp4"),
        pytest.param(_SAME, {"container": "no-such-format"}, {}, "bad_container", id="unknown-container"),
        pytest.param(_SAME, {"codec": "hevc"}, {}, "decode_error", id="codec-mismatch"),
        pytest.param(_SAME, {"codec": "no-such-codec"}, {}, "unknown_codec", id="unknown-codec"),
        pytest.param(_SAME, {"codec": "mp2"}, {}, "unknown_codec", id="audio-codec-declared"),
        pytest.param(lambda p: encode_audio_only(), {}, {}, "unknown_codec", id="audio-only"),
        pytest.param(_SAME, {}, {"max_pixels": 768 * 432 - 1}, "oversize_frame", id="oversize"),
        pytest.param(lambda p: p[: 188 * 3], {}, {}, "empty_segment", id="headers-only"),
        pytest.param(lambda p: b"", {}, {}, "empty_segment", id="empty-payload"),
    ],
)
def test_bad_input_raises_stage_error_with_a_stable_code(car, make_payload, info_overrides, config, code):
    with pytest.raises(StageError) as raised:
        decoder(**config).decode(car[1].info(**info_overrides), make_payload(car[1].payload))
    assert raised.value.code == code, raised.value.reason


def test_a_whole_mp4_file_declared_as_mpegts_is_a_decode_error(real_video_dir):
    payload = (real_video_dir / CAR).read_bytes()
    info = Segment(payload, 0.0, 30.16, ()).info()
    with pytest.raises(StageError) as raised:
        decoder().decode(info, payload)
    assert raised.value.code == "decode_error"


def _nvdec_opens() -> bool:
    import av

    try:
        av.CodecContext.create("h264_cuvid", "r").open()
    except (av.FFmpegError, ValueError, OSError):
        return False
    return True


@pytest.mark.skipif(_nvdec_opens(), reason="NVDEC opens here: the fallback is not taken")
def test_nvdec_without_a_gpu_decodes_on_the_cpu_and_says_so(car, caplog):
    dec = decoder(sample_fps=2.0, hardware="nvdec")
    with caplog.at_level("WARNING", logger="operators.decode"):
        got = [dec.decode(s.info(seq=i), s.payload) for i, s in enumerate(car[:2])]
    assert [r.message for r in caplog.records if "h264_cuvid cannot open" in r.message] != []
    assert len([r for r in caplog.records if "cuvid" in r.message]) == 1  # once per codec, not per segment
    assert dec.cpu_fallbacks == 2
    for s, g in zip(car, got):
        np.testing.assert_array_equal(g.images, decoder(sample_fps=2.0).decode(s.info(), s.payload).images)


@pytest.mark.skipif(not _nvdec_opens(), reason="no NVDEC here")
def test_nvdec_frames_match_the_cpu_decoder_across_segments(car):
    dec = decoder(sample_fps=2.0, hardware="nvdec")
    for i, s in enumerate(car[:3]):  # one NVDEC decoder, flushed between segments
        gpu, cpu = dec.decode(s.info(seq=i), s.payload), decoder(sample_fps=2.0).decode(s.info(seq=i), s.payload)
        np.testing.assert_array_equal(gpu.pts_s, cpu.pts_s)
        assert np.abs(gpu.images.astype(int) - cpu.images.astype(int)).mean() < 2.0
    assert dec.cpu_fallbacks == 0


def test_keyframes_only_stays_on_the_cpu_with_nvdec(car):
    dec = decoder(sample_fps=1.0, keyframes_only=True, hardware="nvdec")
    dec.decode(car[1].info(), car[1].payload)
    assert dec.cpu_fallbacks == 0 and dec._cuvid == {}
