"""Where a fed-continuously encode path loses its rate: the host time of each submit and collect (issue 18).

    python benchmarks/encode_stalls.py

`benchmarks/encode_path.py`'s fed-continuously measurement (`steady`: 64 streams x 8 frames of 640x360 a call,
pixel-mode drop, pruning to 60/196, uncompiled, 3 untimed calls first), repeated 3 times per `encode.preprocess` and chunk
size (512, 256, 128), with the host's wall time of every `EncodeCompressor.submit` and `collect` call: a run that
reads low because of one long call (a stall) looks different from one that is slow throughout.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.encode_path import CallTimes, build_siglip, steady, synthetic_frames, time_tower, to_pixels  # noqa: E402
from operators.device_compress import DeviceTokenCompressor  # noqa: E402
from operators.encode import VisionEncoder  # noqa: E402
from operators.encode_compress import EncodeCompressor  # noqa: E402
from pipelines.config import CompressConfig, DropConfig, EncodeConfig, PruneConfig  # noqa: E402

STREAMS, CALLS = 64, 10


def main() -> int:
    if not torch.cuda.is_available():
        raise SystemExit("encode_stalls.py measures the GPU path: no CUDA device here")
    model = build_siglip(Path(tempfile.mkdtemp(prefix="encode-stalls-")) / "siglip-b16")
    frames = synthetic_frames(512, 360, 640, seed=7, per_stream=8)
    tower = VisionEncoder(EncodeConfig(device="cuda", dtype="bfloat16", batch_frames=512), model)
    bare = time_tower(lambda x: tower._forward(x), [to_pixels(frames)], 10, "inference_mode")
    print(f"{torch.cuda.get_device_name()}; {time.strftime('%Y-%m-%d')}; bare tower {bare:,.0f} frames/s")
    print("| preprocess | chunk | run | frames/s | of the bare tower | submit ms p50 / max | collect ms p50 / max |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for preprocess in ("triton", "torch"):
        for chunk in (512, 256, 128):
            config = EncodeConfig(device="cuda", dtype="bfloat16", batch_frames=chunk, preprocess=preprocess)
            fused = EncodeCompressor(VisionEncoder(config, model), DeviceTokenCompressor(
                CompressConfig(), DropConfig(mode="pixel"), PruneConfig(), device="cuda"))
            for run in range(3):
                calls = CallTimes()
                # Calls go on from run to run (3 untimed ones first): each stream's pts keep rising.
                fps = steady(fused, frames, STREAMS, CALLS, 1000 * run, warmup=3 if run == 0 else 0, calls=calls)
                submits, collects = calls.submit, calls.collect
                print(f"| {preprocess} | {chunk} | {run} | {fps:,.0f} | {fps / bare:.0%} | "
                      f"{1000 * statistics.median(submits):.1f} / {1000 * max(submits):.1f} | "
                      f"{1000 * statistics.median(collects):.1f} / {1000 * max(collects):.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
