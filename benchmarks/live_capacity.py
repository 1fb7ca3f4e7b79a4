"""Live capacity of one GPU host: the largest number of live 1080p30 streams whose publish-to-memory-visible
p99 stays within 2 s (issue 18).

    python benchmarks/live_capacity.py --source CLIP.mp4 --streams 200 400 800 --modes keyframes 1fps
                                       [--decoders 11] [--memory 3] [--seconds 20] [--batch 256] [--device cuda]
                                       [--skip-unsampled] [--recent-frames 600]

What runs, the way the Ray actors would (Ray is not installed where this runs: the same operator classes
are driven in plain processes, one per actor, joined by multiprocessing queues instead of Ray's object store):
- media: --source scaled to 1920x1080, H.264 30 fps, a keyframe every 2 s, cut by the pipeline's own
  segmenter into 2 s MPEG-TS segments (pre-encoded once; every stream publishes the same segments).
- publisher (this process): N streams, staggered evenly over one segment period; a segment is published
  when its last frame would have been captured (its start + 2 s), in real time.
- decode actors (--decoders processes, one core each): SegmentDecoder (--decode nvdec: full decodes on
  NVDEC), frames resized to 640 px, JPEG thumbnails; "keyframes" samples the keyframe of each segment (skip_frame=NONKEY, one frame per 2 s),
  "1fps" keeps one frame a second, decoding every frame, or with --skip-unsampled (decode.skip_unsampled)
  only the frames a sample needs. Closed captions are read from every segment's packets in both modes
  (operators/cc_data.py), as a deployment with transcript.captions on (the default) reads them.
- encoder actor (one process, the GPU): frame batches of many streams gathered for up to 30 ms or --batch
  frames, then the encode actor's fused step (pipelines/ingest/chain.py FusedEncodeCompress: resize, SigLIP-B/16
  tower with random weights in bf16, pixel-mode drop, pruning to 60/196, pooled embedding, all on the GPU;
  kept tokens back; then the boundary detector).
- every process runs with one thread (OMP_NUM_THREADS=1), the encoder with 2, as Ray sizes actors.
- memory actors (--memory processes): MemoryStore.write into a real redis-server (AOF, appendfsync always)
  and FAISS; a segment is memory-visible when its write returns. Streams are sharded over them by tenant.
  A trial is too short to fill a stream's short tier (memory.recent_frames, 600 frames: 20 min at keyframe
  rate); --recent-frames 2 fills it within seconds, so that every write evicts as a long-lived stream's does.
Latency = visible - published, per segment, after a 6 s warm-up; a segment not visible 10 s after the last
publish counts as infinitely late. Utilisation = busy seconds / (processes x wall seconds) per stage.
"""

from __future__ import annotations

import argparse
import os
import multiprocessing as mp
import queue
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEGMENT_S = 2.0
FPS = 30
WARMUP_S = 6.0
DRAIN_S = 10.0
ENCODER_THREADS = 2  # the cluster profile's placement.encode.num_cpus


def make_media(source: Path, out: Path, seconds: float, size: tuple[int, int]) -> list:
    """``source`` looped to ``seconds`` at ``size``, 30 fps, GOP 2 s; returned as the segmenter's segments."""
    import av

    from pipelines.segmenter import iter_segments

    want = int(seconds * FPS)
    with av.open(str(out), "w") as dst:
        stream = dst.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.options = {"preset": "veryfast", "crf": "23",
                          "x264-params": f"keyint={int(FPS * SEGMENT_S)}:min-keyint={int(FPS * SEGMENT_S)}:scenecut=0"}
        written = 0
        while written < want:
            with av.open(str(source)) as src:
                for frame in src.decode(video=0):
                    if written == want:
                        break
                    frame = frame.reformat(width=size[0], height=size[1], format="yuv420p")
                    frame.pts, frame.time_base = written, Fraction(1, FPS)
                    frame.pict_type = av.video.frame.PictureType.NONE
                    dst.mux(stream.encode(frame))
                    written += 1
        dst.mux(stream.encode())
    return list(iter_segments(str(out), target_s=SEGMENT_S))


