"""Per-stream state that ends: a live actor forgets the state of streams that went quiet.

The compressor, the boundary detector, the frame skipper, the ViT token cache (about 14.5 MB a stream), the
encoder's stats and the text reader keep state per (tenant, stream). Without an end, an actor's memory grows
with every stream it has ever seen. `StreamStates` bounds it: a stream not seen for `pipeline.stream_idle_s`
is forgotten, and past `pipeline.max_streams_per_actor` streams the least recently seen goes first. A stream
that comes back starts its state afresh: its next frame is kept whole and encoded in full, and its event
boundaries restart (a quality blip at the return, not a loss: memory still stores every frame).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

StreamKey = tuple[str, str]


class StreamStates:
    def __init__(self, forget: Callable[[str, str], None], *, idle_s: float, max_streams: int,
                 clock: Callable[[], float] = time.monotonic):
        """``forget(tenant_id, stream_id)`` drops the stream's state from every step the actor holds."""
        self._forget = forget
        self.idle_s = idle_s
        self.max_streams = max_streams
        self._clock = clock
        self._last_seen: OrderedDict[StreamKey, float] = OrderedDict()  # least recently seen first
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._last_seen)

    def seen(self, tenant_id: str, stream_id: str) -> None:
        """The stream has a batch now; streams idle too long, or beyond the limit, are forgotten."""
        now = self._clock()
        key = (tenant_id, stream_id)
        self._last_seen[key] = now
        self._last_seen.move_to_end(key)
        while self._last_seen:
            oldest, at = next(iter(self._last_seen.items()))
            if now - at <= self.idle_s and len(self._last_seen) <= self.max_streams:
                break
            del self._last_seen[oldest]
            self._forget(*oldest)
            self.evicted += 1

    def ended(self, tenant_id: str, stream_id: str) -> None:
        """The stream ended (deleted): forget it now."""
        if self._last_seen.pop((tenant_id, stream_id), None) is not None:
            self._forget(tenant_id, stream_id)
            self.evicted += 1
