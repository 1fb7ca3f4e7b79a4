"""The sequence checker: what memory holds of each stream, against what was published.

Per stream it reports the segments missing (gaps), the segments or frames stored more than once (duplicates:
the stream's segment counter or frame counter above what its sets hold) and the segments stored out of
order: memory hands out entry ids in write order (one counter per tenant, in the write's transaction), so a
segment whose frames have lower ids than an earlier segment's was written before it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import redis

from memory_store import keys
from memory_store.redis_tier import RedisTier
from pipelines.config import LivelensConfig


@dataclass
class StreamReport:
    stream: str
    expected: int
    stored: int = 0
    gaps: list[int] = field(default_factory=list)
    duplicates: int = 0
    order_violations: list[int] = field(default_factory=list)  # seqs written after a later seq of the stream

    @property
    def clean(self) -> bool:
        return self.stored == self.expected and not (self.gaps or self.duplicates or self.order_violations)


def check_stream(config: LivelensConfig, stream: str, expected: int, tenant: str = "default") -> StreamReport:
    """``expected`` segments numbered 0..expected-1 in one publishing session."""
    client = redis.Redis.from_url(config.redis.url)
    tier = RedisTier(client, config.memory)
    report = StreamReport(stream, expected)
    names = [m.decode() for m in client.zrange(keys.segments(tenant, stream), 0, -1)]
    seqs = Counter(int(name.rpartition("-")[2]) for name in names)
    report.stored = len(seqs)
    report.gaps = sorted(set(range(expected)) - set(seqs))
    info = tier.stream_info(tenant, stream)
    frame_keys_by_seq = {int(n.rpartition("-")[2]): tier.segment_frame_keys(tenant, stream, n) for n in names}
    all_keys = [k for ks in frame_keys_by_seq.values() for k in ks]
    report.duplicates = sum(c - 1 for c in seqs.values()) + len(all_keys) - len(set(all_keys))
    if info is not None:
        report.duplicates += max(0, info.segments - len(names)) + max(0, info.frames - len(set(all_keys)))
    first_id: dict[int, float] = {}
    for seq, frame_keys in frame_keys_by_seq.items():
        ids = [i for i in client.zmscore(keys.ids(tenant), frame_keys) if i is not None] if frame_keys else []
        if ids:
            first_id[seq] = min(ids)
    latest = float("-inf")
    for seq in sorted(first_id):
        if first_id[seq] < latest:
            report.order_violations.append(seq)
        latest = max(latest, first_id[seq])
    return report


def stored_count(config: LivelensConfig, streams: list[str], tenant: str = "default") -> int:
    client = redis.Redis.from_url(config.redis.url, socket_timeout=2)
    try:
        return sum(client.zcard(keys.segments(tenant, s)) for s in streams)
    except redis.exceptions.RedisError:
        return -1  # redis-server itself is the fault being injected