# ---------------------------------------------------------------------------------------------
# actors, each in its own process


def decode_actor(mode: str, hardware: str, skip_unsampled: bool, segments: list, inbox: mp.Queue, outbox: mp.Queue,
                 busy: mp.Value) -> None:
    from operators.decode import SegmentDecoder
    from operators.frames import SegmentInfo
    from pipelines.config import DecodeConfig

    config = DecodeConfig(sample_fps=1.0 / SEGMENT_S if mode == "keyframes" else 1.0,
                          keyframes_only=mode == "keyframes", hardware=hardware, skip_unsampled=skip_unsampled)
    decoder = SegmentDecoder(config, frame_px=config.frame_px, threads=1)
    while (job := inbox.get()) is not None:
        tenant, stream, seq, published = job
        media = segments[seq % len(segments)]
        started = time.perf_counter()
        info = SegmentInfo(tenant, stream, seq, published - SEGMENT_S, seq * SEGMENT_S, media.duration_s,
                           media.codec, "mpegts")
        batch = decoder.decode(info, media.payload)
        with busy.get_lock():
            busy.value += time.perf_counter() - started
        outbox.put((batch, published))


def encode_actor(model: Path, device: str, batch_frames: int, inbox: mp.Queue, outboxes: list, busy: mp.Value,
                 calls: mp.Value, ready: mp.Event) -> None:
    import torch

    from pipelines.config import LivelensConfig
    from pipelines.ingest.chain import FusedEncodeCompress
    from pipelines.ray.placement import shard

    torch.set_num_threads(ENCODER_THREADS)
    dtype = "bfloat16" if device == "cuda" else "float32"
    # The encode actor's step with encode.fused: EncodeCompressor and the boundary detector.
    config = LivelensConfig(encode=dict(model=str(model), device=device, dtype=dtype, batch_frames=batch_frames,
                                        fused="on"), drop=dict(mode="pixel"), prune={})
    fused = FusedEncodeCompress.build(config)
    ready.set()
    wait_s = 0.030  # the gpu profile's max_batch_wait_ms
    while True:
        item = inbox.get()
        if item is None:
            return
        group = [item]
        frames, deadline = len(item[0]), time.monotonic() + wait_s
        while frames < batch_frames:
            try:
                item = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                inbox.put(None)
                break
            group.append(item)
            frames += len(item[0])
        started = time.perf_counter()
        out = fused.process([b for b, _ in group if len(b)])  # a StageError here would be a segment's bad input
        if device == "cuda":
            torch.cuda.synchronize()
        with busy.get_lock():
            busy.value += time.perf_counter() - started
        with calls.get_lock():
            calls.value += 1
        done = iter(out)
        for batch, published in group:
            compressed = next(done) if len(batch) else None
            outboxes[shard(batch.segment.tenant_id, len(outboxes))].put((batch.segment, compressed, published))


def memory_actor(redis_url: str, index_dir: Path, inbox: mp.Queue, results: mp.Queue, busy: mp.Value,
                 recent_frames: int) -> None:
    import redis

    from memory_store.service import MemoryStore
    from pipelines.config import MemoryConfig

    store = MemoryStore(redis.Redis.from_url(redis_url), MemoryConfig(recent_frames=recent_frames),
                        index_dir=index_dir)
    while (item := inbox.get()) is not None:
        segment, compressed, published = item
        started = time.perf_counter()
        if compressed is not None:
            store.write(compressed)
        with busy.get_lock():
            busy.value += time.perf_counter() - started
        results.put((segment.stream_id, segment.seq, time.time() - published))


# ---------------------------------------------------------------------------------------------
# one trial: N streams for --seconds


