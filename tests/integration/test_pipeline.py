"""The spine end to end: real broker, real redis-server, real Ray actors, real (tiny) models."""

from __future__ import annotations

import signal
import threading

import pytest
import ray
from kafka import KafkaConsumer, KafkaProducer

from contracts import messages
from deploy.processes import start_redis
from memory_store import keys
from memory_store.redis_tier import RedisTier
from pipelines.api.client import Client
from pipelines.cli.demo import frame_at
from pipelines.kafka.publish import SegmentPublisher
from pipelines.segmenter import iter_segments
from tests.integration.conftest import _free_port, redis_client, wait_for

pytestmark = pytest.mark.integration


def stored_segments(config, stream: str, tenant: str = "default") -> int:
    info = RedisTier(redis_client(config), config.memory).stream_info(tenant, stream)
    return info.segments if info else 0


def segment_ids(config, stream: str, tenant: str = "default") -> list[str]:
    """The stored segments' names (``session-seq``), in stream order."""
    return [m.decode() for m in redis_client(config).zrange(keys.segments(tenant, stream), 0, -1)]


def assert_each_segment_once(config, stream: str, n_segments: int, tenant: str = "default") -> None:
    tier = RedisTier(redis_client(config), config.memory)
    info = tier.stream_info(tenant, stream)
    assert info is not None and info.segments == n_segments, f"{info} != {n_segments} segments"
    stored = segment_ids(config, stream, tenant)
    assert len(stored) == n_segments
    # One publishing session per publish: its segments are numbered 0..n-1 with no gaps (a record without a
    # session, as kcat or a v1 publisher writes it, is named by its bare seq).
    by_session: dict[str, list[int]] = {}
    for name in stored:
        session, _, seq = name.rpartition("-")
        by_session.setdefault(session, []).append(int(seq))
    assert all(sorted(seqs) == list(range(len(seqs))) for seqs in by_session.values()), by_session
    frame_keys = [k for name in stored for k in tier.segment_frame_keys(tenant, stream, name)]
    assert all(tier.segment_frame_keys(tenant, stream, name) for name in stored), "a segment has no frames"
    assert len(frame_keys) == len(set(frame_keys)) == info.frames, "a frame was stored twice or lost"


def dead_letters(config, n: int, timeout_s: float = 30) -> list[messages.DeadLetter]:
    consumer = KafkaConsumer(config.kafka.topic("dead_letters"), bootstrap_servers=config.kafka.bootstrap,
                             auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=int(timeout_s * 1000))
    out = []
    for record in consumer:
        out.append(messages.decode(record.value, expect=messages.DeadLetter)[0])
        if len(out) >= n:
            break
    consumer.close()
    return out


