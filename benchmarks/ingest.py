"""Ingest and query benchmark on the embedded stack (offline profile). Prints a table; --write appends to
BENCHMARKS.md.

    python benchmarks/ingest.py [--streams 1 8 32] [--seconds 20] [--pace fast realtime] [--ocr-max-lag S] [--write]

Ingest, per stream count N:
- throughput: N copies of the sample broadcast published as fast as possible; frames stored per second of
  wall time from the first record to the last segment in memory.
- latency: N streams published in real time (as live encoders would); seconds from a segment's produce to
  its frames being visible in memory, p50 / p99 over all segments.
With --ocr-max-lag, the live OCR reader sheds changed frames that come more than S seconds after their segment
ended (ocr.max_lag_s); the frames it stored as "text not read" are counted.
Query: p50 / p99 of retrieval alone (generate=false) and with the answer actor, over HTTP.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import ray

from contracts import messages
from deploy.processes import free_port, start_broker, start_redis
from memory_store import keys
from memory_store.redis_tier import RedisTier
from pipelines.api.client import Client
from pipelines.api.deployment import deploy_pipeline
from pipelines.cli.sample_video import write_sample_video
from pipelines.config import LivelensConfig
from pipelines.kafka.publish import SegmentPublisher
from pipelines.segmenter import iter_segments

REPO = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def headlines_read(frames: list, headlines: list[dict]) -> tuple[int, int]:
    """(headline episodes of which some stored frame's text holds the headline, episodes with a stored frame):
    a headline read once in its episode is found by a text search, however many of its frames were not read."""
    def same(a: str, b: str) -> bool:  # the recogniser may drop a space or misread a letter
        return difflib.SequenceMatcher(None, "".join(a.upper().split()), "".join(b.upper().split())).ratio() >= 0.8

    found = shown = 0
    for h in headlines:
        during = [f for f in frames if h["start"] <= f.pts_s < h["end"]]
        shown += bool(during)
        found += any(same(line["text"], h["text"]) for f in during for line in f.lines)
    return found, shown


def run_streams(config: LivelensConfig, video: Path, truth: dict, n: int, pace: str) -> dict:
    import redis

    client = redis.Redis.from_url(config.redis.url)
    tier = RedisTier(client, config.memory)
    segments = sum(1 for _ in iter_segments(str(video)))
    tag = uuid.uuid4().hex[:6]
    streams = [f"{pace}-{n}-{tag}-{i}" for i in range(n)]
    source = ray.get_actor("source-0", namespace=config.ray.namespace)
    before = ray.get(source.stats.remote())
    started = time.perf_counter()
    threads = [threading.Thread(target=SegmentPublisher(kafka=config.kafka).publish,
                                kwargs=dict(source=str(video), stream_id=s, pace=pace)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        infos = [tier.stream_info("default", s) for s in streams]
        if all(i is not None and i.segments == segments for i in infos):
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(f"{n} streams not fully ingested in time")
    wall = time.perf_counter() - started
    frames = sum(i.frames for i in infos)
    unread = read = shown = 0
    for s in streams:
        stored = [r for r in tier.frames("default", [k.decode() for k in client.zrange(keys.timeline("default", s),
                                                                                        0, -1)], tokens=False) if r]
        unread += sum(not r.text_read for r in stored)
        found, episodes = headlines_read(stored, truth["headlines"])
        read, shown = read + found, shown + episodes
    # The source learns of a write a moment after Redis has it; wait for its acknowledgements.
    while (stats := ray.get(source.stats.remote()))["segments_stored"] - before["segments_stored"] < n * segments:
        time.sleep(0.1)
    latencies = stats["latencies_s"][-n * segments:]
    # In acknowledgement order: a start-up stall (an actor's first call) shows in the first tenths only.
    tenths = np.array_split(np.asarray(latencies), 10)
    print(f"publish->memory max by tenth of the run: {' '.join(f'{t.max():.2f}' for t in tenths if t.size)} s",
          flush=True)
    # Segments sent through the DAG again after a failure (at-least-once): none, when nothing went wrong.
    retries = stats["retries"] - before["retries"]
    return dict(streams=n, pace=pace, frames=frames, wall_s=wall, fps=frames / wall,
                p50=pct(latencies, 50), p99=pct(latencies, 99), retries=retries, segments=n * segments,
                unread=unread, headlines=f"{read} of {shown}")


def query_latency(config: LivelensConfig, http: str, generate: bool, count: int = 40) -> tuple[float, float]:
    client = Client(config, http_url=http)
    times = []
    for i in range(count):
        q = messages.Query(tenant_id="default", text=f"what happened {i}", top_k=5, generate=generate)
        t = time.perf_counter()
        client.ask_http(q)
        times.append((time.perf_counter() - t) * 1000)
    return pct(times, 50), pct(times, 99)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of the sample broadcast per stream.")
    parser.add_argument("--no-ocr", action="store_true", help="Turn the on-screen text stage off.")
    parser.add_argument("--pace", nargs="+", choices=("fast", "realtime"), default=["fast", "realtime"],
                        help="Publishing paces to measure (realtime alone: the live latency, in less time).")
    parser.add_argument("--no-query", action="store_true", help="Skip the query latency measurement.")
    parser.add_argument("--ocr-max-lag", type=float, default=None, metavar="S",
                        help="ocr.max_lag_s: shed OCR of frames more than S seconds late (default: read every frame).")
    parser.add_argument("--ocr-readers", type=int, default=None, metavar="N", help="pipeline.ocr_readers (OCR actors).")
    parser.add_argument("--ocr-threads", type=int, default=None, metavar="N", help="ocr.threads per OCR model.")
    parser.add_argument("--write", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="livelens-bench-"))
    broker, redis_proc = start_broker(work), start_redis(work)
    config = LivelensConfig(data_dir=work / "data", kafka=dict(bootstrap=broker.address),
                            redis=dict(url=redis_proc.address), serve=dict(port=free_port()),
                            ocr=dict(enabled=not args.no_ocr, max_lag_s=args.ocr_max_lag, threads=args.ocr_threads),
                            **({"pipeline": {"ocr_readers": args.ocr_readers}} if args.ocr_readers else {}))
    video = work / "broadcast.mp4"
    truth = write_sample_video(video, duration_s=args.seconds)
    ray.init(address="local", include_dashboard=False, log_to_driver=False, namespace=config.ray.namespace)
    try:
        deployment = deploy_pipeline(config, detached=False)  # held: the actors live as long as it does
        http = deployment.http_url
        rows = []
        for n in args.streams:
            for pace in args.pace:
                row = run_streams(config, video, truth, n, pace)
                rows.append(row)
                print(f"{n:>3} streams {pace:>8}: {row['frames']:>5} frames in {row['wall_s']:6.1f} s = "
                      f"{row['fps']:6.1f} frames/s; publish->memory p50 {row['p50']:.2f} s p99 {row['p99']:.2f} s; "
                      f"{row['retries']} retries of {row['segments']} segments; "
                      f"{row['unread']} frames stored with text not read; headline episodes read "
                      f"{row['headlines']}",
                      flush=True)
        retrieval = answered = None
        if not args.no_query:
            retrieval = query_latency(config, http, generate=False)
            answered = query_latency(config, http, generate=True)
            print(f"query over HTTP: retrieval p50 {retrieval[0]:.1f} ms p99 {retrieval[1]:.1f} ms; "
                  f"with answer actor p50 {answered[0]:.1f} ms p99 {answered[1]:.1f} ms")
    finally:
        ray.shutdown()
        broker.stop()
        redis_proc.stop()
    if args.write:
        write_markdown(rows, retrieval, answered, args)
    return 0


def write_markdown(rows, retrieval, answered, args) -> None:
    lines = [
        "",
        f"### Ingest and query, offline profile, OCR {'off' if args.no_ocr else 'on'} "
        f"({time.strftime('%Y-%m-%d')}, 2-core CPU, {args.seconds:.0f} s sample broadcast per stream, "
        "640x360 10 fps H.264, sampled at 1 fps)",
        "",
        f"Command: `python benchmarks/ingest.py --streams {' '.join(map(str, args.streams))} "
        f"--seconds {args.seconds:g}{' --no-ocr' if args.no_ocr else ''}"
        f"{f' --ocr-max-lag {args.ocr_max_lag:g}' if args.ocr_max_lag is not None else ''}"
        f"{f' --ocr-readers {args.ocr_readers}' if args.ocr_readers else ''}"
        f"{f' --ocr-threads {args.ocr_threads}' if args.ocr_threads else ''}"
        f"{' --pace ' + ' '.join(args.pace) if args.pace != ['fast', 'realtime'] else ''}"
        f"{' --no-query' if args.no_query else ''} --write`",
        "",
        "publish->memory: from the publisher's produce to the source's acknowledgement that the segment is "
        "durable in memory (what its offset commit waits for). Fast publishing measures a backlog draining; "
        "real-time publishing measures a live load.",
        "",
        "| streams | publishing | frames stored | wall s | frames/s | publish->memory p50 s | p99 s "
        "| segments retried | frames with text not read | headline episodes read |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['streams']} | {r['pace']} | {r['frames']} | {r['wall_s']:.1f} | {r['fps']:.1f} | "
                     f"{r['p50']:.2f} | {r['p99']:.2f} | {r['retries']} of {r['segments']} | {r['unread']} | "
                     f"{r['headlines']} |")
    if retrieval is not None:
        lines += [
            "",
            f"Query latency over HTTP (Ray Serve), 40 queries: retrieval only p50 {retrieval[0]:.1f} ms, "
            f"p99 {retrieval[1]:.1f} ms; with the answer actor (extractive) p50 {answered[0]:.1f} ms, "
            f"p99 {answered[1]:.1f} ms.",
        ]
    lines.append("")
    with open(REPO / "BENCHMARKS.md", "a") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
