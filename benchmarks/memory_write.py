"""What one segment write costs the memory actor, before and after a stream's short tier is full.

    python benchmarks/memory_write.py [--streams 4] [--frames-per-segment 1] [--kept 60] [--segments 1400]

`MemoryStore.write` (the memory actor's call: the Redis transaction, then FAISS) of live-capacity-shaped
segments (benchmarks/live_capacity.py: SigLIP-B/16 widths, 768-dim embeddings and tokens, --kept tokens a frame
as pruning leaves them) into a real redis-server with AOF and ``appendfsync always``, default memory budgets.
--streams streams are written round robin, --segments segments each. Reported per phase of a stream's life:
"filling" while its short tier holds fewer than ``recent_frames`` (600) frames, "full" once every write evicts
the oldest frames' tokens (the steady state of any stream live for more than 20 min at 1 frame per 2 s):
wall time per write (p50, p99), Redis commands and client round trips per write.
A live-capacity trial of 20 s never leaves "filling"; size memory actors by "full".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
import redis.connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deploy.processes import start_redis  # noqa: E402
from memory_store.config import MemoryConfig  # noqa: E402
from memory_store.service import MemoryStore  # noqa: E402
from operators.frames import CompressedBatch, SegmentInfo  # noqa: E402

WIDTH, GRID = 768, (14, 14)
SEGMENT_S = 2.0


class RoundTrips:
    """Counts the client's writes to its sockets: one per command sent alone, one per pipeline or transaction."""

    def __init__(self):
        self.count = 0
        send = redis.connection.AbstractConnection.send_packed_command

        def counted(connection, *args, **kwargs):
            self.count += 1
            return send(connection, *args, **kwargs)

        redis.connection.AbstractConnection.send_packed_command = counted


def segment(stream: str, seq: int, frames: int, kept: int, rng: np.random.Generator) -> CompressedBatch:
    info = SegmentInfo(tenant_id="bench", stream_id=stream, seq=seq, wallclock_start=1.7e9 + seq * SEGMENT_S,
                       media_start_s=seq * SEGMENT_S, duration_s=SEGMENT_S)
    mask = np.zeros((frames, GRID[0] * GRID[1]), bool)
    for row in mask:
        row[rng.choice(row.size, kept, replace=False)] = True
    embedding = rng.standard_normal((frames, WIDTH)).astype(np.float32)
    return CompressedBatch(segment=info, pts_s=seq * SEGMENT_S + np.arange(frames) * SEGMENT_S / frames,
                           embedding=embedding / np.linalg.norm(embedding, axis=1, keepdims=True), kept=mask,
                           tokens=rng.standard_normal((frames * kept, WIDTH)).astype(np.float16),
                           drop_ratio=np.full(frames, 1 - kept / mask.shape[1]), grid=GRID,
                           thumbnails=[b"\xff\xd8" + bytes(6000)] * frames)


def commands(client: redis.Redis) -> int:
    return sum(stat["calls"] for stat in client.info("commandstats").values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--frames-per-segment", type=int, default=1, help="1: keyframe rate; 2: 1 frame/s.")
    parser.add_argument("--kept", type=int, default=60, help="Tokens a frame keeps (60: the pruning budget).")
    parser.add_argument("--segments", type=int, default=1400, help="Per stream.")
    args = parser.parse_args()

    config = MemoryConfig()
    trips = RoundTrips()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        server = start_redis(Path(work))
        try:
            client = redis.Redis.from_url(server.address)
            store = MemoryStore(client, config, index_dir=Path(work) / "faiss")
            phases: dict[str, list[tuple[float, int, int]]] = {"filling": [], "full": []}
            for seq in range(args.segments):
                full = (seq + 1) * args.frames_per_segment > config.recent_frames
                for s in range(args.streams):
                    batch = segment(f"cam-{s}", seq, args.frames_per_segment, args.kept, rng)
                    before, sent = commands(client), trips.count
                    started = time.perf_counter()
                    store.write(batch)
                    elapsed = time.perf_counter() - started
                    # The INFO call that counts is itself one command and one round trip.
                    phases["full" if full else "filling"].append(
                        (elapsed, commands(client) - before - 1, trips.count - sent - 1))
        finally:
            server.stop()

    print(f"MemoryStore.write, {args.streams} streams x {args.segments} segments of {args.frames_per_segment} "
          f"frame(s) x {args.kept} tokens of {WIDTH}; redis-server appendfsync always; {time.strftime('%Y-%m-%d')}")
    print("| short tier | writes | p50 ms | p99 ms | Redis commands a write | round trips a write |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for phase, rows in phases.items():
        if rows:
            times, cmds, sent = (np.array(column) for column in zip(*rows))
            print(f"| {phase} | {len(rows)} | {1000 * np.median(times):.2f} | {1000 * np.percentile(times, 99):.2f} "
                  f"| {cmds.mean():.1f} | {sent.mean():.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
