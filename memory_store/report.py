"""What each tier of a stream holds now: entries, tokens, bytes and time covered, against its budgets.

Read from Redis alone (the tier counters `memory_store.tiers` keeps in the stream's
stats hash, and the tiers' sorted sets), so any process with the Redis URL can
report, not only the memory actor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from memory_store import keys
from memory_store.config import MemoryConfig

TIERS = ("short", "mid", "long")


@dataclass(frozen=True)
class TierUsage:
    """One tier of one stream. Times are epoch seconds (None: the tier is empty); budgets per stream."""

    tier: str
    entries: int
    tokens: int
    bytes: int
    first_wallclock: float | None
    last_wallclock: float | None
    max_entries: int | None
    max_tokens: int | None
    max_bytes: int

    @property
    def covered_s(self) -> float:
        if self.first_wallclock is None or self.last_wallclock is None:
            return 0.0
        return self.last_wallclock - self.first_wallclock


@dataclass(frozen=True)
class StreamTiers:
    """A stream's tiers. kinds: the long tier's entries by kind; boundaries: event boundaries kept."""

    tenant_id: str
    stream_id: str
    tiers: tuple[TierUsage, ...]
    kinds: dict[str, int] = field(default_factory=dict)
    boundaries: int = 0
    open_event: str | None = None
    ended_at: float | None = None

    def tier(self, name: str) -> TierUsage:
        return next(t for t in self.tiers if t.tier == name)


def stream_tiers(
    client: redis.Redis,
    config: MemoryConfig,
    tenant_id: str,
    stream_id: str,
    *,
    by_kind: bool = True,
) -> StreamTiers | None:
    """The stream's tiers, or None when memory holds nothing of it. ``by_kind``: count the long tier's entries by
    kind (reads every member; the rest reads a few keys)."""
    t, s = tenant_id, stream_id
    stats = client.hgetall(keys.stream_stats(t, s))
    if not stats:
        return None
    counters = {k.decode(): v for k, v in stats.items()}

    def num(name: str) -> int:
        return int(counters.get(name) or 0)

    zsets = {
        "short": keys.short_tier(t, s),
        "mid": keys.mid_tier(t, s),
        "long": keys.long_tier(t, s),
    }
    budgets = {
        "short": (
            config.recent_frames,
            config.short_max_tokens,
            config.short_max_bytes,
        ),
        "mid": (None, config.mid_max_tokens, config.mid_max_bytes),
        "long": (config.long_max_entries, None, config.long_max_bytes),
    }
    tiers = []
    for name in TIERS:
        entries = client.zcard(zsets[name])
        first, last = _span(client, t, zsets[name]) if entries else (None, None)
        tokens = num(f"{name}_tokens") if name != "long" else 0
        max_entries, max_tokens, max_bytes = budgets[name]
        tiers.append(
            TierUsage(
                name,
                entries,
                tokens,
                num(f"{name}_bytes"),
                first,
                last,
                max_entries,
                max_tokens,
                max_bytes,
            )
        )
    kinds = {}
    if by_kind:
        kinds = {"frame": 0, "event": 0, "merged": 0}
        for member in client.zrange(zsets["long"], 0, -1):
            kinds[_kind(member.decode())] += 1
    open_event = counters.get("open_event")
    ended = counters.get("ended_at")
    return StreamTiers(
        t,
        s,
        tuple(tiers),
        kinds,
        client.zcard(keys.boundaries(t, s)),
        open_event.decode() if open_event else None,
        float(ended) if ended else None,
    )


def _span(client: redis.Redis, tenant_id: str, zset: str) -> tuple[float, float]:
    """Wallclock from the start of a tier's oldest entry to the end of its newest (by the set's order)."""
    (first,), (last,) = client.zrange(zset, 0, 0), client.zrange(zset, -1, -1)
    fields = ("wallclock", "pts_s", "t_end_s")
    a = client.hmget(keys.frame(tenant_id, first.decode()), fields)
    b = client.hmget(keys.frame(tenant_id, last.decode()), fields)
    return float(a[0]), float(b[0]) + float(b[2]) - float(b[1])


def _kind(entry_key: str) -> str:
    """An entry's kind from its key (`keys.event_key`, `keys.merged_key`; frame keys end in seq/ms)."""
    marker = entry_key.rsplit("/", 2)[-2]
    return {"e": "event", "m": "merged"}.get(marker, "frame")
