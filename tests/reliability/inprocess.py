"""An ingest backend that runs in the test's process, for testing the source without Ray.

It stands in for `pipelines.ray.sources.RayIngest` the way the `IngestBackend` protocol allows: each segment is
"written" once per id (idempotent, like memory), a segment one of whose predecessors (``after``) failed for any
reason but bad input fails with PredecessorFailed (as the memory actor's check does), and a test decides which
attempts fail and how.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from operators.frames import SegmentInfo, StageError
from pipelines.failures import PredecessorFailed


@dataclass(eq=False)
class _Handle:
    info: SegmentInfo
    value: Any = None
    error: BaseException | None = None
    ready_at: float = 0.0


class InProcessDag:
    def __init__(self, fail: Callable[[SegmentInfo, int], BaseException | None] = lambda info, attempt: None,
                 hold_s: Callable[[SegmentInfo], float] = lambda info: 0.0):
        """``fail(info, attempt)``: the error of that attempt, or None; ``hold_s(info)``: how long the segment
        stays in flight before its result is ready."""
        self.fail = fail
        self.hold_s = hold_s
        self.attempts: Counter = Counter()
        self.written: dict[str, list[int]] = {}  # stream -> seqs in the order they were stored
        self._lock = threading.Lock()

    def submit(self, info: SegmentInfo, payload: bytes, *, after: Sequence[_Handle] = ()) -> _Handle:
        handle = _Handle(info, ready_at=time.monotonic() + self.hold_s(info))
        with self._lock:
            failed = [a for a in after if a.error is not None and not isinstance(a.error, StageError)]
            if failed:
                handle.error = PredecessorFailed(detail=f"{info.stream_id}/{failed[0].info.seq} failed")
                return handle
            self.attempts[(info.stream_id, info.seq)] += 1  # tries that ran (not those refused for order)
            handle.error = self.fail(info, self.attempts[(info.stream_id, info.seq)])
            if handle.error is None:
                seqs = self.written.setdefault(info.stream_id, [])
                handle.value = None if info.seq in seqs else info.seq  # None: a replay, as memory answers
                if handle.value is not None:
                    seqs.append(info.seq)
        return handle

    def wait(self, handles: list[_Handle], timeout_s: float) -> list[_Handle]:
        deadline = time.monotonic() + timeout_s
        while True:
            ready = [h for h in handles if h.ready_at <= time.monotonic()]
            if ready or time.monotonic() >= deadline:
                return ready
            time.sleep(0.01)

    def result(self, handle: _Handle) -> Any:
        if handle.error is not None:
            raise handle.error
        return handle.value
