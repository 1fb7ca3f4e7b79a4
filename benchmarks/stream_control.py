"""Stream control benchmark: what the source's state check costs per segment, and how long a purge takes.

    python benchmarks/stream_control.py [--streams 200] [--frames 20000] [--write]

- gate: `StreamGate.admit` on a real redis-server for --streams streams, every stream read once per
  state_ttl_s (first call) and then served from the cache: microseconds per segment, cached and not.
- purge: a MemoryStore on a real redis-server holding --frames frames of one stream (2 frames per segment,
  64-dim embeddings, thumbnails) beside a second stream of the same size; `MemoryStore.erase_stream` erases
  the first (every tier, index entries, markers) and the second stays whole. Prints seconds and keys.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from kafka.structs import TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contracts import messages  # noqa: E402
from deploy.processes import start_redis  # noqa: E402
from memory_store.config import MemoryConfig  # noqa: E402
from memory_store.service import MemoryStore  # noqa: E402
from pipelines.stream_state import StreamGate  # noqa: E402
from tests.memory_store.batches import make_batch  # noqa: E402


def gate(client: redis.Redis, streams: int) -> tuple[float, float]:
    """Microseconds per admit: first read of each stream (Redis), then cached."""
    segments = [messages.VideoSegment(tenant_id="acme", stream_id=f"cam-{i}", session="s", seq=0, codec="h264",
                                      wallclock_start=datetime.now(UTC), media_start_s=0, duration_s=2, width=1,
                                      height=1, payload_bytes=1) for i in range(streams)]
    tp = TopicPartition("segments", 0)
    g = StreamGate(client, ttl_s=3600)
    started = time.perf_counter()
    for s in segments:
        g.admit(s, tp, [0])
    cold = (time.perf_counter() - started) / streams * 1e6
    started = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for s in segments:
            g.admit(s, tp, [0])
    warm = (time.perf_counter() - started) / (streams * rounds) * 1e6
    return cold, warm


def purge(client: redis.Redis, frames: int) -> tuple[float, int, int]:
    store = MemoryStore(client, MemoryConfig(recent_frames=600, long_max_entries=frames * 2))
    for seq in range(frames // 2):
        for stream in ("doomed", "kept"):
            store.write(make_batch(stream=stream, seq=seq, frames=2))
    keys_before = client.dbsize()
    started = time.perf_counter()
    erased = store.erase_stream("acme", "doomed")
    seconds = time.perf_counter() - started
    assert [s.stream_id for s in store.streams("acme")] == ["kept"]
    return seconds, erased, keys_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(Path(tmp))
        try:
            client = redis.Redis.from_url(server.address)
            cold, warm = gate(client, args.streams)
            client.flushall()
            seconds, erased, before = purge(client, args.frames)
        finally:
            server.stop()
    table = "\n".join([
        f"## Stream control ({datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, redis-server with appendfsync always)",
        "",
        f"`python benchmarks/stream_control.py {shlex.join(sys.argv[1:])}`",
        "",
        "| what | result |",
        "| --- | --- |",
        f"| source's state check, first read of a stream (Redis GET) | {cold:.0f} us per segment |",
        f"| source's state check, cached (state_ttl_s) | {warm:.1f} us per segment |",
        f"| purge of a {args.frames:,}-frame stream beside another one ({before:,} keys in Redis) | "
        f"{seconds:.2f} s, {erased:,} keys erased |",
        ""])
    print(table)
    if args.write:
        with (REPO / "BENCHMARKS.md").open("a") as out:
            out.write("\n" + table)


if __name__ == "__main__":
    main()
