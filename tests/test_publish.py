"""Publishing to a real broker, and reassembling chunked segments on the consumer side."""

from __future__ import annotations

import hashlib
import signal
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from contracts import messages
from contracts.messages import VideoSegment
from deploy.processes import ProcessRecord, start_broker
from pipelines.cli.sample_video import write_sample_video
from pipelines.config import KafkaConfig
from pipelines.kafka.client import make_producer
from pipelines.kafka.publish import (
    PendingBytesExceeded,
    PublishError,
    SegmentAssembler,
    SegmentPublisher,
)
from pipelines.segmenter import iter_segments


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sample") / "news.mp4"
    write_sample_video(path, duration_s=20.0)
    return path


def config_for(broker: ProcessRecord, **overrides: object) -> KafkaConfig:
    """Each test gets its own topics."""
    return KafkaConfig(bootstrap=broker.address, topic_prefix=f"t{uuid.uuid4().hex[:12]}.", partitions=4, **overrides)


def consume(config: KafkaConfig, expected_records: int, timeout_s: float = 20.0) -> list:
    """Every record of the segments topic, read from the start of each partition without a group."""
    topic = config.topic("segments")
    consumer = KafkaConsumer(bootstrap_servers=config.bootstrap, enable_auto_commit=False,
                             max_partition_fetch_bytes=config.max_message_bytes * 4)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected_records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records += batch
        return records
    finally:
        consumer.close()


@pytest.mark.parametrize(("max_message_bytes", "chunked"), [(900_000, False), (50_000, True)])
def test_fast_publish_round_trips(max_message_bytes: int, chunked: bool, kafka_broker: ProcessRecord,
                                  sample: Path) -> None:
    config = config_for(kafka_broker, max_message_bytes=max_message_bytes)
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    expected = list(iter_segments(str(sample)))
    announced: list[VideoSegment] = []
    with SegmentPublisher(kafka=config) as publisher:
        stats = {
            stream: publisher.publish(str(sample), stream_id=stream, tenant_id="news", pace="fast",
                                      wallclock_start=start, on_segment=announced.append)
            for stream in ("cam-a", "cam-b")
        }
    records = consume(config, sum(s.records for s in stats.values()))

    assert sum(s.records for s in stats.values()) == len(records)
    assert sum(s.bytes for s in stats.values()) == sum(
        len(r.value) + sum(len(k) + len(v) for k, v in r.headers) for r in records)
    assert (stats["cam-a"].chunked_segments > 0) == chunked
    assert all(len(r.value) <= max_message_bytes for r in records)
    assert [s.seq for s in announced] == [s.seq for s in expected] * 2
    assembled: dict[str, list[tuple[VideoSegment, bytes]]] = {"cam-a": [], "cam-b": []}
    assemblers: dict[int, SegmentAssembler] = {}
    for record in records:
        header, chunk = messages.decode(record.value, expect=VideoSegment, headers=record.headers)
        assert record.key == header.stream_id.encode()
        done = assemblers.setdefault(record.partition, SegmentAssembler()).add(header, chunk, record.offset)
        if done is not None:
            assembled[header.stream_id].append(done[:2])
    assert all(not a.pending_offsets() and not a.expire() for a in assemblers.values())

    for stream, stat in stats.items():
        mine = [r for r in records if r.key == stream.encode()]
        assert len({r.partition for r in mine}) == 1  # one partition per stream, so one order
        assert [r.offset for r in mine] == sorted(r.offset for r in mine)
        assert (stat.segments, stat.records) == (len(expected), len(mine))
        assert stat.media_seconds == pytest.approx(sum(s.duration_s for s in expected))
        got = assembled[stream]
        assert [h.seq for h, _ in got] == list(range(len(expected)))
        assert [p for _, p in got] == [s.payload for s in expected]  # byte-identical to the segmenter's output
        for (header, payload), media in zip(got, expected):
            assert (header.tenant_id, header.codec, header.container, header.width, header.height) == (
                "news", media.codec, "mpegts", media.width, media.height)
            assert header.payload_bytes == len(payload)
            assert header.media_start_s == media.media_start_s and header.duration_s == media.duration_s
            assert header.wallclock_start == start + timedelta(seconds=media.media_start_s)


