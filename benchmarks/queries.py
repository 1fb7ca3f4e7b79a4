"""Query-side costs: query latency against 1, 10 and 100 streams' worth of memory, OCR per frame, and
standing-query evaluation per new segment as the number of standing queries grows.

    python benchmarks/queries.py [--streams 1 10 100] [--minutes 10] [--write]

Memory is filled directly through MemoryStore.write with frames of the offline profile's shapes (32-d
index embeddings, 64 tokens x 64 dims, a 384-d on-screen text embedding on every fifth frame), each
stream `--minutes` long at 1 frame/s. Retrieval-only latency is the query's text embedding plus both
FAISS searches with a stream filter, in process; end-to-end latency is a query over HTTP to the deployed
pipeline (Ray Serve, query engine, memory actor, extractive answer actor).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import redis

from contracts import messages
from deploy.processes import free_port, start_broker, start_redis
from memory_store.service import MemoryStore
from operators.config import OcrConfig
from operators.frames import CompressedBatch, SegmentInfo
from operators.frames import FrameText, TextLine
from operators.ocr import ScreenTextReader, TextEmbedder
from pipelines.api.client import Client
from pipelines.api.deployment import deploy_pipeline
from pipelines.cli.sample_video import write_sample_video
from pipelines.config import LivelensConfig
from pipelines.query.standing import (
    FrameView,
    StandingEvaluator,
    StandingQuery,
    StandingRegistry,
)

REPO = Path(__file__).resolve().parents[1]
START = 1.79e9


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store: MemoryStore, streams: int, minutes: float, rng: np.random.Generator, offset: int) -> None:
    """Two-frame segments at 1 frame/s; every fifth frame carries on-screen text."""
    for s in range(offset, offset + streams):
        for seq in range(int(minutes * 30)):
            info = SegmentInfo("bench", f"s{s}", seq, START + seq * 2, seq * 2.0, 2.0)
            kept = np.zeros((2, 64), dtype=bool)
            kept[:, :8] = True
            batch = CompressedBatch(info, np.array([seq * 2.0, seq * 2.0 + 1]), unit(rng, 2, 32), kept,
                                    rng.standard_normal((16, 64)).astype(np.float32), np.array([0.9, 0.9]),
                                    (8, 8))
            texts = [FrameText(p, [TextLine(f"headline {s} {seq}", 0.9, ((0, 0), (1, 0), (1, 1), (0, 1)))],
                               unit(rng, 1, 384)[0], False) if (seq * 2 + i) % 5 == 0 else
                     FrameText(p, [], None, False) for i, p in enumerate(batch.pts_s)]
            store.write(batch, texts)


def pct(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="livelens-qbench-"))
    broker, redis_proc = start_broker(work), start_redis(work, appendfsync="everysec")
    client = redis.Redis.from_url(redis_proc.address)
    rng = np.random.default_rng(0)
    embedder = TextEmbedder()
    lines = []
    config = LivelensConfig(data_dir=work / "data", kafka=dict(bootstrap=broker.address),
                            redis=dict(url=redis_proc.address), serve=dict(port=free_port()))
    ray.init(address="local", include_dashboard=False, log_to_driver=False, namespace=config.ray.namespace)
    try:
        filled, deployment = 0, None
        for n in sorted(args.streams):
            store = MemoryStore(client, config.memory)
            fill(store, n - filled, args.minutes, rng, filled)
            filled = n
            frames = store.stats()["frames"]
            retrieval = []
            for i in range(50):
                t = time.perf_counter()
                vector = embedder.embed([f"headline number {i}"])[0]
                stream = [f"s{i % n}"]
                store.search_text("bench", vector, stream_ids=stream, k=5)
                store.search("bench", unit(rng, 1, 32)[0], stream_ids=stream, k=5)
                retrieval.append((time.perf_counter() - t) * 1000)
            if deployment is None:
                deployment = deploy_pipeline(config, detached=False)  # the memory actor builds from Redis
            else:
                ray.get(deployment.stages.memory[0].call.remote("rebuild"))  # catch up with the new streams
            api = Client(config, http_url=deployment.http_url)
            e2e = []
            for i in range(30):
                t = time.perf_counter()
                api.ask_http(messages.Query(tenant_id="bench", stream_ids=[f"s{i % n}"], text=f"headline {i}"))
                e2e.append((time.perf_counter() - t) * 1000)
            lines.append((n, frames, *pct(retrieval), *pct(e2e)))
            print(f"{n:>4} streams ({frames} frames): retrieval p50 {lines[-1][2]:.1f} ms p99 {lines[-1][3]:.1f} ms;"
                  f" end to end p50 {lines[-1][4]:.1f} ms p99 {lines[-1][5]:.1f} ms", flush=True)
        ocr_ms = ocr_cost(work)
        print(f"OCR per re-read 640x360 frame: {ocr_ms:.0f} ms", flush=True)
        standing = standing_cost(client, rng)
        for q, ms in standing:
            print(f"standing queries {q:>5}: {ms:.2f} ms per 2-frame segment", flush=True)
    finally:
        ray.shutdown()
        broker.stop()
        redis_proc.stop()
    if args.write:
        write_markdown(lines, ocr_ms, standing, args)
    return 0


def ocr_cost(work: Path) -> float:
    import av

    video = work / "sample.mp4"
    write_sample_video(video, duration_s=6)
    with av.open(str(video)) as container:
        frame = next(f for f in container.decode(video=0) if f.time >= 2.0).to_ndarray(format="rgb24")
    reader = ScreenTextReader(OcrConfig())
    reader.recognise(frame)  # warm-up
    times = []
    for _ in range(10):
        t = time.perf_counter()
        reader.recognise(frame)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def standing_cost(client: redis.Redis, rng: np.random.Generator) -> list[tuple[int, float]]:
    out = []
    for count in (1, 100, 1000):
        tenant = f"standing{count}"
        registry = StandingRegistry(client)
        for q in range(count):
            registry.register(StandingQuery(tenant_id=tenant, text=f"q{q}", text_vector=unit(rng, 1, 384)[0].tolist()))
        evaluator = StandingEvaluator(client, lambda firings: None)
        times = []
        for seq in range(30):
            views = [FrameView(f"{tenant}/s/{seq}/{i}", seq * 2.0 + i, seq * 2.0 + i + 1, START + seq * 2 + i,
                               unit(rng, 1, 32)[0], "text", unit(rng, 1, 384)[0]) for i in range(2)]
            t = time.perf_counter()
            evaluator.evaluate(tenant, "s", views)
            times.append((time.perf_counter() - t) * 1000)
        out.append((count, float(np.median(times))))
    return out


def write_markdown(lines, ocr_ms, standing, args) -> None:
    rows = [
        "",
        f"### Query side ({time.strftime('%Y-%m-%d')}, 2-core CPU, offline profile shapes)",
        "",
        f"Command: `python benchmarks/queries.py --streams {' '.join(map(str, args.streams))} "
        f"--minutes {args.minutes:g} --write`. Each stream: {args.minutes:g} min at 1 frame/s; one query "
        "filtered to one stream. Retrieval = MiniLM text embedding + text and visual FAISS searches in process; "
        "end to end = HTTP through Ray Serve to the deployed pipeline with an extractive answer.",
        "",
        "| streams | frames in memory | retrieval p50 ms | p99 ms | end to end p50 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *[f"| {n} | {f} | {a:.1f} | {b:.1f} | {c:.1f} | {d:.1f} |" for n, f, a, b, c, d in lines],
        "",
        f"OCR (RapidOCR PP-OCRv4, `max_side` 960) per re-read 640x360 frame with one headline: {ocr_ms:.0f} ms "
        "(frames whose picture did not change are not re-read).",
        "",
        "| standing queries | evaluation per new 2-frame segment, ms |",
        "| ---: | ---: |",
        *[f"| {q} | {ms:.2f} |" for q, ms in standing],
        "",
    ]
    with open(REPO / "BENCHMARKS.md", "a") as f:
        f.write("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
