"""Backfill speed: stream seconds stored per wall second, for 720p and 1080p H.264, 1 vs 2 decode workers.

    python benchmarks/backfill.py [--seconds 60] [--workers 1 2] [--write]

Offline profile (tiny CLIP on the CPU), sample_fps 1, OCR off: what is measured is
the backfill path itself (segmenting, decode, encode, compress, Redis writes), on a
fresh redis-server (AOF, appendfsync always, as the local stack runs it). The files
are the sample broadcast encoded at each size with a keyframe every 2 s (so 2 s
segments). Wall time includes starting the decode workers; each row is one run
into an empty Redis. --write appends the table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import redis

from deploy.processes import start_redis
from pipelines.cli.sample_video import write_sample_video
from pipelines.config import LivelensConfig

if TYPE_CHECKING:
    from pipelines.ingest.backfill import BackfillSummary

REPO = Path(__file__).resolve().parents[1]
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
FPS = 25
GOP_S = 2


def make_video(out: Path, size: tuple[int, int], seconds: float) -> None:
    """The sample broadcast at ``size``, re-encoded with a keyframe every GOP_S seconds (the generator uses 1 s)."""
    source = out.with_name(f"source-{out.name}")
    write_sample_video(source, duration_s=seconds, fps=FPS, size=size)
    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.options = {"preset": "veryfast", "crf": "23",
                          "x264-params": f"keyint={FPS * GOP_S}:min-keyint={FPS * GOP_S}:scenecut=0"}
        for i, frame in enumerate(src.decode(video=0)):
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            frame.pict_type = av.video.frame.PictureType.NONE
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode())


def run_once(video: Path, workers: int, work: Path) -> BackfillSummary:
    # Imported here, not at the top: decode workers (forkserver) re-import this script, and torch
    # (pulled in by the encoder) would add seconds to every worker's start.
    from memory_store.service import MemoryStore
    from pipelines.ingest.backfill import Backfill, BackfillJob

    record = start_redis(work / f"redis-{video.stem}-{workers}")
    try:
        config = LivelensConfig(data_dir=work / "data", decode=dict(sample_fps=1.0), ocr=dict(enabled=False))
        store = MemoryStore(redis.Redis.from_url(record.address), config.memory)
        backfill = Backfill(config, store, workers=workers, progress=False)
        return backfill.run([BackfillJob(video, "bench", wallclock_start=datetime(2026, 1, 1, tzinfo=UTC))])
    finally:
        record.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of each test file.")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Decode worker counts to compare.")
    parser.add_argument("--write", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, size in SIZES.items():
            video = work / f"{name}.mp4"
            make_video(video, size, args.seconds)
            for workers in args.workers:
                s = run_once(video, workers, work)
                rows.append(f"| {name} | {workers} | {s.stream_seconds:.0f} | {s.wall_seconds:.2f} | "
                            f"{s.speedup:.1f}x | {s.frames} | {s.tokens_kept} | {s.bytes_written / 1e6:.2f} |")
    table = ["| file | decode workers | stream s | wall s | speed-up over real time | frames | tokens kept | MB written |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |", *rows]
    print("\n".join(table))
    if args.write:
        command = f"python benchmarks/backfill.py --seconds {args.seconds:g} --workers {' '.join(map(str, args.workers))}"
        header = [f"\n## Backfill ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()})",
                  "", f"`{command} --write` — H.264 {FPS} fps, GOP {GOP_S} s, sample_fps 1, offline profile, OCR off.", ""]
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write("\n".join(header + table) + "\n")


if __name__ == "__main__":
    main()
