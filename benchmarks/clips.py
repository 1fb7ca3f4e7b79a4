"""Clip latency (10 s and 60 s spans, from Kafka and from the archive) and archive bytes per stream-hour.

    python benchmarks/clips.py [--minutes 10] [--requests 30] [--write]

A 720p 25 fps H.264 sample broadcast (keyframe every second, so ~2 s segments) is published looped for
``--minutes`` of stream time to a fresh local broker (tansu) in 900 kB records, and each segment is kept as the
source keeps it after its memory write (`ClipKeeper`: ledger in a fresh redis-server, archive on local disk).
Then ``--requests`` clips of each span length start at random stream times, cut in-process by `ClipCutter`
(what GET /v1/streams/{id}/clip runs, without HTTP): ledger lookup, segment reads, remux to MP4.
--write appends the table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import redis

from deploy.processes import start_broker, start_redis
from contracts import messages
from pipelines.clips import ClipCutter, ClipKeeper
from pipelines.config import LivelensConfig
from pipelines.kafka.publish import SegmentPublisher
from pipelines.cli.sample_video import write_sample_video

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clips-bench-"))
    broker, store = start_broker(work / "broker"), start_redis(work / "redis")
    try:
        video = work / "broadcast.mp4"
        write_sample_video(video, duration_s=60.0, fps=25, size=(1280, 720))
        config = LivelensConfig(kafka=dict(bootstrap=broker.address, topic_prefix=f"b{uuid.uuid4().hex[:6]}.",
                                           partitions=1),
                                redis=dict(url=store.address), archive=dict(url=str(work / "archive")))
        kafka_only = config.model_copy(update={"archive": config.archive.model_copy(update={"url": None})})
        stream_s = args.minutes * 60
        stop = threading.Event()

        def enough(segment: messages.VideoSegment) -> None:
            if segment.media_start_s + segment.duration_s >= stream_s:
                stop.set()

        with SegmentPublisher(kafka=config.kafka) as publisher:
            stats = publisher.publish(str(video), stream_id="bench", pace="fast", loop=True, stop=stop,
                                      on_segment=enough, wallclock_start=datetime.now(UTC))
        client = redis.Redis.from_url(store.address)
        kept = ClipKeeper(config, client).keep_retained()
        cutter = {"kafka": ClipCutter(kafka_only, client), "archive": ClipCutter(config, client)}
        held = cutter["archive"].archive.bytes_held("default", "bench")
        covered = cutter["kafka"].ledger.known_span("default", "bench")
        rows = []
        rng = random.Random(0)
        for span in (10.0, 60.0):
            for source, cut in cutter.items():
                times, sizes = [], []
                for _ in range(args.requests):
                    start = rng.uniform(covered[0], covered[1] - span)
                    began = time.perf_counter()
                    clip = cut.cut("default", "bench", start, start + span)
                    times.append(time.perf_counter() - began)
                    sizes.append(len(clip.data))
                    assert (clip.from_kafka if source == "kafka" else clip.from_archive) == len(clip.segments)
                rows.append((span, source, statistics.median(times) * 1000, percentile(times, 0.99) * 1000,
                             statistics.mean(sizes) / 1e6))
        per_hour = held / (covered[1] - covered[0]) * 3600
    finally:
        broker.stop()
        store.stop()
    header = (f"## Clips (GET /v1/streams/{{id}}/clip) ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPUs, "
              f"{platform.machine()})\n\n"
              f"`python benchmarks/clips.py --minutes {args.minutes:g} --requests {args.requests} --write` — "
              f"{stream_s / 60:.0f} min of the 720p 25 fps sample broadcast (H.264, keyframe every 1 s, "
              f"{kept} segments of ~2 s, {stats.records} records), tansu broker and redis-server on this machine, "
              "archive on local disk; cut in-process (no HTTP); each request a random start.\n\n"
              "| span s | read from | p50 ms | p99 ms | clip MB |\n| ---: | --- | ---: | ---: | ---: |\n")
    table = header + "".join(f"| {span:.0f} | {source} | {p50:.0f} | {p99:.0f} | {mb:.2f} |\n"
                             for span, source, p50, p99, mb in rows)
    table += (f"\nArchive: {held / 1e6:.1f} MB for {(covered[1] - covered[0]) / 60:.1f} min of stream = "
              f"{per_hour / 1e9:.2f} GB per stream-hour (the published bytes: segments are archived as sent).\n")
    print(table)
    if args.write:
        with (REPO / "BENCHMARKS.md").open("a") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