def test_ingest_then_ask_over_kafka_and_http(deployed, sample_video):
    video, truth = sample_video
    config = deployed(http=True)
    client = Client(config, timeout_s=60)
    # A standing query registered before the stream starts.
    watched = truth["headlines"][0]["text"]
    standing = client.register_standing(text=f"news about {watched.lower()}", stream_ids=["news"])
    n = sum(1 for _ in iter_segments(str(video)))
    SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="news", pace="fast")
    wait_for(lambda: stored_segments(config, "news") == n, 120, f"{n} segments in memory")
    assert_each_segment_once(config, "news", n)

    # It fired once per episode of that headline, within 3 s of stream time of its appearance.
    episodes = [h for h in truth["headlines"] if h["text"] == watched]
    alerts = list(client.follow_alerts(query_id=standing["query_id"], from_beginning=True, timeout_s=8))
    assert len(alerts) == len(episodes), [(a.evidence[0].t_start, a.evidence[0].text) for a in alerts]
    for alert, episode in zip(sorted(alerts, key=lambda a: a.evidence[0].t_start), episodes):
        assert alert.kind == "standing_query" and alert.stream_id == "news"
        assert episode["start"] <= alert.evidence[0].t_start <= episode["start"] + 3.0
    # An example image taken from the video: evidence at the time it was shown.
    for scene in truth["scenes"][1:4]:
        t = (scene["start"] + scene["end"]) / 2
        query = messages.Query(tenant_id="default", stream_ids=["news"], image_jpeg_b64=frame_at(video, t), top_k=3)
        answer = client.ask_kafka(query)
        assert answer.error is None
        assert abs(answer.evidence[0].t_start - t) <= 2.0 or any(abs(e.t_start - t) <= 2.0 for e in answer.evidence)
        assert answer.extractive and "extractive" in answer.answer

    # A time-scoped text query over HTTP: every piece of evidence inside the scope.
    stream_start = RedisTier(redis_client(config), config.memory).stream_info("default", "news").first_wallclock
    from datetime import UTC, datetime

    scope = messages.TimeScope(start=datetime.fromtimestamp(stream_start + 5, UTC),
                               end=datetime.fromtimestamp(stream_start + 10, UTC))
    answer = client.ask_http(messages.Query(tenant_id="default", stream_ids=["news"], text="what happened",
                                            scope=scope, top_k=5))
    assert answer.evidence, "no evidence in scope"
    assert all(5 - 0.01 <= e.t_start <= 10 + 0.01 for e in answer.evidence), [e.t_start for e in answer.evidence]
    assert [e.t_start for e in answer.evidence] == sorted(e.t_start for e in answer.evidence)

    # A question about now is answered from the stream's newest seconds only (the recency gate).
    newest = RedisTier(redis_client(config), config.memory).stream_info("default", "news").last_media_s
    answer = client.ask_http(messages.Query(tenant_id="default", stream_ids=["news"], top_k=5,
                                            text="what is on screen right now"))
    assert answer.evidence and all(e.t_start >= newest - config.query.now_window_s - 0.01 for e in answer.evidence)

    # Questions about headlines are answered from on-screen text (OCR), with the text as evidence.
    for headline in truth["headlines"]:
        answer = client.ask_http(messages.Query(tenant_id="default", stream_ids=["news"], top_k=3,
                                                text=f"when did the news say {headline['text'].lower()}"))
        best = answer.evidence and max(answer.evidence, key=lambda e: e.score)
        assert best and best.text, f"no on-screen text evidence for {headline['text']}"
        assert best.t_start <= headline["end"] + 1 and best.t_end >= headline["start"] - 1, (best, headline)

    # The HTTP API: streams with their coverage, thumbnails, and 4xx (never 500) for bad requests.
    import httpx

    base = client.http_url
    streams = httpx.get(f"{base}/v1/streams", timeout=30).json()
    assert [s["stream_id"] for s in streams] == ["news"] and streams[0]["segments"] == n
    thumb = httpx.get(f"{base}/v1/thumbnails/{answer.evidence[0].thumbnail}", timeout=30)
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # a JPEG
    for method, path, kwargs, status in [
        ("post", "/v1/query", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
        ("post", "/v1/query", {"json": {"top_k": 10_000}}, 422),
        ("post", "/v1/query", {"json": {"tenant_id": "bad tenant!"}}, 422),
        ("post", "/v1/query", {"content": b"x" * (9 << 20), "headers": {"content-type": "application/json"}}, 413),
        ("post", "/v1/query", {"json": {"image_jpeg_b64": "bm90IGFuIGltYWdl"}}, 400),
        ("get", "/v1/thumbnails/ll:{default}:frame:nope", {}, 404),
        ("delete", "/v1/standing-queries/nope", {}, 404),
    ]:
        response = getattr(httpx, method)(f"{base}{path}", timeout=30, **kwargs)
        assert response.status_code == status, (path, kwargs.get("json"), response.status_code, response.text[:300])
        assert response.json()["error"]["code"]

    # Asynchronous queries: submit, then poll for the answer.
    submitted = httpx.post(f"{base}/v1/queries", json={"stream_ids": ["news"], "text": "what happened"}, timeout=30)
    assert submitted.status_code == 202, submitted.text
    polled = wait_for(lambda: (r := httpx.get(f"{base}{submitted.json()['answer_url']}", timeout=30)).status_code == 200
                      and r, 60, "the asynchronous answer")
    assert messages.Answer.model_validate(polled.json()).evidence

    # The stream's timeline: every stored frame in order, with its on-screen text.
    timeline = httpx.get(f"{base}/v1/streams/news/timeline", timeout=30).json()
    assert len(timeline) == streams[0]["frames"]
    assert [f["t_start"] for f in timeline] == sorted(f["t_start"] for f in timeline)
    assert any(truth["headlines"][0]["text"].split()[0] in f["text"] for f in timeline)

    # Another tenant sees nothing of this one.
    other = client.ask_http(messages.Query(tenant_id="other", text="what happened", top_k=5))
    assert other.evidence == []


def test_queries_span_a_tenants_streams_and_never_cross_tenants(deployed, sample_video, real_video_dir):
    video, truth = sample_video
    clip = real_video_dir / "car-detection.mp4"
    config = deployed(http=True, serve={"port": _free_port(), "api_keys": {"key-a": "acme", "key-b": "globex"}})
    publisher = SegmentPublisher(kafka=config.kafka)
    publisher.publish(str(video), stream_id="news", tenant_id="acme", pace="fast")
    publisher.publish(str(clip), stream_id="parking", tenant_id="acme", pace="fast")
    publisher.publish(str(clip), stream_id="parking", tenant_id="globex", pace="fast")
    n_clip = sum(1 for _ in iter_segments(str(clip)))
    wait_for(lambda: stored_segments(config, "parking", "acme") == n_clip
             and stored_segments(config, "parking", "globex") == n_clip, 180, "three streams")
    import httpx

    base = Client(config).http_url

    def ask(key: str | None, **body):
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.post(f"{base}/v1/query", json=body, headers=headers, timeout=60)

    # No key, a wrong key, or a key used for another tenant: refused.
    assert ask(None, text="cars").status_code == 401
    assert ask("nope", text="cars").status_code == 401
    assert ask("key-b", tenant_id="acme", text="cars").status_code == 403
    # Over all of acme's streams, a frame of the parking lot is found in the parking stream.
    image = frame_at(clip, 12.0)
    answer = messages.Answer.model_validate(ask("key-a", image_jpeg_b64=image, top_k=3).json())
    # (Evidence is chronological; the best match is the highest score. The parking lot looks alike all
    # through the clip, so only the stream, not the second, is asserted here.)
    assert max(answer.evidence, key=lambda e: e.score).stream_id == "parking"
    # globex sees only its own copy; evidence keys carry the tenant.
    other = messages.Answer.model_validate(ask("key-b", image_jpeg_b64=image, top_k=10).json())
    assert other.evidence and all(e.frame_key.startswith("globex/") for e in other.evidence)
    assert {s["stream_id"] for s in httpx.get(f"{base}/v1/streams", headers={"x-api-key": "key-b"},
                                              timeout=30).json()} == {"parking"}


@pytest.mark.parametrize("victim", ["decode-0", "memory-0"])
def test_killing_an_actor_mid_stream_loses_nothing_and_duplicates_nothing(deployed, sample_video, victim):
    video, _ = sample_video
    config = deployed()
    n = sum(1 for _ in iter_segments(str(video)))
    publisher = threading.Thread(target=SegmentPublisher(kafka=config.kafka).publish,
                                 kwargs=dict(source=str(video), stream_id="cam", pace="fast"))
    publisher.start()
    wait_for(lambda: stored_segments(config, "cam") >= 2, 120, "ingest to start")
    ray.kill(ray.get_actor(victim, namespace=config.ray.namespace), no_restart=False)
    publisher.join()
    wait_for(lambda: stored_segments(config, "cam") == n, 180, f"all {n} segments after killing {victim}")
    assert_each_segment_once(config, "cam", n)


def test_redis_restart_keeps_everything_acknowledged(deployed, sample_video, redis_server, tmp_path):
    video, _ = sample_video
    config = deployed()
    n = sum(1 for _ in iter_segments(str(video)))
    SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="a", pace="fast")
    wait_for(lambda: stored_segments(config, "a") == n, 120, "first stream stored")
    # SIGKILL, not a clean shutdown: only what appendfsync already put on disk survives.
    redis_server.stop(sig=signal.SIGKILL)
    restarted = start_redis(tmp_path, port=redis_server.port)
    try:
        assert_each_segment_once(config, "a", n)
        # The pipeline reconnects and keeps going.
        SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="b", pace="fast")
        wait_for(lambda: stored_segments(config, "b") == n, 120, "second stream stored after the restart")
        assert_each_segment_once(config, "b", n)
    finally:
        restarted.stop()  # the fixture stops only the server it started; this one would outlive the run