def test_realtime_pace_waits_for_each_segment_to_be_complete(kafka_broker: ProcessRecord, tmp_path: Path) -> None:
    clip = tmp_path / "three_seconds.mp4"
    write_sample_video(clip, duration_s=3.0)
    config = config_for(kafka_broker)
    with SegmentPublisher(kafka=config) as publisher:
        # Topics exist before the clock starts, so their creation does not eat into the pacing.
        publisher.publish(str(clip), stream_id="warmup", pace="fast")
        sent_at: list[tuple[float, VideoSegment]] = []
        start = datetime.now(UTC)
        stats = publisher.publish(str(clip), stream_id="live", pace="realtime", target_s=1.0, wallclock_start=start,
                                  on_segment=lambda s: sent_at.append(((datetime.now(UTC) - start).total_seconds(), s)))
        # By this test's clock, to which the pacing is anchored: stats.wall_seconds starts after the publisher's
        # topic check, and read 2.5 s for 3 s of pacing once on a loaded CI machine.
        done = (datetime.now(UTC) - start).total_seconds()

    assert stats.segments == 3
    assert 2.99 <= done < 3.8
    for elapsed, segment in sent_at:
        assert elapsed >= segment.media_start_s + segment.duration_s - 0.01  # never before it is complete


def test_stop_ends_publishing_between_segments(kafka_broker: ProcessRecord, sample: Path) -> None:
    stop = threading.Event()
    with SegmentPublisher(kafka=config_for(kafka_broker)) as publisher:
        stats = publisher.publish(str(sample), stream_id="cam", pace="realtime", loop=True, stop=stop,
                                  wallclock_start=datetime.now(UTC) - timedelta(seconds=4),
                                  on_segment=lambda s: stop.set() if s.seq == 1 else None)
    assert stats.segments == 2


def test_failed_sends_raise(tmp_path: Path, sample: Path) -> None:
    broker = start_broker(tmp_path / "broker")
    try:
        config = KafkaConfig(bootstrap=broker.address, topic_prefix="doomed.", partitions=1)
        # Not idempotent: kafka-python never expires an idempotent producer's batch that was on the
        # wire when the connection dropped (it must keep its sequence), so the test would wait out
        # the publisher's flush timeout; a plain producer expires it after delivery_timeout_ms.
        producer = make_producer(config, enable_idempotence=False, delivery_timeout_ms=1500, request_timeout_ms=1000,
                                 max_block_ms=1500)
        publisher = SegmentPublisher(kafka=config, producer=producer)

        def kill_broker(segment: VideoSegment) -> None:
            if segment.seq == 0:
                producer.flush()
                broker.stop(sig=signal.SIGKILL)  # a crash: nothing after this is acknowledged

        with pytest.raises(PublishError, match="not written|not acknowledged|cannot send"):
            publisher.publish(str(sample), stream_id="cam", pace="fast", on_segment=kill_broker)
    finally:
        broker.stop()
        producer.close(timeout=1)


# --- SegmentAssembler ------------------------------------------------------------------------


