"""Dead letters: a record that could not be processed, and why, on the dead-letters topic.

The one helper of the three consumers that write them (the ingest source, replay and the query consumer). A
dead letter stands in for what its record would have produced, so the record's offset may be committed only
once the broker has acknowledged the letter: wait on `send` (``wait_s``), or flush, before committing.
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.structs import TopicPartition

from contracts import messages
from pipelines import metrics
from pipelines.config import KafkaConfig

# The wire contract's bound on DeadLetter.reason.
MAX_REASON_CHARS = 4096


def dead_letter(tp: TopicPartition, offsets: Sequence[int], *, stage: str, code: str, reason: str,
                record_bytes: int, segment: messages.VideoSegment | None = None, stream_id: str | None = None,
                tenant_id: str | None = None, attempts: int = 1) -> messages.DeadLetter:
    """The letter for the records at ``offsets`` (one segment's chunks, or one record); the segment's header,
    when it could be read, names the stream and tenant unless they are given."""
    return messages.DeadLetter(
        tenant_id=tenant_id or (segment.tenant_id if segment else "unknown"),
        stream_id=stream_id or (segment.stream_id if segment else ""),
        source_topic=tp.topic, partition=tp.partition, offset=min(offsets), stage=stage, code=code,
        reason=reason[:MAX_REASON_CHARS], record_bytes=record_bytes, attempts=attempts,
    )


def send(producer: KafkaProducer, kafka: KafkaConfig, letter: messages.DeadLetter, *,
         wait_s: float | None = None):
    """Send the letter, keyed by its stream; with ``wait_s``, return only once the broker acknowledged it.
    Returns the send's future (check it before committing the letter's offsets when not waited for)."""
    future = producer.send(kafka.topic("dead_letters"), key=letter.stream_id.encode(), value=messages.encode(letter))
    if wait_s is not None:
        future.get(timeout=wait_s)
    metrics.dead_letter(letter.stage, letter.code, letter.tenant_id)
    return future