def trial(n: int, seconds: float, tag: str, decode_q: mp.Queue, results: mp.Queue, busy: dict,
          counts: dict, frames_per_segment: int) -> dict:
    for value in busy.values():
        value.value = 0.0
    start = time.time() + 1.0
    jobs = []
    for s in range(n):
        offset = SEGMENT_S * s / n
        k = 0
        while offset + (k + 1) * SEGMENT_S <= seconds:
            jobs.append((start + offset + (k + 1) * SEGMENT_S, s, k))
            k += 1
    jobs.sort()
    for at, s, k in jobs:
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)
        decode_q.put((f"t{s % 64}", f"{tag}-s{s}", k, at))
    published_until = time.time()
    wall = published_until - start
    latencies: dict[tuple[str, int], float] = {}
    measured = {(f"{tag}-s{s}", k) for at, s, k in jobs if at - start >= WARMUP_S}
    deadline = published_until + DRAIN_S
    while len(latencies) < len(jobs) and time.time() < deadline:
        try:
            stream, seq, latency = results.get(timeout=0.2)
        except queue.Empty:
            continue
        if stream.startswith(f"{tag}-"):  # a straggler of an earlier trial is not this one's
            latencies[(stream, seq)] = latency
    lat = np.array([latencies.get(key, np.inf) for key in measured])
    finite = lat[np.isfinite(lat)]
    return dict(
        streams=n, segments=len(measured), late=int((~np.isfinite(lat)).sum()),
        p50=float(np.percentile(lat, 50)) if len(lat) else np.nan,
        p99=float(np.percentile(lat, 99)) if len(lat) else np.nan,
        max=float(finite.max()) if len(finite) else np.inf,
        util={stage: busy[stage].value / (counts[stage] * wall) for stage in ("decode", "encode", "memory")},
        decode_ms=1000 * busy["decode"].value / max(1, len(jobs)),
        encode_ms=1000 * busy["encode"].value / max(1.0, busy["encode calls"].value),
        frames_per_call=sum(1 for at, s, k in jobs) * frames_per_segment / max(1.0, busy["encode calls"].value),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--streams", type=int, nargs="+", required=True, help="N to try, ascending; a mode stops "
                        "at its first N over the bound.")
    parser.add_argument("--modes", nargs="+", choices=["keyframes", "1fps"], default=["keyframes", "1fps"])
    parser.add_argument("--seconds", type=float, default=20.0, help="Publishing time per trial.")
    parser.add_argument("--decoders", type=int, default=11)
    parser.add_argument("--memory", type=int, default=3)
    parser.add_argument("--decode", choices=["cpu", "nvdec"], default="cpu", help="DecodeConfig.hardware: nvdec "
                        "decodes 1fps mode's full decodes on the GPU (keyframes stay on the CPU).")
    parser.add_argument("--skip-unsampled", action="store_true", help="decode.skip_unsampled in 1fps mode: "
                        "decode only the frames a sample needs (closed captions still read from every packet).")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--media-s", type=float, default=20.0, help="Seconds of distinct media (then repeated).")
    parser.add_argument("--bound-s", type=float, default=2.0)
    parser.add_argument("--recent-frames", type=int, default=600, help="memory.recent_frames of the writers.")
    args = parser.parse_args()

    from deploy.processes import start_redis

    work = Path(tempfile.mkdtemp(prefix="live-capacity-"))
    width, height = map(int, args.size.split("x"))
    made = time.perf_counter()
    segments = make_media(args.source, work / "live.mp4", args.media_s, (width, height))
    print(f"media: {len(segments)} segments of {SEGMENT_S:g} s at {width}x{height} in "
          f"{time.perf_counter() - made:.0f} s", flush=True)
    model = build_model(work, args.device)
    redis_proc = start_redis(work / "redis-data")
    ctx = mp.get_context("spawn")
    rows = []
    try:
        for mode in args.modes:
            rows += run_mode(ctx, mode, args, segments, model, redis_proc.address, work)
    finally:
        redis_proc.stop()
    device = "CPU"
    if args.device == "cuda":
        import torch

        device = torch.cuda.get_device_name()
    print(f"\n{device}, {mp.cpu_count()} cores; {args.decoders} decode processes ({args.decode}"
          f"{', skip_unsampled' if args.skip_unsampled else ''}), 1 encoder, "
          f"{args.memory} memory "
          f"writers (recent_frames {args.recent_frames}); batch {args.batch}; {args.seconds:g} s per trial; "
          f"{time.strftime('%Y-%m-%d')}")
    print("| sampling | streams | segments measured | p50 s | p99 s | max s | late | decode util | encode util "
          "| memory util | within bound |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode, r in rows:
        print(f"| {mode} | {r['streams']} | {r['segments']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} | "
              f"{r['late']} | {r['util']['decode']:.0%} | {r['util']['encode']:.0%} | {r['util']['memory']:.0%} | "
              f"{'yes' if r['p99'] <= args.bound_s else 'no'} |")
    return 0


def build_model(work: Path, device: str) -> Path:
    if device == "cuda":
        import torch
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        torch.manual_seed(0)
        root = work / "siglip-b16"
        SiglipVisionModel(SiglipVisionConfig()).save_pretrained(root)
        SiglipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(root)
        return root
    from operators.tiny_models import build_tiny_clip

    return build_tiny_clip(work / "tiny-clip")


def run_mode(ctx, mode: str, args, segments: list, model: Path, redis_url: str, work: Path) -> list:
    decode_q, encode_q, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    memory_qs = [ctx.Queue() for _ in range(args.memory)]
    busy = {stage: ctx.Value("d", 0.0) for stage in ("decode", "encode", "memory", "encode calls")}
    counts = {"decode": args.decoders, "encode": 1, "memory": args.memory, "encode calls": 1}
    ready = ctx.Event()
    procs = [ctx.Process(target=decode_actor, args=(mode, args.decode, args.skip_unsampled, segments, decode_q, encode_q,
                                                    busy["decode"]))
             for _ in range(args.decoders)]
    procs.append(ctx.Process(target=encode_actor, args=(model, args.device, args.batch, encode_q, memory_qs,
                                                        busy["encode"], busy["encode calls"], ready)))
    procs += [ctx.Process(target=memory_actor, args=(redis_url, work / f"faiss-{mode}-{i}", q, results,
                                                     busy["memory"], args.recent_frames))
              for i, q in enumerate(memory_qs)]
    # One core per actor, as Ray gives an actor with num_cpus=1 (OMP_NUM_THREADS=1): FFmpeg, FAISS and torch
    # would otherwise each start a thread per core in every process and the host would thrash.
    threads = [1] * args.decoders + [ENCODER_THREADS] + [1] * args.memory
    for p, n in zip(procs, threads):
        os.environ["OMP_NUM_THREADS"] = str(n)
        p.start()
    rows = []
    per_segment = 1 if mode == "keyframes" else int(SEGMENT_S)
    try:
        while not ready.wait(1.0):  # the encoder loads its model; fail at once if it died doing so
            if not procs[args.decoders].is_alive():
                raise SystemExit("the encoder process died before it was ready (its traceback is above)")
        # Warm-up trial: CUDA kernels, the decoders' first segments, Redis connections.
        trial(8, 8.0, f"{mode}-warm", decode_q, results, busy, counts, per_segment)
        for n in args.streams:
            r = trial(n, args.seconds, f"{mode}-{n}", decode_q, results, busy, counts, per_segment)
            rows.append((mode, r))
            print(f"{mode} N={n}: p50 {r['p50']:.2f} s, p99 {r['p99']:.2f} s, late {r['late']}, util "
                  + ", ".join(f"{k} {v:.0%}" for k, v in r["util"].items())
                  + f"; decode {r['decode_ms']:.1f} ms a segment; encoder {r['encode_ms']:.1f} ms a call, "
                  f"{r['frames_per_call']:.1f} frames a call", flush=True)
            drain(results)
            if r["p99"] > args.bound_s:
                break
    finally:
        for _ in range(args.decoders):
            decode_q.put(None)
        encode_q.put(None)
        for q in memory_qs:
            q.put(None)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return rows


def drain(results: mp.Queue) -> None:
    """Wait until the last trial's stragglers have landed (or give up after DRAIN_S), so trials stay apart."""
    quiet_since = time.time()
    while time.time() - quiet_since < 1.0 and time.time() - quiet_since < DRAIN_S:
        try:
            results.get(timeout=0.2)
            quiet_since = time.time()
        except queue.Empty:
            pass


if __name__ == "__main__":
    raise SystemExit(main())