def records_of(stream: str, seq: int, chunks: int, tenant: str = "t") -> list[tuple[VideoSegment, bytes]]:
    """A segment of ``chunks`` records with a recognisable payload."""
    payload = b"".join(hashlib.sha256(f"{stream}/{seq}/{i}".encode()).digest() for i in range(chunks * 200))
    room = len(payload) // chunks + 1
    segment = VideoSegment(tenant_id=tenant, stream_id=stream, seq=seq, codec="h264",
                           wallclock_start=datetime(2024, 1, 1, tzinfo=UTC), media_start_s=2.0 * seq,
                           duration_s=2.0, width=640, height=360, payload_bytes=len(payload))
    return list(messages.chunk_segment(segment, payload, room + messages.MAX_HEADER_BYTES // 64))


def _corrupt(record: tuple[VideoSegment, bytes]) -> tuple[VideoSegment, bytes]:
    return record[0], bytes(b ^ 0xFF for b in record[1])


def _resized(record: tuple[VideoSegment, bytes]) -> tuple[VideoSegment, bytes]:
    return record[0].model_copy(update={"payload_bytes": record[0].payload_bytes + 1}), record[1]


A0, A1, B0 = records_of("a", 0, 3), records_of("a", 1, 1), records_of("b", 0, 2)
PAYLOADS = {(r[0][0].stream_id, r[0][0].seq): b"".join(chunk for _, chunk in r) for r in (A0, A1, B0)}

# (records in arrival order (offset = position), segments completed as (stream, seq, offsets),
#  discards as (stream, seq, code, offsets), offsets still pending at the end)
ASSEMBLER_CASES = {
    "in order": ([*A0, *A1], [("a", 0, [0, 1, 2]), ("a", 1, [3])], [], []),
    "interleaved streams": ([A0[0], B0[0], A0[1], B0[1], A0[2]], [("b", 0, [1, 3]), ("a", 0, [0, 2, 4])], [], []),
    "missing chunk superseded": ([A0[0], A0[2], *A1], [("a", 1, [2])],
                                 [("a", 0, "incomplete_segment", [0, 1])], []),
    "duplicate chunk replayed": ([A0[0], A0[1], A0[0], A0[1], A0[2]], [("a", 0, [0, 1, 2, 3, 4])], [], []),
    "duplicate with other bytes": ([A0[0], _corrupt(A0[0]), A0[1]], [],
                                   [("a", 0, "inconsistent_chunk", [0])], [1, 2]),
    # Each disagreeing chunk ends what came before it; the last one waits for a chunk 0 that never comes.
    "chunk disagrees on size": ([A0[0], _resized(A0[1]), A0[2]], [],
                                [("a", 0, "inconsistent_chunk", [0]), ("a", 0, "inconsistent_chunk", [1])], [2]),
    "still incomplete": ([A0[0], B0[0], A0[1]], [], [], [0, 1, 2]),
}


@pytest.mark.parametrize(("arrivals", "completed", "discarded", "pending"), ASSEMBLER_CASES.values(),
                         ids=ASSEMBLER_CASES.keys())
def test_assembler(arrivals, completed, discarded, pending) -> None:
    assembler = SegmentAssembler()
    done = []
    for offset, (header, chunk) in enumerate(arrivals):
        result = assembler.add(header, chunk, offset)
        if result is not None:
            seg, payload, offsets = result
            assert payload == PAYLOADS[(seg.stream_id, seg.seq)] and seg.chunk_index == 0
            done.append((seg.stream_id, seg.seq, offsets))
    assert done == completed
    assert [(d.stream_id, d.seq, d.code, d.offsets) for d in assembler.expire()] == discarded
    assert assembler.pending_offsets() == pending
    assert assembler.expire() == []  # reported once


def test_assembler_memory_bound_raises_and_keeps_state() -> None:
    assembler = SegmentAssembler(max_pending_bytes=len(A0[0][1]) + len(A0[1][1]))
    assembler.add(*A0[0], 0)
    assembler.add(*A0[1], 1)
    with pytest.raises(PendingBytesExceeded):
        assembler.add(*B0[0], 2)
    assert assembler.pending_offsets() == [0, 1]
    # A chunk that completes its segment frees memory instead of holding more: allowed at the bound.
    assert assembler.add(*A0[2], 3)[2] == [0, 1, 3]
    assert assembler.pending_bytes == 0
    assert assembler.add(*B0[0], 2) is None and assembler.pending_offsets() == [2]


def test_assembler_expires_idle_segments() -> None:
    now = [0.0]
    assembler = SegmentAssembler(clock=lambda: now[0])
    assembler.add(*A0[0], 10)
    assembler.add(*B0[0], 11)
    now[0] = 5.0
    assembler.add(*B0[1], 12)
    now[0] = 31.0
    assert assembler.expire(max_idle_s=60) == []
    [gone] = assembler.expire(max_idle_s=30)
    assert (gone.stream_id, gone.code, gone.offsets) == ("a", "incomplete_segment", [10])
    assert assembler.pending_offsets() == [] and assembler.pending_bytes == 0
