"""Where a fed-continuously encode path loses its rate: the host time of each submit and collect, and what the
CUDA allocators made during it (issue 18).

    python benchmarks/encode_stalls.py [--preprocess triton torch] [--chunks 512 256 128] [--runs 3] [--calls 10]

`benchmarks/encode_path.py`'s fed-continuously measurement (`steady`: 64 streams x 8 frames of 640x360 a call,
pixel-mode drop, pruning to 60/196, uncompiled, 3 untimed calls first), repeated --runs times per
`encode.preprocess` and chunk size, with the host's wall time of every `EncodeCompressor.submit` and `collect`
call: a run that reads low because of one long call (a stall) looks different from one that is slow throughout.
Each row also says what the longest call made (pinned host blocks through cudaHostAlloc and the ms spent in
it, device blocks through cudaMalloc) and what the whole run made: a stall that coincides with new pinned
blocks is the allocator's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import reduce
from operator import add
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.encode_path import (  # noqa: E402
    Allocations, CallTimes, build_siglip, steady, synthetic_frames, time_tower, to_pixels)
from operators.device_compress import DeviceTokenCompressor  # noqa: E402
from operators.encode import VisionEncoder  # noqa: E402
from operators.encode_compress import EncodeCompressor  # noqa: E402
from pipelines.config import CompressConfig, DropConfig, EncodeConfig, PruneConfig  # noqa: E402

STREAMS = 64


def made(allocations: Allocations) -> str:
    return f"{allocations.pinned_blocks} ({allocations.pinned_ms:.0f} ms) / {allocations.device_blocks}"


def row(preprocess: str, chunk: int, run: int, fps: float, bare: float, calls: CallTimes) -> str:
    times = calls.submit + calls.collect
    allocations = calls.submit_made + calls.collect_made
    longest = max(range(len(times)), key=times.__getitem__)
    kind = "submit" if longest < len(calls.submit) else "collect"
    return (f"| {preprocess} | {chunk} | {run} | {fps:,.0f} | {fps / bare:.0%} | "
            f"{1000 * statistics.median(calls.submit):.1f} | {1000 * statistics.median(calls.collect):.1f} | "
            f"{1000 * times[longest]:.1f} ({kind}) | {made(allocations[longest])} | "
            f"{made(reduce(add, allocations, Allocations()))} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preprocess", nargs="+", default=["triton", "torch"], choices=["triton", "torch"])
    parser.add_argument("--chunks", nargs="+", type=int, default=[512, 256, 128])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10, help="timed calls a run")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("encode_stalls.py measures the GPU path: no CUDA device here")
    model = build_siglip(Path(tempfile.mkdtemp(prefix="encode-stalls-")) / "siglip-b16")
    frames = synthetic_frames(512, 360, 640, seed=7, per_stream=8)
    tower = VisionEncoder(EncodeConfig(device="cuda", dtype="bfloat16", batch_frames=512), model)
    bare = time_tower(lambda x: tower._forward(x), [to_pixels(frames)], 10, "inference_mode")
    print(f"{torch.cuda.get_device_name()}; {time.strftime('%Y-%m-%d')}; bare tower {bare:,.0f} frames/s")
    print("| preprocess | chunk | run | frames/s | of the bare tower | submit ms p50 | collect ms p50 | longest call ms"
          " | it made: pinned blocks (ms) / device blocks | the run made |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for preprocess in args.preprocess:
        for chunk in args.chunks:
            config = EncodeConfig(device="cuda", dtype="bfloat16", batch_frames=chunk, preprocess=preprocess)
            fused = EncodeCompressor(VisionEncoder(config, model), DeviceTokenCompressor(
                CompressConfig(), DropConfig(mode="pixel"), PruneConfig(), device="cuda"))
            for run in range(args.runs):
                calls = CallTimes()
                # Calls go on from run to run (3 untimed ones first): each stream's pts keep rising.
                fps = steady(fused, frames, STREAMS, args.calls, 1000 * run, warmup=3 if run == 0 else 0, calls=calls)
                print(row(preprocess, chunk, run, fps, bare, calls), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
