"""Numbered segments straight onto the segments topic, and the dead letters read back: for tests of the
source that need no decodable video (the backend never decodes)."""

from __future__ import annotations

from datetime import timedelta

from kafka import KafkaConsumer, KafkaProducer

from contracts import messages
from pipelines.config import LivelensConfig

# Every chunk of a segment must carry the same header, whichever call sent it: times are fixed per seq.
_EPOCH = messages.utcnow()


def publish_numbered(config: LivelensConfig, stream: str, n: int, *, session: str = "s1", start: int = 0,
                     chunks: int = 1, only_chunks: range | None = None, tenant: str = "default") -> None:
    """Segments ``start..start+n-1`` of ``stream``, each payload naming its stream and seq; ``chunks`` > 1 cuts
    each payload into that many records (``only_chunks``: send just those)."""
    producer = KafkaProducer(bootstrap_servers=config.kafka.bootstrap)
    for seq in range(start, start + n):
        payload = f"{stream}:{seq};".encode() * 64
        size = -(-len(payload) // chunks)
        for index in only_chunks or range(chunks):
            header = messages.VideoSegment(
                tenant_id=tenant, stream_id=stream, session=session, seq=seq, codec="h264",
                wallclock_start=_EPOCH + timedelta(seconds=2.0 * seq), produced_at=_EPOCH, media_start_s=2.0 * seq, duration_s=2.0, width=64, height=64,
                payload_bytes=len(payload), chunk_index=index, chunk_count=chunks)
            value, headers = messages.segment_record(header, payload[index * size:(index + 1) * size])
            producer.send(config.kafka.topic("segments"), key=stream.encode(), value=value, headers=headers)
    producer.flush()
    producer.close()


def read_dead_letters(config: LivelensConfig, timeout_s: float = 3.0) -> list[messages.DeadLetter]:
    """Every dead letter on the topic so far (waits ``timeout_s`` for more after the last)."""
    consumer = KafkaConsumer(config.kafka.topic("dead_letters"), bootstrap_servers=config.kafka.bootstrap,
                             auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=int(timeout_s * 1000))
    letters = [messages.decode(r.value, expect=messages.DeadLetter)[0] for r in consumer]
    consumer.close()
    return letters
