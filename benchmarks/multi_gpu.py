"""Encoder scaling across the GPUs of one host: one encoder replica per GPU, streams sharded across them.

    python benchmarks/multi_gpu.py [--gpus 1 2] [--streams 64] [--frames-per-stream 64] [--batch 512]

As the deployed pipeline places them: each replica is its own process that sees
exactly one GPU (CUDA_VISIBLE_DEVICES, as Ray sets it for an actor with
num_gpus=1) and runs `VisionEncoder` (SigLIP-B/16 vision tower, random weights,
bf16); stream s goes to replica `shard(s, replicas)` (pipelines/ray/placement.py), and each
replica encodes its streams' frames in batches of --batch. Frames are synthetic
224x224 pictures made in each replica (decode is not measured here; see
gpu_backfill.py). Throughput = all frames / wall time of the slowest replica,
after one warm-up pass each; the ratio to one GPU is the scaling.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path


def replica(gpu: int, model: str, streams: list[str], frames_per_stream: int, batch: int, out) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before torch initialises CUDA, as Ray does for an actor
    import numpy as np
    import torch

    from operators.config import EncodeConfig
    from operators.encode import VisionEncoder
    from operators.frames import FrameBatch, SegmentInfo

    encoder = VisionEncoder(EncodeConfig(model=model, device="cuda", dtype="bfloat16", batch_frames=batch), model)
    rng = np.random.default_rng(gpu)
    per_call = max(1, batch // max(1, len(streams)))
    batches = [FrameBatch(SegmentInfo("bench", s, 0, 0.0, 0.0, 2.0), np.arange(per_call, dtype=np.float64),
                          rng.integers(0, 256, (per_call, 224, 224, 3), dtype=np.uint8), [])
               for s in streams]
    calls = max(1, frames_per_stream // per_call)
    encoder.encode(batches)  # warm-up
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(calls):
        encoder.encode(batches)
    torch.cuda.synchronize()
    out.put((gpu, calls * per_call * len(streams), time.perf_counter() - started))


def run(gpus: int, model: str, streams: int, frames_per_stream: int, batch: int) -> tuple[int, float]:
    from pipelines.ray.placement import shard

    names = [f"stream-{i}" for i in range(streams)]
    assigned = {g: [s for s in names if shard(f"bench/{s}", gpus) == g] for g in range(gpus)}
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=replica, args=(g, model, assigned[g], frames_per_stream, batch, out))
             for g in range(gpus) if assigned[g]]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"replica exited with {p.exitcode}")
    frames = sum(r[1] for r in results)
    return frames, max(r[2] for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--frames-per-stream", type=int, default=64)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    import torch

    available = torch.cuda.device_count()
    if max(args.gpus) > available:
        raise SystemExit(f"asked for {max(args.gpus)} GPUs, this host has {available}")
    from benchmarks.gpu_backfill import build_siglip

    model = str(build_siglip(Path(tempfile.mkdtemp(prefix="multi-gpu-")) / "siglip-b16"))
    print(f"{torch.cuda.get_device_name()} x{available}; {args.streams} streams, batch {args.batch}")
    print("| GPUs (replicas) | frames | wall s | frames/s | scaling vs 1 GPU |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    for n in args.gpus:
        frames, wall = run(n, model, args.streams, args.frames_per_stream, args.batch)
        rate = frames / wall
        base = base or (rate if n == 1 else None)
        scaling = f"{rate / base:.2f}x" if base else "-"
        print(f"| {n} | {frames} | {wall:.2f} | {rate:,.0f} | {scaling} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