def test_bad_input_goes_to_dead_letters_and_the_stream_keeps_flowing(deployed, sample_video):
    video, _ = sample_video
    config = deployed()
    segments = list(iter_segments(str(video)))
    producer = KafkaProducer(bootstrap_servers=config.kafka.bootstrap)
    topic = config.kafka.topic("segments")
    # 1. garbage that is no livelens message at all
    producer.send(topic, key=b"bad", value=b"\x00\x00\xff\xffnot a message")
    # 2. a well-formed header around a truncated segment
    first = segments[1]
    truncated = messages.VideoSegment(
        tenant_id="default", stream_id="bad", seq=0, codec=first.codec, wallclock_start=messages.utcnow(),
        media_start_s=0, duration_s=first.duration_s, width=first.width, height=first.height,
        payload_bytes=len(first.payload) // 3)
    value, headers = messages.segment_record(truncated, first.payload[: len(first.payload) // 3])
    producer.send(topic, key=b"bad", value=value, headers=headers)
    # 3. a malformed query
    producer.send(config.kafka.topic("queries"), key=b"x", value=b'\x00\x00\x00\x02{}')
    producer.flush()
    # ... and a good stream right behind them
    SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="good", pace="fast")
    wait_for(lambda: stored_segments(config, "good") == len(segments), 120, "the good stream")
    letters = dead_letters(config, 3)
    codes = {(d.stage, d.code) for d in letters}
    assert ("source", "malformed_message") in codes
    assert ("query", "invalid_message") in codes or ("query", "unknown_schema") in codes
    assert any(d.stream_id == "bad" and d.stage == "decode" for d in letters), codes
    assert all(d.reason for d in letters)


def test_broker_restart_loses_topics_and_ingest_resumes(deployed, sample_video, kafka_broker, tmp_path):
    """The local broker keeps topics in memory: after a restart they are gone, and livelens must carry on."""
    from deploy.processes import start_broker

    video, _ = sample_video
    config = deployed()
    n = sum(1 for _ in iter_segments(str(video)))
    SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="before", pace="fast")
    wait_for(lambda: stored_segments(config, "before") == n, 120, "stream before the restart")
    kafka_broker.stop()
    restarted = start_broker(tmp_path / "broker", port=kafka_broker.port)
    try:
        # The publisher recreates the topics; the source reconnects, rejoins and reads them from the start.
        wait_for(lambda: _publish_ok(config, video, "after"), 60, "publishing to the restarted broker", 2.0)
        wait_for(lambda: stored_segments(config, "after") == n, 120, "stream after the restart")
        assert_each_segment_once(config, "after", n)
        assert_each_segment_once(config, "before", n)
    finally:
        kafka_broker.pid = restarted.pid  # the session fixture stops whichever broker runs at the end


def _publish_ok(config, video, stream: str) -> bool:
    """A publish that may meet the broker still starting; a partial one is harmless (writes are idempotent)."""
    from kafka.errors import KafkaError

    from pipelines.kafka.publish import PublishError

    try:
        SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id=stream, pace="fast")
        return True
    except (PublishError, KafkaError, RuntimeError):
        return False


