"""Clips end to end: a deployed pipeline (API keys on) records each segment's location as it ingests; evidence
and alerts carry clip URLs; the alerts page plays the alert's clip in a real headless chromium; another tenant's
key finds nothing; a span whose segments left Kafka (no archive) answers 410."""

from __future__ import annotations

import io
from pathlib import Path

import av
import httpx
import pytest
from kafka import KafkaAdminClient

from deploy.processes import free_port
from memory_store import keys
from contracts import messages
from pipelines.api.client import Client
from pipelines.clips import ClipCutter, save_evidence_clips
from pipelines.kafka.client import ensure_topics
from pipelines.kafka.publish import SegmentPublisher
from tests.integration.conftest import redis_client, wait_for
from tests.integration.test_dashboard import browser  # noqa: F401  (the fixture)
from tests.integration.test_pipeline import stored_segments

pytestmark = pytest.mark.integration

ACME, GLOBEX = {"x-api-key": "acme-key"}, {"x-api-key": "globex-key"}


def recorded_segments(config, stream: str, tenant: str) -> int:
    _, by_stream_time, _, _ = keys.clip_keys(tenant, stream)
    return redis_client(config).zcard(by_stream_time)


def test_hits_and_alerts_play_their_clips(deployed, sample_video, browser, kafka_broker, tmp_path):  # noqa: F811
    video, truth = sample_video
    config = deployed(http=True, serve={"port": free_port(),
                                        "api_keys": {"acme-key": "acme", "globex-key": "globex"}})
    base = Client(config).http_url
    headline = truth["headlines"][0]["text"]  # on screen from t = 0
    registered = httpx.post(f"{base}/v1/standing-queries", headers=ACME, timeout=60,
                            json={"text": headline.lower(), "stream_ids": ["news"]})
    assert registered.status_code == 201, registered.text
    with SegmentPublisher(kafka=config.kafka) as publisher:
        stats = publisher.publish(str(video), stream_id="news", tenant_id="acme", pace="fast")
    # The source records a segment's location once the whole chain after memory (standing queries) acknowledged it.
    wait_for(lambda: recorded_segments(config, "news", "acme") == stats.segments, 180, "every segment's location")
    assert stored_segments(config, "news", "acme") == stats.segments

    # The query's evidence carries clip URLs; the clip is an MP4 of the stream's picture covering the span.
    answer = httpx.post(f"{base}/v1/query", headers=ACME, timeout=60,
                        json={"text": headline.lower(), "stream_ids": ["news"], "generate": False}).json()
    assert answer["evidence"], answer
    evidence = answer["evidence"][0]
    assert evidence["clip_url"].startswith("/v1/streams/news/clip?from=")
    clip = httpx.get(base + evidence["clip_url"], headers=ACME, timeout=60)
    assert clip.status_code == 200, clip.text
    assert clip.headers["content-type"] == "video/mp4"
    start, end = float(clip.headers["x-livelens-clip-start"]), float(clip.headers["x-livelens-clip-end"])
    margin, gop, video_end = config.clips.margin_s, 1.0, 24.0  # the sample video has a keyframe every second
    want_from, want_to = max(0.0, evidence["t_start"] - margin), evidence["t_end"] + margin
    assert want_from - gop < start <= want_from + 1e-6, (start, want_from)
    assert min(want_to, video_end) - 1e-6 <= end < want_to + gop + 1e-6, (end, want_to)
    with av.open(io.BytesIO(clip.content)) as c:
        frames = list(c.decode(video=0))
        assert (c.streams.video[0].width, c.streams.video[0].height) == (640, 360)
    assert len(frames) == round((end - start) * 10)  # 10 fps: every frame of the span, none twice

    # `livelens ask --clips DIR` saves the same clip for each piece of evidence.
    # (pipelines.cli is not imported here: it turns Ray's token auth on for the whole test session.)
    saved = save_evidence_clips(ClipCutter(config, redis_client(config)), "acme",
                                [messages.Evidence.model_validate(e) for e in answer["evidence"]], tmp_path / "clips")
    assert all(isinstance(p, Path) for p in saved) and saved[0].read_bytes() == clip.content

    # Another tenant's key: no such stream for it (not "forbidden": its existence is not disclosed).
    other = httpx.get(base + evidence["clip_url"], headers=GLOBEX, timeout=60)
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found", other.text

    # The standing query's alert carries a clip URL too, and the alerts page plays it.
    alerts = wait_for(lambda: httpx.get(f"{base}/v1/alerts", headers=ACME, timeout=30).json(), 60, "the alert")
    assert alerts[0]["evidence"][0]["clip_url"].startswith("/v1/streams/news/clip?")
    browser.goto(f"{base}/dashboard/alerts?key=acme-key")
    browser.wait("document.querySelectorAll('#alerts tbody tr button.play:not([disabled])').length >= 1", 30,
                 "the alert's clip button")
    browser.evaluate("document.querySelector('#alerts tbody tr button.play').click()")
    played = browser.wait("(() => { const v = document.querySelector('#player video');"
                          " return v && v.currentTime > 0.5 && [v.currentTime, v.videoWidth, v.videoHeight]; })()",
                          30, "the clip to play")
    assert played[1:] == [640, 360], played
    browser.wait("document.querySelector('#player .clip-texts').textContent.length > 0", 30,
                 "the span's on-screen text beside the clip")
    assert headline.upper()[:10] in browser.evaluate("document.querySelector('#player .clip-texts').textContent").upper()

    # The segments leave Kafka (the topic is recreated; tansu has no retention to wait for) and there is no
    # archive: the span is gone, and says why.
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.address)
    try:
        admin.delete_topics([config.kafka.topic("segments")])
    finally:
        admin.close()
    ensure_topics(config.kafka)
    gone = httpx.get(base + evidence["clip_url"], headers=ACME, timeout=60)
    assert gone.status_code == 410, gone.text
    assert gone.json()["error"]["code"] == "expired" and "no archive is configured" in gone.json()["error"]["message"]
