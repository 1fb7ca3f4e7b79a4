"""Per-stream lanes: the segments a source holds, in stream order, so retries never reorder a stream.

Each stream's segments queue in its lane in the order they were read. A segment is in flight (it has a
handle in the DAG) or waiting (not yet submitted, or failed and waiting for its retry). A waiting segment
holds back every segment behind it in its lane: they are submitted only after it, and each is submitted
with the handles of those in flight before it (``after``), so the backend can refuse to store a segment
whose predecessors have not been stored (`pipelines.failures.PredecessorFailed`). All of them, not just
the last: a predecessor refused as bad input fails at once, before the ones ahead of it are written, and
must not open the way past them. Other streams flow on.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kafka.structs import TopicPartition

from contracts import messages


@dataclass(eq=False)
class Held:
    """One whole segment the source holds until its write (or dead letter) is durable."""

    tp: TopicPartition
    offsets: list[int]
    segment: messages.VideoSegment
    payload: bytes
    attempt: int = 1  # crashes of our code on it (bounded by pipeline.segment_attempts)
    waits: int = 0  # infrastructure failures it waited out (unbounded)
    handle: Any = None  # its handle in the DAG while in flight
    due_at: float = 0.0  # monotonic time from which it may be (re)submitted
    waiting_for: str = ""  # the dependency it waits for, for logs and metrics

    @property
    def stream(self) -> tuple[str, str]:
        return self.segment.tenant_id, self.segment.stream_id


class StreamLanes:
    def __init__(self) -> None:
        self._lanes: dict[tuple[str, str], deque[Held]] = {}

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def add(self, item: Held) -> None:
        self._lanes.setdefault(item.stream, deque()).append(item)

    def submit_ready(self, now: float, submit: Callable[[Held, list], Any]) -> int:
        """Submit, lane by lane in order, the waiting segments that are due, up to the first that is not:
        ``submit(item, after)`` returns its handle; ``after`` holds the handles of the segments in flight
        before it in its lane, oldest first (empty when there are none). Returns how many were submitted."""
        submitted = 0
        for lane in self._lanes.values():
            after: list = []
            for item in lane:
                if item.handle is None:
                    if item.due_at > now:
                        break  # held back: nothing behind it may overtake it
                    item.handle = submit(item, list(after))
                    submitted += 1
                after.append(item.handle)
        return submitted

    def wait(self, item: Held, due_at: float, dependency: str) -> None:
        """``item`` failed for want of ``dependency``: it waits until ``due_at``, and its lane behind it too."""
        item.handle, item.due_at, item.waiting_for = None, due_at, dependency

    def finished(self, item: Held) -> None:
        lane = self._lanes.get(item.stream)
        if lane is None:
            return
        try:
            lane.remove(item)
        except ValueError:
            return
        if not lane:
            del self._lanes[item.stream]

    def in_flight(self) -> dict[Any, Held]:
        return {item.handle: item for lane in self._lanes.values() for item in lane if item.handle is not None}

    def waiting_by_dependency(self) -> Counter:
        """Failed segments waiting for a retry, by what they wait for (held-back new segments not counted)."""
        return Counter(item.waiting_for for lane in self._lanes.values() for item in lane
                       if item.handle is None and item.waiting_for)

    def drop_partitions(self, partitions: Iterable[TopicPartition]) -> list[Held]:
        """Forget the segments of revoked partitions (their new owner replays them); returns them."""
        gone = set(partitions)
        dropped = []
        for key in list(self._lanes):
            lane = self._lanes[key]
            dropped += [item for item in lane if item.tp in gone]
            kept = deque(item for item in lane if item.tp not in gone)
            if kept:
                self._lanes[key] = kept
            else:
                del self._lanes[key]
        return dropped

    def clear(self) -> None:
        self._lanes.clear()
