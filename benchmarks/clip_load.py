"""Does serving clips slow ingest? Ingest throughput and latency with and without a steady clip load.

    python benchmarks/clip_load.py [--streams 8] [--seconds 20] [--rounds 2] [--write]

The embedded stack (offline profile, OCR off: the stage most sensitive to a competitor is the source itself)
is deployed as benchmarks/ingest.py deploys it. A 60 s stream is ingested first so that there is video to cut.
Then, alternating, ``--streams`` copies of the sample broadcast are ingested (fast, then real time) alone and
while a client cuts 60 s clips of the first stream back to back (`ClipCutter`, from Kafka, on `clip_threads` as
the HTTP route does), at CPU niceness 0 and at ``clips.nice``. Rows are medians over ``--rounds``. --write appends the table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import ray
import redis

from deploy.processes import free_port, start_broker, start_redis
from pipelines.ray.runtime import deploy_pipeline
from pipelines.clips import ClipCutter, clip_threads
from pipelines.config import LivelensConfig
from pipelines.kafka.publish import SegmentPublisher
from pipelines.cli.sample_video import write_sample_video

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import run_streams  # noqa: E402  (the ingest benchmark's measurement, reused as is)

REPO = Path(__file__).resolve().parents[1]


class ClipLoad:
    """Cuts 60 s clips of one stream back to back until stopped, on the HTTP route's threads (`clip_threads`)."""

    def __init__(self, config: LivelensConfig, stream: str, nice: int):
        self.cutter = ClipCutter(config, redis.Redis.from_url(config.redis.url))
        self.pool = clip_threads(config.clips.model_copy(update={"nice": nice}), workers=1)
        self.stream = stream
        self.served = 0
        self.seconds: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = 0.0
        while not self._stop.is_set():
            began = time.perf_counter()
            self.pool.submit(self.cutter.cut, "default", self.stream, start, start + 60.0).result()
            self.seconds.append(time.perf_counter() - began)
            self.served += 1

    def __enter__(self) -> ClipLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.pool.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clip-load-"))
    broker, store = start_broker(work / "broker"), start_redis(work / "redis")
    config = LivelensConfig(data_dir=work / "data", kafka=dict(bootstrap=broker.address),
                            redis=dict(url=store.address), serve=dict(port=free_port()), ocr=dict(enabled=False))
    video, long_video = work / "broadcast.mp4", work / "long.mp4"
    write_sample_video(video, duration_s=args.seconds)
    write_sample_video(long_video, duration_s=62.0)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, namespace=config.ray.namespace)
    results: dict[tuple[str, int | None], list[dict]] = {}
    clip_times: dict[int, list[float]] = {}
    try:
        deployment = deploy_pipeline(config, detached=False)  # noqa: F841  (held: the actors live as long as it)
        with SegmentPublisher(kafka=config.kafka) as publisher:
            publisher.publish(str(long_video), stream_id="clipped", pace="fast")
        cutter = ClipCutter(config, redis.Redis.from_url(config.redis.url))
        deadline = time.monotonic() + 300
        while (span := cutter.ledger.known_span("default", "clipped")) is None or span[1] < 61.0:
            if time.monotonic() > deadline:
                raise RuntimeError("the clipped stream was not ingested in time")
            time.sleep(0.5)
        for _ in range(args.rounds):
            for pace in ("fast", "realtime"):
                for nice in (None, 0, config.clips.nice):  # None: no clip load
                    if nice is not None:
                        with ClipLoad(config, "clipped", nice) as load:
                            row = run_streams(config, video, args.streams, pace)
                        row["clips"] = load.served
                        clip_times.setdefault(nice, []).extend(load.seconds)
                    else:
                        row = run_streams(config, video, args.streams, pace)
                    results.setdefault((pace, nice), []).append(row)
                    print(pace, "alone" if nice is None else f"with clips at nice {nice}", row, flush=True)
    finally:
        ray.shutdown()
        broker.stop()
        store.stop()
    header = (f"### Ingest with and without clip requests ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPUs, "
              f"{platform.machine()})\n\n"
              f"`python benchmarks/clip_load.py --streams {args.streams} --seconds {args.seconds:g} "
              f"--rounds {args.rounds} --write` — offline profile, OCR off, {args.streams} streams of the "
              f"{args.seconds:g} s 640x360 10 fps sample broadcast; the load is one client cutting 60 s clips "
              "from Kafka back to back on the HTTP route's threads (`clip_threads`, at the CPU niceness shown; "
              "clips.nice is 10 by default) in the benchmark's process. Medians over the rounds.\n\n"
              "| publishing | clip load | frames/s | publish->memory p50 s | p99 s | clips served |\n"
              "| --- | --- | ---: | ---: | ---: | ---: |\n")
    lines = []
    for (pace, nice), rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("fps", "p50", "p99")}
        clips = statistics.median(r.get("clips", 0) for r in rows)
        load = "none" if nice is None else f"60 s clips, nice {nice}"
        lines.append(f"| {pace} | {load} | {med['fps']:.1f} | {med['p50']:.2f} | "
                     f"{med['p99']:.2f} | {clips:.0f} |\n")
    table = header + "".join(lines)
    for nice, times in clip_times.items():
        table += (f"\nClip latency during ingest at nice {nice}: p50 {statistics.median(times) * 1000:.0f} ms over "
                  f"{len(times)} clips.\n")
    print(table)
    if args.write:
        with (REPO / "BENCHMARKS.md").open("a") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