def test_token_economy_configuration_ingests_with_fewer_tokens(deployed, sample_video):
    """Frame skipping, the ViT token cache, pixel-mode drop and pruning to a budget, through the real DAG."""
    video, truth = sample_video
    config = deployed(cache={"skip_frames": True, "token_cache": True}, drop={"mode": "pixel"},
                      prune={"keep_fraction": 0.25},
                      ocr={"enabled": False})
    n = sum(1 for _ in iter_segments(str(video)))
    SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="lean", pace="fast")
    wait_for(lambda: stored_segments(config, "lean") == n, 120, "the stream")
    assert_each_segment_once(config, "lean", n)
    encoder = ray.get_actor("encode-0", namespace=config.ray.namespace)
    skipped = ray.get(encoder.cache_stats.remote())["default/lean"]
    assert 0 < skipped["frames_skipped"] < skipped["frames_seen"], skipped  # the sample has static stretches
    assert skipped["token_fraction"] < 1.0 and skipped["skip_saved_s"] > 0, skipped  # the token cache ran too
    tier = RedisTier(redis_client(config), config.memory)
    frame_keys = [k for name in segment_ids(config, "lean") for k in tier.segment_frame_keys("default", "lean", name)]
    records = [r for r in tier.frames("default", frame_keys) if r is not None and r.tokens is not None]
    per_frame = 64  # the tiny CLIP's 8x8 grid
    assert all(len(r.tokens) <= per_frame * 0.25 + 1 for r in records)


def test_fused_encode_ingests_with_the_encoder_compressing(deployed, sample_video):
    """encode.fused on (the default on CUDA; here on the CPU): the encode actor compresses, no compress actor runs."""
    video, _ = sample_video
    config = deployed(encode={"fused": "on"}, drop={"mode": "pixel"}, prune={"keep_fraction": 0.25},
                      ocr={"enabled": False})
    n = sum(1 for _ in iter_segments(str(video)))
    SegmentPublisher(kafka=config.kafka).publish(str(video), stream_id="fused", pace="fast")
    wait_for(lambda: stored_segments(config, "fused") == n, 120, "the stream")
    assert_each_segment_once(config, "fused", n)
    with pytest.raises(ValueError):
        ray.get_actor("compress-0", namespace=config.ray.namespace)
    tier = RedisTier(redis_client(config), config.memory)
    frame_keys = [k for name in segment_ids(config, "fused") for k in tier.segment_frame_keys("default", "fused", name)]
    records = [r for r in tier.frames("default", frame_keys) if r is not None and r.tokens is not None]
    assert records and all(len(r.tokens) <= 64 * 0.25 + 1 for r in records)  # pruned on the encoder
    assert any(r.boundary for r in tier.frames("default", frame_keys) if r is not None)  # boundaries marked there
