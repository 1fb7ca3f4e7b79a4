"""Any video FFmpeg decodes is carried: segments in MPEG-TS where it can hold the codec, else Matroska.

Each clip is cut by the publisher's segmenter and every segment decoded by the decode operator as the
pipeline does (from the declared codec and container alone), so a codec that cannot travel shows up here
and not as dead letters downstream.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from operators.decode import SegmentDecoder
from pipelines.config import DecodeConfig
from pipelines.kafka.publish import segment_header
from pipelines.segmenter import SourceError, iter_segments, segment_container
from pipelines.ingest.source import segment_info
from tests.codec_clips import CODEC_CLIPS, FPS, GOP, has_encoder, write_clip


@pytest.mark.parametrize(("encoder", "source_format", "suffix", "pix_fmt", "codec", "container"), CODEC_CLIPS,
                         ids=[c[4] + "-in-" + c[1] for c in CODEC_CLIPS])
def test_every_codec_is_segmented_and_decodes(tmp_path, encoder, source_format, suffix, pix_fmt, codec, container):
    if not has_encoder(encoder):
        pytest.skip(f"this PyAV build has no {encoder} encoder to make a test clip with")
    clip = write_clip(tmp_path / f"clip{suffix}", encoder, source_format, pix_fmt, seconds=4.0)
    segments = list(iter_segments(str(clip), target_s=2.0))
    assert len(segments) == 4.0 * FPS / GOP / 2
    assert {(s.codec, s.container) for s in segments} == {(codec, container)}
    assert segment_container(codec) == container

    decoder = SegmentDecoder(DecodeConfig(sample_fps=2.0), frame_px=160)
    kept = []
    for media in segments:
        # Through the contract, as a consumer sees it: header fields only, no knowledge of the source.
        header = segment_header(media, stream_id="cam", tenant_id="t", start=datetime(2026, 3, 1, tzinfo=UTC))
        assert header.container == container
        batch = decoder.decode(segment_info(header), media.payload)
        kept.extend(batch.pts_s.tolist())
        assert batch.images.shape[1:] == (128, 160, 3)
        # The white bar is where the clip drew it: the frames are the clip's, not garbage.
        for pts, image in zip(batch.pts_s, batch.images):
            i = round(pts * FPS)
            x = (i * 4) % (160 - 20)
            far = (x + 70) % (160 - 20)
            assert image[:, x + 4:x + 16].mean() > 180 and image[:, far + 4:far + 16].mean() < 120
    assert kept == pytest.approx(np.arange(0, 4.0, 0.5))


def test_a_codec_ffmpeg_does_not_know_fails_at_publish(tmp_path):
    if not has_encoder("mpeg4"):
        pytest.skip("no mpeg4 encoder")
    clip = write_clip(tmp_path / "clip.avi", "mpeg4", "avi", "yuv420p", seconds=1.0)
    unknown = tmp_path / "unknown.avi"
    unknown.write_bytes(clip.read_bytes().replace(b"FMP4", b"QQQQ"))  # a FourCC no FFmpeg decoder claims
    with pytest.raises(SourceError, match="codec FFmpeg does not know"):
        list(iter_segments(str(unknown)))

