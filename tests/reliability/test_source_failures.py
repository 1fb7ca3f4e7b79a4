"""The source's answers to failure, on a real broker and redis-server, with an in-process DAG that fails on
demand: infrastructure away waits (never a dead letter), retries keep each stream's order, crashes of our
code get a few tries, and the loop itself survives what it did not expect."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from operators.frames import StageError
from pipelines.config import LivelensConfig
from pipelines.ingest.source import KafkaSegmentSource
from tests.reliability.inprocess import InProcessDag
from tests.reliability.records import publish_numbered, read_dead_letters


def _config(tmp_path, kafka_broker, redis_server, **pipeline) -> LivelensConfig:
    tag = uuid.uuid4().hex[:8]
    return LivelensConfig(
        data_dir=tmp_path / "data",
        kafka=dict(bootstrap=kafka_broker.address, topic_prefix=f"f{tag}.", partitions=2, ingest_group=f"ingest-{tag}"),
        redis=dict(url=redis_server.address),
        pipeline=dict(retry_initial_s=0.05, retry_max_s=0.2, **pipeline))


@contextmanager
def running(source: KafkaSegmentSource) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(timeout=60)


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_an_outage_longer_than_every_retry_budget_loses_nothing_and_keeps_each_stream_in_order(
        tmp_path, kafka_broker, redis_server):
    """Segment 2 of stream "a" meets Redis away for ten tries (more than segment_attempts); segments behind it
    were already in flight. Today's source dead-lettered it after three tries and stored 3.. before it."""
    config = _config(tmp_path, kafka_broker, redis_server, segment_attempts=3, max_inflight_segments=8)
    dag = InProcessDag(lambda info, attempt: redis.exceptions.ConnectionError("Redis is away")
                       if (info.stream_id, info.seq) == ("a", 2) and attempt <= 10 else None)
    publish_numbered(config, "a", 8)
    publish_numbered(config, "b", 8)
    source = KafkaSegmentSource(config, dag)
    with running(source):
        wait_until(lambda: len(dag.written.get("a", [])) == 8 and len(dag.written.get("b", [])) == 8, 30,
                   "both streams stored")
    assert dag.written == {"a": list(range(8)), "b": list(range(8))}
    assert dag.attempts[("a", 2)] == 11
    assert source.stats.dead_letters == {}
    assert read_dead_letters(config, timeout_s=1) == []


def test_a_crash_of_our_code_is_tried_a_few_times_then_dead_lettered_and_the_stream_flows_on(
        tmp_path, kafka_broker, redis_server):
    config = _config(tmp_path, kafka_broker, redis_server, segment_attempts=3)
    dag = InProcessDag(lambda info, attempt: TypeError("a bug") if info.seq == 3 else
                       StageError("bad_payload", "not a video", stage="decode") if info.seq == 5 else None)
    publish_numbered(config, "a", 8)
    source = KafkaSegmentSource(config, dag)
    with running(source):
        wait_until(lambda: len(dag.written.get("a", [])) == 6, 30, "the stream around its two bad segments")
        wait_until(lambda: sum(source.stats.dead_letters.values()) == 2, 10, "two dead letters")
    assert dag.written["a"] == [0, 1, 2, 4, 6, 7]
    assert dag.attempts[("a", 3)] == 3 and dag.attempts[("a", 5)] == 1
    letters = sorted(read_dead_letters(config), key=lambda d: d.code)
    assert [(d.code, d.attempts) for d in letters] == [("bad_payload", 1), ("pipeline_error", 3)]


class _FlakyStartSource(KafkaSegmentSource):
    """Its first connection fails the way `ensure_topics` fails after 30 s without a broker (a RuntimeError),
    then, mid-stream, one step raises an error nobody expected."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.connects = 0
        self.crashed = False

    def _connect(self) -> None:
        self.connects += 1
        if self.connects == 1:
            raise RuntimeError("could not reach Kafka to create topics")
        super()._connect()

    def _step(self) -> None:
        if self.stats.segments_stored >= 2 and not self.crashed:
            self.crashed = True
            raise KeyError("an unexpected bug in the loop")
        super()._step()


def test_the_source_loop_survives_errors_it_did_not_expect(tmp_path, kafka_broker, redis_server):
    """Today's loop caught only KafkaError: its thread died on the first of these, and ingest stopped for good."""
    config = _config(tmp_path, kafka_broker, redis_server)
    dag = InProcessDag()
    publish_numbered(config, "a", 2)
    source = _FlakyStartSource(config, dag)
    with running(source) as thread:
        wait_until(lambda: source.crashed, 30, "the loop's crash mid-stream")
        publish_numbered(config, "a", 4, start=2)
        wait_until(lambda: len(dag.written.get("a", [])) == 6, 30, "the stream after two loop failures")
        assert thread.is_alive()
    assert dag.written["a"] == list(range(6))
    assert source.connects >= 3 and source.stats.loop_crashes == 2


def test_time_paused_for_backpressure_does_not_count_as_a_publisher_gone_quiet(tmp_path, kafka_broker,
                                                                                redis_server):
    """Segment 1's first chunk is read, then the DAG holds segment 0 for three times the idle limit, so the
    source keeps the partition paused; the rest of segment 1 arrives meanwhile. Today's source counted the
    pause as silence and dead-lettered segment 1 as incomplete."""
    config = _config(tmp_path, kafka_broker, redis_server, max_inflight_segments=1, chunk_idle_s=1.0)
    dag = InProcessDag(hold_s=lambda info: 3.0 if info.seq == 0 else 0.0)
    publish_numbered(config, "a", 1)
    publish_numbered(config, "a", 1, start=1, chunks=3, only_chunks=range(1))
    source = KafkaSegmentSource(config, dag)
    with running(source):
        wait_until(lambda: source.stats.paused, 10, "the source to pause behind segment 0")
        publish_numbered(config, "a", 1, start=1, chunks=3, only_chunks=range(1, 3))
        wait_until(lambda: len(dag.written.get("a", [])) == 2, 30, "both segments")
    assert source.stats.dead_letters == {}


def test_a_replay_of_segments_whose_chain_finished_is_recognised_before_the_dag(tmp_path, kafka_broker,
                                                                                 redis_server):
    """The records are read again from the start (a source whose group committed nothing, as after a crash
    before its commit): today's source sent every one through decode and encode again."""
    config = _config(tmp_path, kafka_broker, redis_server)
    publish_numbered(config, "a", 4)
    first = InProcessDag()
    source = KafkaSegmentSource(config, first)
    with running(source):
        wait_until(lambda: len(first.written.get("a", [])) == 4, 30, "the stream")
    again = InProcessDag()
    replaying = KafkaSegmentSource(config.model_copy(update={"kafka": config.kafka.model_copy(
        update={"ingest_group": config.kafka.ingest_group + "-again"})}), again)
    with running(replaying):
        wait_until(lambda: replaying.stats.segments_replayed == 4, 30, "the replays recognised")
    assert sum(again.attempts.values()) == 0
