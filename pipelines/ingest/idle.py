"""Per-stream state that ends, and comes back: a live actor evicts the state of streams that went quiet.

The compressor, the boundary detector, the frame skipper, the ViT token cache (about 14.5 MB a stream), the
encoder's stats, the text reader and the caption reader keep state per (tenant, stream). Without an end, an
actor's memory grows with every stream it has ever seen. `StreamStates` bounds it: a stream not seen for
`pipeline.stream_idle_s` is evicted, and past `pipeline.max_streams_per_actor` streams the least recently seen
goes first.

Evicting keeps the stream's state (the step's `snapshot_stream`) in Redis for `pipeline.evicted_state_ttl_s`
(`EvictedStates`), and the next batch of the stream restores it (`restore_stream`) before the step sees the
batch: the compressor compares the returning frame with the stream's last one instead of keeping it whole, the
current event goes on, the frame skipper and the text reader compare with what they last saw. The ViT token
cache and the encoder's stats are not kept (the cache is only a cache: the first frame back is encoded in full).
A stream away longer than the TTL, or one whose kept state no longer fits the stage's configuration (a drop mode
or frame skip switched since), starts afresh: its next frame is kept whole and its event boundaries restart (a
quality blip at the return, never a loss: memory stores every frame either way).

Redis trouble while keeping or restoring raises (`redis.ConnectionError` and the like), so the call fails as
"dependency away" and the segment waits and is retried; the eviction is then tried again, nothing is forgotten
before its state is kept.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from operators.state import StreamKey, StreamStateful
from pipelines.ingest.snapshots import EvictedStates

log = logging.getLogger(__name__)


class StreamStates:
    def __init__(self, step: StreamStateful, *, idle_s: float, max_streams: int, kept: EvictedStates | None = None,
                 clock: Callable[[], float] = time.monotonic):
        """``step`` holds the actor's per-stream state; ``kept``: where evicted state waits for its stream's
        return (None: evicted streams start afresh)."""
        self._step = step
        self._kept = kept
        self.idle_s = idle_s
        self.max_streams = max_streams
        self._clock = clock
        self._last_seen: OrderedDict[StreamKey, float] = OrderedDict()  # least recently seen first
        self.evicted = 0
        self.restored = 0

    def __len__(self) -> int:
        return len(self._last_seen)

    def seen(self, tenant_id: str, stream_id: str) -> None:
        """The stream has a batch now (call before the step sees it): a stream new to this actor gets back the
        state it had when evicted; streams idle too long, or beyond the limit, are evicted."""
        now = self._clock()
        key = (tenant_id, stream_id)
        if key not in self._last_seen:
            self._restore(key)
        self._last_seen[key] = now
        self._last_seen.move_to_end(key)
        while self._last_seen:
            oldest, at = next(iter(self._last_seen.items()))
            if now - at <= self.idle_s and len(self._last_seen) <= self.max_streams:
                break
            self._evict(oldest)

    def ended(self, tenant_id: str, stream_id: str) -> None:
        """The stream ended (deleted): forget it now, and whatever was kept of it."""
        key = (tenant_id, stream_id)
        if self._kept is not None:
            self._kept.drop(*key)
        if self._last_seen.pop(key, None) is not None:
            self._step.forget(*key)
            self.evicted += 1

    def _evict(self, key: StreamKey) -> None:
        if self._kept is not None:
            state = self._step.snapshot_stream(*key)
            if state is not None:
                self._kept.put(*key, state)  # first: a Redis failure raises with the state still held
        self._step.forget(*key)
        del self._last_seen[key]
        self.evicted += 1

    def _restore(self, key: StreamKey) -> None:
        state = self._kept.take(*key) if self._kept is not None else None
        if state is None:
            return
        try:
            self._step.restore_stream(*key, state)
        except (ValueError, KeyError, TypeError) as exc:  # kept by another configuration (or version) of the step
            log.warning("stream %s/%s: its kept state does not fit this stage (%s); it starts afresh", *key, exc)
            self._step.forget(*key)
            return
        self.restored += 1
