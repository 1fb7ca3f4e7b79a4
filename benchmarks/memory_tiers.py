"""Memory tiers benchmark: bytes per stream-hour in each tier, and retrieval agreement@10 of the tiered memory
against brute force over every frame. Prints markdown tables; --write appends them to BENCHMARKS.md.

    python benchmarks/memory_tiers.py [--hours 2] [--shape siglip-b16] [--long-max-entries 3000] [--write]

For the 60 s sample broadcast and the static-camera clip one-by-one-person-detection.mp4: frames sampled at
--fps, encoded once by a random-weight tower of --shape (token and embedding sizes are the real model's, so
bytes are; retrieval scores are not semantic), then run through the live operators: pixel-mode differential
drop and pruning (TokenDropCompressor), boundaries on the drop ratio (BoundaryDetector), and MemoryStore on a
real redis-server.

- bytes: the clip is looped to --hours of stream time, each loop continuing the stream's clock, with the
  default budgets except --long-max-entries (lowered so that merging happens within the simulated hours; the
  default, 20,000 entries, is 5.5 h at 1 fps). Per tier at each stream hour: entries, tokens, bytes, and
  bytes per stream-hour the tier covers.
- retrieval agreement@10: one pass of the clip (a loop repeats frames exactly, which makes "which
  occurrence" ambiguous), with budgets cut to the clip so that its memory is compressed about
  --compression times: recent_frames = frames / 10, long_max_entries = frames / --compression, and events
  leave the mid tier at once (so they may merge too). For --queries
  frames picked at random, their embedding plus noise is searched in the memory (k=10) and by brute force
  over every frame's uncompressed embedding; overlap@10 is the share of the brute-force top 10 whose time
  lies in a hit's span, time error the distance to the nearest span.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere
sys.path.insert(0, str(REPO / "benchmarks"))

from token_economy import SHARED_CLIP, Tower, build_tower, decode

from deploy.processes import start_redis
from memory_store.config import MemoryConfig
from memory_store.report import TIERS, stream_tiers
from memory_store.service import MemoryStore
from operators.boundaries import BoundaryDetector
from operators.compress import TokenDropCompressor
from operators.config import BoundaryConfig, CompressConfig, DropConfig, PruneConfig
from operators.frames import FeatureBatch, SegmentInfo

WALL0 = 1_700_000_000.0


def encode(tower: Tower, frames: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    tokens, embeddings = [], []
    for start in range(0, len(frames), batch):
        t, e = tower.features(tower.forward(tower.pixels(frames[start : start + batch])))
        tokens.append(t)
        embeddings.append(e)
    return np.concatenate(tokens), np.concatenate(embeddings)


def run_clip(name: str, video: Path, tower: Tower, args: argparse.Namespace) -> list[str]:
    pts, frames = decode(video, args.fps)
    tokens, embeddings = encode(tower, frames)
    clip_s = len(pts) / args.fps
    started = time.perf_counter()
    tiers = MemoryConfig(long_max_entries=args.long_max_entries)
    rows, segments, _ = write_stream(
        name,
        frames,
        tokens,
        embeddings,
        tower.grid,
        tiers,
        args,
        loops=int(np.ceil(args.hours * 3600 / clip_s)),
    )
    write_s = time.perf_counter() - started
    n = len(pts)
    # Events leave the mid tier at once, so that they too may merge: the long tier is then the whole memory.
    tight = MemoryConfig(
        recent_frames=max(1, n // 10),
        long_max_entries=max(2, round(n / args.compression)),
        mid_max_tokens=1,
        mid_max_bytes=1,
    )
    _, _, agreement = write_stream(
        name,
        frames,
        tokens,
        embeddings,
        tower.grid,
        tight,
        args,
        loops=1,
        queries=args.queries,
    )
    lines = [
        (
            f"**{name}** ({n} frames at {args.fps:g} fps looped to {args.hours:g} h: {segments} segments written "
            f"in {write_s:.0f} s; {tower.name} tokens {tokens.shape[1]} x {tokens.shape[2]}, embedding "
            f"{embeddings.shape[1]})"
        ),
        "",
        "| stream h | tier | entries | tokens | bytes | covers | bytes per covered stream-hour |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for hour, report in rows:
        for usage in report.tiers:
            per_hour = usage.bytes / (usage.covered_s / 3600) if usage.covered_s else 0.0
            lines.append(
                f"| {hour / 3600:.2f} | {usage.tier} | {usage.entries} | {usage.tokens} | "
                f"{usage.bytes / 2**20:.2f} MiB | {usage.covered_s / 60:.0f} min | "
                f"{per_hour / 2**20:.2f} MiB |"
            )
    final = rows[-1][1]
    lines += [
        "",
        (
            f"Long tier at the end: {final.kinds}; {final.boundaries} boundaries kept. Retrieval agreement@10, "
            f"one pass, long tier {agreement['entries']} entries for {n} frames ({agreement['kinds']}): overlap "
            f"{agreement['overlap']:.2f}, time error mean {agreement['mean_error']:.1f} s / median "
            f"{agreement['median_error']:.1f} s, mean hit span {agreement['span']:.1f} s ({args.queries} queries)"
        ),
        "",
    ]
    return lines


def write_stream(
    name: str,
    frames: np.ndarray,
    tokens: np.ndarray,
    embeddings: np.ndarray,
    grid: tuple[int, int],
    config: MemoryConfig,
    args: argparse.Namespace,
    *,
    loops: int,
    queries: int = 0,
) -> tuple[list, int, dict]:
    """Write ``loops`` passes of the clip as one stream; (tiers at each stream hour, segments, agreement)."""
    per_segment = max(1, round(args.segment_s * args.fps))
    compressor = TokenDropCompressor(CompressConfig(), DropConfig(mode="pixel"), PruneConfig())
    detector = BoundaryDetector(BoundaryConfig())
    server = start_redis(Path(tempfile.mkdtemp(prefix="bench-memory-")))
    try:
        client = redis.Redis.from_url(server.address)
        store = MemoryStore(client, config)
        rows, times, seq, next_hour = [], [], 0, 3600.0
        for loop in range(loops):
            for start in range(0, len(frames), per_segment):
                part = slice(start, start + per_segment)
                t = loop * len(frames) / args.fps + np.arange(start, min(start + per_segment, len(frames))) / args.fps
                info = SegmentInfo(
                    "bench",
                    name,
                    seq,
                    WALL0 + float(t[0]),
                    float(t[0]),
                    len(t) / args.fps,
                )
                features = FeatureBatch(info, t, tokens[part], embeddings[part], grid)
                store.write(detector.mark(compressor.compress(features, frames[part])))
                times.append(WALL0 + t)
                seq += 1
                if t[-1] + 1 / args.fps >= next_hour:
                    rows.append((next_hour, stream_tiers(client, config, "bench", name)))
                    next_hour += 3600.0
        end_s = loops * len(frames) / args.fps
        if not rows or rows[-1][0] < end_s:
            rows.append((end_s, stream_tiers(client, config, "bench", name)))
        agreement = {}
        if queries:
            report = stream_tiers(client, config, "bench", name)
            agreement = dict(
                retrieval_agreement(store, name, embeddings, np.concatenate(times), queries),
                entries=report.tier("long").entries,
                kinds=report.kinds,
            )
        client.close()
    finally:
        server.stop()
    return rows, seq, agreement


def retrieval_agreement(store: MemoryStore, stream: str, frames: np.ndarray, times: np.ndarray, queries: int) -> dict:
    rng = np.random.default_rng(0)
    overlaps, errors, spans = [], [], []
    for at in rng.choice(len(frames), queries, replace=False):
        noise = rng.standard_normal(frames.shape[1]).astype(np.float32)
        query = frames[at] + 0.2 * noise / np.linalg.norm(noise)
        query /= np.linalg.norm(query)
        exact = times[np.argsort(-(frames @ query), kind="stable")[:10]]
        hits = store.search("bench", query, k=10, stream_ids=[stream])
        hit_spans = [(h.wallclock_start, max(h.wallclock_end, h.wallclock_start + 1.0)) for h in hits]
        distance = [min(0.0 if a <= t < b else min(abs(t - a), abs(t - b)) for a, b in hit_spans) for t in exact]
        overlaps.append(np.mean([d == 0.0 for d in distance]))
        errors.append(np.mean(distance))
        spans += [b - a for a, b in hit_spans]
    return {
        "overlap": float(np.mean(overlaps)),
        "mean_error": float(np.mean(errors)),
        "median_error": float(np.median(errors)),
        "span": float(np.mean(spans)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=2.0, help="Stream time simulated per clip.")
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--segment-s", type=float, default=2.0)
    parser.add_argument("--shape", choices=["tiny-clip", "siglip-b16"], default="siglip-b16")
    parser.add_argument("--long-max-entries", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument(
        "--compression",
        type=float,
        default=4.0,
        help="Agreement run: frames per long-tier entry the budget forces.",
    )
    parser.add_argument("--write", action="store_true", help="Append the tables to BENCHMARKS.md.")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    tower = build_tower(args.shape, "cpu")

    from pipelines.cli.sample_video import write_sample_video

    sample = Path(tempfile.mkdtemp(prefix="bench-video-")) / "broadcast.mp4"
    write_sample_video(sample, duration_s=60.0)
    lines = [
        f"### Memory tiers ({time.strftime('%Y-%m-%d')}, {len(TIERS)} tiers, CPU)",
        "",
        f"Command: `python benchmarks/memory_tiers.py {shlex.join(sys.argv[1:])}`",
        "",
    ]
    print("\n".join(lines), flush=True)
    for name, video in (("sample-broadcast", sample), ("static-camera", SHARED_CLIP)):
        table = run_clip(name, video, tower, args)
        print("\n".join(table), flush=True)
        lines += table
    if args.write:
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
