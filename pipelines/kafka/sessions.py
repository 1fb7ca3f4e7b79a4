"""Where a new publishing session of a stream starts on the stream's timeline.

A publisher numbers its segments and counts stream time from 0 each time it starts
(`livelens publish` run again, an encoder restarted). Its session id keeps those segments
apart from an earlier session's in memory; this keeps their times apart too: the new
session starts at the stream time of its own first frame's wall clock, measured from the
stream's start as memory recorded it, and always after the last frame memory holds, so
the short tier (ordered by stream time) and answers' `t` follow the stream, not the session.
"""

from __future__ import annotations

import logging
import time

from memory_store.redis_tier import RedisTier
from pipelines.config import LivelensConfig
from pipelines.redis_io import redis_client

log = logging.getLogger(__name__)


def continuing_offset_s(config: LivelensConfig, tenant_id: str, stream_id: str, now: float | None = None) -> float:
    """Stream seconds at which a session starting at ``now`` (epoch seconds) begins: 0 for a new stream."""
    if not config.redis.url:
        log.warning("no Redis URL, so memory cannot say where stream %s is: its stream time starts at 0 again "
                    "(set LIVELENS_REDIS_URL or run `livelens up`)", stream_id)
        return 0.0
    info = RedisTier(redis_client(config.redis), config.memory).stream_info(tenant_id, stream_id)
    if info is None:
        return 0.0
    stream_zero = info.first_wallclock - info.first_media_s  # the wall clock at stream time 0
    now = time.time() if now is None else now
    return max(now - stream_zero, info.last_media_s + 1.0 / config.decode.sample_fps)
