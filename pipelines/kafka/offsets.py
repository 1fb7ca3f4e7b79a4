"""Which Kafka offsets are safe to commit.

A source has many records in flight at once and they finish out of order. The
offset committed for a partition must never pass a record whose output is not
yet durable, or a crash would skip it: so the commit point is the lowest offset
still pending (or one past the highest seen, when nothing is pending).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka.structs import TopicPartition


@dataclass
class _PartitionState:
    pending: set[int] = field(default_factory=set)
    highest_seen: int = -1
    committed: int | None = None


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionState] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        state = self._parts.setdefault(tp, _PartitionState())
        state.pending.add(offset)
        state.highest_seen = max(state.highest_seen, offset)

    def done(self, tp: TopicPartition, offsets: list[int] | int) -> None:
        state = self._parts.get(tp)
        if state is None:
            return  # partition was revoked meanwhile; its new owner re-reads the record
        for offset in [offsets] if isinstance(offsets, int) else offsets:
            state.pending.discard(offset)

    def pending_count(self, tp: TopicPartition | None = None) -> int:
        if tp is not None:
            return len(self._parts[tp].pending) if tp in self._parts else 0
        return sum(len(s.pending) for s in self._parts.values())

    def to_commit(self) -> dict[TopicPartition, int]:
        """Partitions whose commit point moved since the last `mark_committed`, with the offset to commit
        (Kafka's convention: the next offset to read)."""
        out = {}
        for tp, state in self._parts.items():
            point = self.commit_point(tp)
            if point is not None and point != state.committed:
                out[tp] = point
        return out

    def commit_point(self, tp: TopicPartition) -> int | None:
        """The offset a commit of `tp` would carry now; None while no record of it was seen."""
        state = self._parts.get(tp)
        if state is None or state.highest_seen < 0:
            return None
        return min(state.pending) if state.pending else state.highest_seen + 1

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if tp in self._parts:
                self._parts[tp].committed = offset

    def forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.pop(tp, None)

    def partitions(self) -> list[TopicPartition]:
        return list(self._parts)
