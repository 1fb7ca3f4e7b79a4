"""`livelens memory STREAM`: a stream's memory tiers as a table, read from Redis (no pipeline needed)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import redis
from rich.console import Console
from rich.table import Table

from memory_store.redis_tier import RedisTier
from memory_store.report import StreamTiers, TierUsage, stream_tiers
from pipelines.config import LivelensConfig
from pipelines.redis_io import redis_client

_WHAT = {
    "short": "newest frames, all kept tokens",
    "mid": "event segments, repeats removed",
    "long": "searchable entries (FAISS)",
}


class NoMemory(LookupError):
    """Nothing to report: no Redis configured, or memory holds nothing of the stream."""


def _report(config: LivelensConfig, tenant_id: str, stream_id: str) -> tuple[redis.Redis, StreamTiers]:
    if not config.redis.url:
        raise NoMemory("no Redis URL: set LIVELENS_REDIS_URL or run `livelens up`")
    client = redis_client(config.redis)
    report = stream_tiers(client, config.memory, tenant_id, stream_id)
    if report is None:
        raise NoMemory(f"memory holds nothing of stream {stream_id!r} of tenant {tenant_id!r}")
    return client, report


def memory_body(config: LivelensConfig, tenant_id: str, stream_id: str) -> dict:
    """The stream's tiers as one JSON-able object (`livelens memory --json`); raises NoMemory."""
    client, report = _report(config, tenant_id, stream_id)
    return {
        "tenant_id": report.tenant_id, "stream_id": report.stream_id,
        "tiers": [{**dataclasses.asdict(t), "covered_s": t.covered_s} for t in report.tiers],
        "long_kinds": report.kinds, "boundaries": report.boundaries, "open_event": report.open_event,
        "ended_at": report.ended_at, "retention_s": config.memory.retention_s,
        "offsets": RedisTier(client, config.memory).offsets(tenant_id),
    }


def print_memory(config: LivelensConfig, tenant_id: str, stream_id: str, console: Console) -> bool:
    """Print the stream's tiers; False (and a message) when memory holds nothing of it."""
    try:
        client, report = _report(config, tenant_id, stream_id)
    except NoMemory as exc:
        console.print(f"[red]{exc}")
        return False
    console.print(tiers_table(report))
    long = report.kinds
    console.print(
        f"long tier: {long['frame']} frames, {long['event']} event segments, {long['merged']} merged "
        f"entries; {report.boundaries} event boundaries kept"
    )
    state = f"ended {_when(report.ended_at)}" if report.ended_at else "live (or paused)"
    console.print(
        f"stream {state}; open event: {report.open_event or 'none'}; retention {config.memory.retention_s / 3600:g} h"
    )
    offsets = RedisTier(client, config.memory).offsets(tenant_id)
    if offsets:
        console.print("stored up to Kafka offsets: " + ", ".join(f"{k}@{v}" for k, v in offsets.items()))
    return True


def tiers_table(report: StreamTiers) -> Table:
    table = Table(
        "tier",
        "holds",
        "entries",
        "tokens",
        "bytes",
        "from",
        "to",
        "covers",
        title=f"memory of {report.tenant_id}/{report.stream_id}",
    )
    for usage in report.tiers:
        table.add_row(
            usage.tier,
            _WHAT[usage.tier],
            _of(usage.entries, usage.max_entries),
            _of(usage.tokens, usage.max_tokens) if usage.tier != "long" else "-",
            _of(usage.bytes, usage.max_bytes, _size),
            _when(usage.first_wallclock),
            _when(usage.last_wallclock),
            _span(usage),
        )
    return table


def _of(value: int, budget: int | None, show=str) -> str:
    return show(value) if budget is None else f"{show(value)} / {show(budget)}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _when(epoch_s: float | None) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds") if epoch_s is not None else "-"


def _span(usage: TierUsage) -> str:
    seconds = usage.covered_s
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s"
