"""Replay of a segments-topic range into memory, on a real broker, a real redis-server and the tiny CLIP.

The reference for "what a fresh ingest with the new configuration stores" is a backfill of
the same file (tests/test_backfill.py shows backfill stores what live ingest stores).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from kafka import KafkaConsumer, TopicPartition

from contracts import messages
from deploy.processes import ProcessRecord
from memory_store import keys
from memory_store.service import MemoryStore
from pipelines.cli.sample_video import write_sample_video
from pipelines.config import LivelensConfig
from pipelines.ingest.replay import Replay, ReplayError, ReplayRange
from pipelines.kafka.client import ensure_topics, make_producer
from pipelines.kafka.publish import SegmentPublisher, segment_header
from pipelines.segmenter import iter_segments
from tests.test_backfill import assert_same_memory, memory, store_for

REPO = Path(__file__).resolve().parents[1]
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TENANT = "default"
THRESHOLD_A, THRESHOLD_B = 0.9, 0.2  # B drops far more tokens


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("replay") / "broadcast.mp4"
    write_sample_video(out, duration_s=20.0)
    return out


def make_config(tmp_path: Path, broker: ProcessRecord, tiny_models: dict[str, Path], threshold: float,
                prefix: str) -> LivelensConfig:
    # 20 kB records: segments (~47 kB) travel in several chunks, so replay reassembles them.
    return LivelensConfig(data_dir=tmp_path / "data", encode=dict(model=str(tiny_models["clip"]), batch_frames=4),
                          ocr=dict(enabled=False), compress=dict(drop_threshold=threshold),
                          kafka=dict(bootstrap=broker.address, topic_prefix=prefix, partitions=2,
                                     max_message_bytes=20_000))


def publish(config: LivelensConfig, video: Path, stream: str) -> None:
    with SegmentPublisher(kafka=config.kafka) as publisher:
        stats = publisher.publish(str(video), stream_id=stream, tenant_id=TENANT, pace="fast", wallclock_start=START)
    assert stats.chunked_segments > 0


def dead_letters(config: LivelensConfig, expected: int, timeout_s: float = 15.0) -> list[messages.DeadLetter]:
    topic = config.kafka.topic("dead_letters")
    consumer = KafkaConsumer(bootstrap_servers=config.kafka.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        found: list[messages.DeadLetter] = []
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                found += [messages.decode(r.value, expect=messages.DeadLetter)[0] for r in records]
        return found
    finally:
        consumer.close()


def test_replay_rebuilds_memory_for_a_new_threshold(tmp_path, kafka_broker, redis_server, tiny_models, video):
    prefix = f"t{uuid.uuid4().hex[:10]}."
    config_a = make_config(tmp_path, kafka_broker, tiny_models, THRESHOLD_A, prefix)
    config_b = make_config(tmp_path, kafka_broker, tiny_models, THRESHOLD_B, prefix)
    publish(config_a, video, "cam")
    segments = ReplayRange(config_a.kafka.topic("segments"), from_offset=0)

    # Memory as ingest with threshold A left it: the topic's records through the same operators into an
    # empty store (the records name their publishing session, so this is what live ingest stores for them).
    store = store_for(redis_server, 0, config_a)
    kept_a = Replay(config_a, store, workers=1, progress=False).run(segments).tokens_kept
    before = memory(store)
    fresh_b = store_for(redis_server, 1, config_b)  # what a fresh ingest with threshold B stores
    # Counted as written: closed events drop repeated tokens from memory afterwards, so stored ones are fewer.
    kept_b = Replay(config_b, fresh_b, workers=1, progress=False).run(segments).tokens_kept
    expected = memory(fresh_b)
    assert kept_b < kept_a * 0.75  # the thresholds differ enough that stale frames would show

    summary = Replay(config_b, store, workers=2, progress=False).run(
        ReplayRange(config_b.kafka.topic("segments"), from_offset=0))
    assert (summary.segments, summary.frames, summary.dead_letters, summary.chunks_outside) == (10, 20, {}, 0)
    assert summary.records > summary.segments  # chunked segments were reassembled
    assert summary.tokens_kept == kept_b and summary.stream_seconds == pytest.approx(20.0)

    after = memory(store)
    assert_same_memory(after, expected)  # same frames, kept masks and embeddings as the fresh ingest
    assert min(v[0] for v in after.values()) > max(v[0] for v in before.values())  # every frame was replaced
    assert not store.tier.r.keys(f"ll:{{{TENANT}}}:frame:*/9999")  # nothing else crept in
    info = store.tier.stream_info(TENANT, "cam")
    assert (info.frames, info.segments) == (20, 10)
    for reopened in (store, MemoryStore(store.tier.r, config_b.memory)):  # live index, and rebuilt from Redis
        stats = reopened.stats()
        # The 20 frames plus the event segments closed at the sample's boundaries, as in the fresh ingest.
        assert stats["frames"] == stats["indexed"] == fresh_b.stats()["indexed"] > 20
        key, (_, embedding, *_rest) = sorted(after.items())[7]
        hit = reopened.search(TENANT, embedding, k=1)[0]
        assert hit.frame_key == key and hit.score == pytest.approx(1.0, abs=1e-5)

    again = Replay(config_b, store, workers=1, progress=False).run(
        ReplayRange(config_b.kafka.topic("segments"), from_offset=0))
    assert again.segments == 10
    assert_same_memory(memory(store), expected)  # a second replay is a no-op in content


def test_replay_bounds_by_time_and_offset_and_dead_letters_bad_records(tmp_path, kafka_broker, redis_server,
                                                                      tiny_models, video):
    config = make_config(tmp_path, kafka_broker, tiny_models, THRESHOLD_B, f"t{uuid.uuid4().hex[:10]}.")
    config = config.model_copy(update={"kafka": config.kafka.model_copy(update={"partitions": 1})})
    topic = config.kafka.topic("segments")
    publish(config, video, "early")
    time.sleep(1.1)  # record timestamps are milliseconds: a clear gap between the two streams
    middle = datetime.now(UTC)
    time.sleep(0.1)
    ensure_topics(config.kafka)
    producer = make_producer(config.kafka)
    producer.send(topic, key=b"late", value=b"\x00not a livelens record").get(timeout=30)
    media = next(iter_segments(str(video)))
    cut = media.payload[: len(media.payload) // 4 // 188 * 188]  # a truncated segment, on a TS packet boundary
    header = segment_header(media, stream_id="broken", tenant_id=TENANT, start=START).model_copy(
        update={"payload_bytes": len(cut)})
    value, headers = messages.segment_record(header, cut)
    producer.send(topic, key=b"broken", value=value, headers=headers).get(timeout=30)
    producer.close()
    publish(config, video, "late")

    store = store_for(redis_server, 0, config)
    summary = Replay(config, store, progress=False).run(ReplayRange(topic, from_time=middle))
    streams = {s.stream_id: s for s in store.streams(TENANT)}
    assert set(streams) == {"late"} and streams["late"].segments == 10  # nothing of "early", all of "late"
    assert summary.dead_letters == {"truncated_segment": 1}
    letters = dead_letters(config, expected=2)
    assert sorted(d.code for d in letters) == ["malformed_message", "truncated_segment"]
    assert all(d.source_topic == topic and d.reason.startswith("replay: ") for d in letters)
    (start, stop), = summary.bounds.values()
    assert stop > start > 0

    # An offset range: records [0, 3) are "early"'s first; a segment begun there is read to its last chunk.
    offsets = store_for(redis_server, 1, config)
    summary = Replay(config, offsets, progress=False).run(ReplayRange(topic, from_offset=0, to_offset=3))
    assert summary.bounds == {0: (0, 3)}
    held = {s.stream_id: s.segments for s in offsets.streams(TENANT)}
    assert held == {"early": summary.segments} and 1 <= summary.segments <= 3


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(), "exactly one start"),
    (dict(from_offset=0, from_time=START), "exactly one start"),
    (dict(from_offset=0, to_offset=5, to_time=START), "at most one end"),
    (dict(from_time=datetime(2026, 3, 1)), "timezone-aware"),
    (dict(from_offset=-1), ">= 0"),
])
def test_range_is_checked(kwargs, message):
    with pytest.raises(ReplayError, match=message):
        ReplayRange("t", **kwargs)


def test_unknown_partition_is_refused(tmp_path, kafka_broker, redis_server, tiny_models):
    config = make_config(tmp_path, kafka_broker, tiny_models, THRESHOLD_B, f"t{uuid.uuid4().hex[:10]}.")
    ensure_topics(config.kafka)
    store = store_for(redis_server, 0, config)
    with pytest.raises(ReplayError, match=r"no partitions \[7\]"):
        Replay(config, store, progress=False).run(ReplayRange(config.kafka.topic("segments"), from_offset=0,
                                                              partitions=(7,)))
    assert not redis.Redis.from_url(redis_server.address).keys(keys.frame(TENANT, "*"))


def test_the_replay_command(tmp_path, kafka_broker, redis_server, tiny_models, video):
    config = make_config(tmp_path, kafka_broker, tiny_models, THRESHOLD_B, f"t{uuid.uuid4().hex[:10]}.")
    publish(config, video, "cam")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "LIVELENS_DATA_DIR": str(tmp_path / "data"), "LIVELENS_KAFKA_BOOTSTRAP": kafka_broker.address,
        "LIVELENS_KAFKA__TOPIC_PREFIX": config.kafka.topic_prefix, "LIVELENS_REDIS_URL": redis_server.address,
        "LIVELENS_ENCODE__MODEL": str(tiny_models["clip"]), "LIVELENS_OCR__ENABLED": "false"}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "replay", "--from-offset", "0", "--workers", "1"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ReplaySummary" in done.stdout and "segments=10" in done.stdout
    stored = MemoryStore(redis.Redis.from_url(redis_server.address), config.memory)
    assert [(s.stream_id, s.segments, s.frames) for s in stored.streams(TENANT)] == [("cam", 10, 20)]
