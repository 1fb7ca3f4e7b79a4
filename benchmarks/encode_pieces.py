"""Where the encode-and-compress path's time goes on a GPU, piece by piece (issue 18).

    python benchmarks/encode_pieces.py [--sizes 640x360 224x224] [--batch 512]

The frames, streams and compression of `benchmarks/encode_path.py --parts path` (64 streams x 8 frames, pixel-mode
drop, pruning to 60/196, uncompiled, one chunk of --batch). Prints, per frame size:
- GPU ms a call of each device piece (CUDA events, median of 10): the bare tower on frames already resized, the
  resize and normalisation, the pixel cells, the copy of the frames from pinned memory; and the host's staging
  copy into pinned memory with 2 threads (the encode actor's num_cpus) and 16;
- frames/s of `EncodeCompressor` fed continuously (`encode_path.steady`) as built, with torch on 2 threads,
  and with parts of its work taken away: frames already in a pinned buffer (no host staging), frames already
  on the device (no staging and no copy), and the resize in bfloat16. What a variant gains is what that
  part costs the path;
- where the triton package is installed, the same for ``encode.preprocess = "triton"``: its two passes alone,
  and the path fed continuously with it.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.encode_path import build_siglip, steady, synthetic_frames, to_pixels  # noqa: E402
from operators.device_compress import DeviceTokenCompressor, cell_lattice, pixel_cells_on_device  # noqa: E402
from operators.encode import VisionEncoder  # noqa: E402
from operators.encode_compress import EncodeCompressor  # noqa: E402
from pipelines.config import CompressConfig, DropConfig, EncodeConfig, PruneConfig  # noqa: E402

STREAMS = 64


def gpu_ms(call, runs: int = 10) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(runs):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def host_ms(call, runs: int = 10) -> float:
    for _ in range(2):
        call()
    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)


def pieces(size: str, batch: int, model_dir: Path) -> None:
    width, height = map(int, size.split("x"))
    frames = synthetic_frames(batch, height, width, seed=7, per_stream=batch // STREAMS)
    encoder = VisionEncoder(EncodeConfig(device="cuda", dtype="bfloat16", batch_frames=batch), model_dir)
    triton_encoder = None
    if importlib.util.find_spec("triton"):
        triton_encoder = VisionEncoder(EncodeConfig(device="cuda", dtype="bfloat16", batch_frames=batch,
                                                    preprocess="triton"), model_dir)
    on_device = torch.from_numpy(frames).cuda()
    pinned = torch.empty(on_device.shape, dtype=torch.uint8, pin_memory=True)
    pinned.copy_(torch.from_numpy(frames))
    with torch.inference_mode():
        pixels = to_pixels(frames)
        tower = gpu_ms(lambda: encoder._forward(pixels))
        rows = {"bare tower (frames resized on the device)": tower,
                "resize + normalise": gpu_ms(lambda: encoder._normalise_frames(on_device)),
                "pixel cells": gpu_ms(lambda: pixel_cells_on_device(on_device, encoder.grid)),
                "copy to the device from pinned memory": gpu_ms(lambda: pinned.to("cuda", non_blocking=True))}
        if triton_encoder is not None:
            passes, lattice = triton_encoder.frame_passes, cell_lattice(on_device, encoder.grid)
            rows["resize + normalise, Triton (encode.preprocess=triton)"] = gpu_ms(
                lambda: triton_encoder._normalise_frames(on_device))
            rows["pixel cells, Triton"] = gpu_ms(lambda: passes.pixel_cells(on_device, lattice))
    for threads in (2, 16):
        torch.set_num_threads(threads)
        rows[f"host: staging into pinned memory, {threads} threads"] = host_ms(
            lambda: pinned.copy_(torch.from_numpy(frames)))
    torch.set_num_threads(16)
    print(f"\n{batch} frames of {size}; {torch.cuda.get_device_name()}; {time.strftime('%Y-%m-%d')}")
    print("| piece | ms a call |\n| --- | ---: |")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.1f} |")

    fused = EncodeCompressor(encoder, DeviceTokenCompressor(CompressConfig(), DropConfig(mode="pixel"), PruneConfig(),
                                                            device="cuda"))
    bare = batch / tower * 1000
    as_built, staged, as_built_cells = encoder._normalise_frames, fused._to_device, fused._pixel_cells
    if triton_encoder is not None:
        triton_fused = EncodeCompressor(triton_encoder, DeviceTokenCompressor(CompressConfig(), device="cuda"))

    def resize_bf16(images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.permute(0, 3, 1, 2).to(torch.bfloat16), size=encoder._input_hw, mode="bilinear",
                          antialias=True, align_corners=False).float()
        return ((x * encoder._scale - encoder._mean) / encoder._std).to(encoder._dtype)

    def from_pinned(arrays) -> torch.Tensor:
        with torch.cuda.stream(fused._copy_stream):
            out = pinned[: sum(len(a) for a in arrays)].to(fused._device, non_blocking=True)
        current = torch.cuda.current_stream(fused._device)
        current.wait_stream(fused._copy_stream)
        out.record_stream(current)
        return out

    def already_there(arrays) -> torch.Tensor:
        return on_device[: sum(len(a) for a in arrays)]

    print("| EncodeCompressor, fed continuously | frames/s | of the bare tower |\n| --- | ---: | ---: |")
    variants = [("as built", as_built, staged, 16), ("as built, torch on 2 threads", as_built, staged, 2),
                ("frames already in a pinned buffer (no host staging)", as_built, from_pinned, 16),
                ("frames already on the device (no staging, no copy)", as_built, already_there, 16),
                ("resize in bfloat16", resize_bf16, staged, 16)]
    if triton_encoder is not None:
        variants.append(("encode.preprocess = triton (resize and cells read the uint8 frames once)",
                         triton_encoder._normalise_frames, staged, 16))
    # Two rounds, the second in reverse order: the spread between them is the measurement's.
    for step, (name, normalise, to_device, threads) in enumerate(variants + variants[::-1]):
        encoder._normalise_frames, fused._to_device = normalise, to_device
        fused._pixel_cells = triton_fused._pixel_cells if "triton" in name else as_built_cells
        torch.set_num_threads(threads)
        fps = steady(fused, frames, STREAMS, 10, 1000 + 100 * step)
        print(f"| {name} | {fps:,.0f} | {fps / bare:.0%} |", flush=True)
    encoder._normalise_frames, fused._to_device, fused._pixel_cells = as_built, staged, as_built_cells
    torch.set_num_threads(16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["640x360", "224x224"])
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("encode_pieces.py measures the GPU path: no CUDA device here")
    model_dir = build_siglip(Path(tempfile.mkdtemp(prefix="encode-pieces-")) / "siglip-b16")
    for size in args.sizes:
        pieces(size, args.batch, model_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
