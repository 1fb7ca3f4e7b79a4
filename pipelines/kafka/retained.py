"""Every whole segment a segments topic still retains, read start to end without a consumer group.

For the jobs that rebuild from the topic rather than follow it: the clip ledger of segments stored before it
existed (`pipelines.clips.ClipKeeper.keep_retained`), and the tools and benchmarks that check what a publisher
wrote. It reads up to the end offsets it saw when it started, so it finishes while publishers keep writing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import NamedTuple

from kafka.structs import TopicPartition

from contracts import messages
from pipelines.config import KafkaConfig
from pipelines.kafka.client import make_reader
from pipelines.kafka.publish import SegmentAssembler

log = logging.getLogger(__name__)


class RetainedSegment(NamedTuple):
    tp: TopicPartition
    segment: messages.VideoSegment
    payload: bytes
    offsets: list[int]


def retained_segments(config: KafkaConfig, topic: str) -> Iterator[RetainedSegment]:
    """Whole segments in each partition's offset order, chunks reassembled. Skipped, with a log line: records
    that are not segments (the source dead-letters those), and a segment whose first chunks the topic no longer
    retains (it cannot be whole)."""
    reader = make_reader(config)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
        if not tps:
            return
        reader.assign(tps)
        reader.seek_to_beginning(*tps)
        ends = reader.end_offsets(tps)
        assemblers = {tp: SegmentAssembler() for tp in tps}
        while any(reader.position(tp) < ends[tp] for tp in tps):
            for tp, records in reader.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    try:
                        segment, chunk = messages.decode(record.value, expect=messages.VideoSegment,
                                                         headers=record.headers)
                    except messages.MessageError as exc:
                        log.warning("skipping %s offset %d: not a segment (%s)", tp, record.offset, exc)
                        continue
                    whole = assemblers[tp].add(segment, chunk, record.offset)
                    if whole is not None:
                        yield RetainedSegment(tp, *whole)
    finally:
        reader.close()
