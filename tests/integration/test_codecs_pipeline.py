"""Old-camera and web codecs through the real pipeline: stored, answerable, and no dead letters."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer

from contracts import messages
from pipelines.api.client import Client
from pipelines.kafka.publish import SegmentPublisher
from pipelines.segmenter import iter_segments
from tests.codec_clips import has_encoder, write_clip
from tests.integration.conftest import wait_for
from tests.integration.test_pipeline import assert_each_segment_once, stored_segments

pytestmark = pytest.mark.integration

# MS-MPEG4v3 in AVI was the reported failure (segments the decoder dead-lettered); VP9 in WebM is the web's.
CLIPS = [("msmpeg4", "avi", "clip.avi", "yuv420p", "msmpeg4v3"), ("libvpx-vp9", "webm", "clip.webm", "yuv420p", "vp9")]


def test_non_ts_codecs_ingest_and_answer(deployed, tmp_path):
    config = deployed()
    published = {}
    for encoder, source_format, name, pix_fmt, codec in CLIPS:
        if not has_encoder(encoder):
            continue
        clip = write_clip(tmp_path / name, encoder, source_format, pix_fmt, seconds=6.0)
        stream = f"cam-{codec}"
        published[stream] = sum(1 for _ in iter_segments(str(clip)))
        SegmentPublisher(kafka=config.kafka).publish(str(clip), stream_id=stream, pace="fast")
    assert published, "this PyAV build has none of the encoders"
    for stream, n in published.items():
        wait_for(lambda s=stream, n=n: stored_segments(config, s) == n, 120, f"{n} segments of {stream} in memory")
        assert_each_segment_once(config, stream, n)

    client = Client(config, timeout_s=60)
    for stream in published:
        answer = client.ask_kafka(messages.Query(tenant_id="default", stream_ids=[stream], top_k=3))
        assert answer.error is None and answer.evidence
        assert {e.stream_id for e in answer.evidence} == {stream}

    consumer = KafkaConsumer(config.kafka.topic("dead_letters"), bootstrap_servers=config.kafka.bootstrap,
                             auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=2000)
    letters = [messages.decode(r.value)[0] for r in consumer]
    consumer.close()
    assert not letters, letters
