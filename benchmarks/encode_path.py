"""The GPU encode path against its own tower (issue 18): what the tower's settings give, and how close
encode-and-compress comes to the bare tower on the same batch.

    python benchmarks/encode_path.py [--batch 512] [--streams 64] [--sizes 640x360 224x224] [--steps 10]
                                     [--parts tower path] [--compile] [--preprocess torch triton]

tower: SigLIP-B/16's vision tower (random weights, bf16) on one batch, frames/s of the forward pass alone
    (CUDA events, median over --steps batches after warm-up, inputs rotated among 4 sets), under the
    settings that can differ between two "plain" runs: how the model is built (constructor vs
    from_pretrained), the attention kernel (transformers' default for the build, SDPA, eager), autograd
    (enabled, no_grad, inference_mode), the pixels (uniform noise vs the token-economy benchmark's mostly
    still synthetic frames), torch.compile. The SM clock and board power are read after each row, and a
    8192^3 bf16 matrix product gives the card's own FLOP ceiling.
path: --streams streams x (batch / streams) frames of --sizes, uint8 on the host as decode actors hand them
    over, consecutive segments of each stream (half still, half a moving square). Frames/s of
    - the bare tower on the same frames already resized on the device (the ceiling),
    - VisionEncoder.encode + TokenDropCompressor.compress (host-side drop and pruning, every token copied back),
    - EncodeCompressor (operators/encode_compress.py) at chunk sizes batch, batch/2, batch/4, one call at a
      time (process) and fed continuously (the next call submitted before this one is collected), for each
      --preprocess (encode.preprocess: torch, or triton's single-read resize and cells),
    each with pixel-mode drop and pruning to 60/196 (the gpu profile's compression), wall clock per call
    including every host copy, median over --steps calls.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GFLOP_PER_FRAME = 37.8  # SigLIP-B/16 at 224 px, 196 tokens (gpu-anchor.md)


def gpu_state() -> str:
    out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu", "--format=csv,noheader"],
                         capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


def matmul_tflops() -> float:
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    stop.record()
    stop.synchronize()
    return 2 * 8192**3 * 20 / (start.elapsed_time(stop) / 1000) / 1e12


def build_siglip(root: Path) -> Path:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig()).save_pretrained(root)
    SiglipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(root)
    return root


def synthetic_frames(n: int, height: int, width: int, seed: int, per_stream: int = 8) -> np.ndarray:
    """Per stream of ``per_stream`` frames: a still random background, a square moving over the second half."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n, height, width, 3), np.uint8)
    side = max(8, height // 6)
    for s in range(0, n, per_stream):
        frames[s : s + per_stream] = rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8)
        for i in range(per_stream // 2, per_stream):
            if s + i < n:
                top, left = (i * 13) % (height - side), (i * 29) % (width - side)
                frames[s + i, top : top + side, left : left + side] = rng.integers(0, 256, 3)
    return frames


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames).cuda().permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return ((x / 255.0 - 0.5) / 0.5).to(torch.bfloat16)


def time_tower(forward, inputs: list[torch.Tensor], steps: int, grad: str) -> float:
    """Median frames/s of ``forward`` over ``steps`` batches, CUDA events, inputs rotated."""
    context = {"inference_mode": torch.inference_mode, "no_grad": torch.no_grad,
               "enabled": torch.enable_grad}[grad]
    times = []
    with context():
        for i in range(steps + 3):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            forward(inputs[i % len(inputs)])
            stop.record()
            stop.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(stop) / 1000)
    return len(inputs[0]) / statistics.median(times)


def tower_rows(model_dir: Path, batch: int, steps: int, with_compile: bool) -> list[str]:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    noise = [torch.rand(batch, 3, 224, 224, device="cuda").mul(2).sub(1).to(torch.bfloat16) for _ in range(4)]
    still = [to_pixels(synthetic_frames(batch, 224, 224, seed)) for seed in range(4)]

    def constructed(attn: str | None):
        torch.manual_seed(0)
        config = SiglipVisionConfig() if attn is None else SiglipVisionConfig(attn_implementation=attn)
        return SiglipVisionModel(config).to("cuda", torch.bfloat16).eval()

    def loaded(attn: str):
        model = SiglipVisionModel.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation=attn)
        return model.cuda().eval()

    rows = [
        ("constructor (token_economy.py's build)", lambda: constructed(None), "enabled", noise),
        ("constructor", lambda: constructed(None), "no_grad", noise),
        ("constructor", lambda: constructed(None), "inference_mode", noise),
        ("constructor", lambda: constructed(None), "inference_mode", still),
        ("from_pretrained, sdpa", lambda: loaded("sdpa"), "inference_mode", noise),
        ("from_pretrained, sdpa", lambda: loaded("sdpa"), "inference_mode", still),
        ("from_pretrained, eager", lambda: loaded("eager"), "inference_mode", noise),
    ]
    lines = ["| build | attention (resolved) | autograd | pixels | compile | frames/s | TFLOP/s | SM MHz, W, C after |",
             "| --- | --- | --- | --- | --- | ---: | ---: | --- |"]

    def add(name, model, grad, pixels, compiled, forward):
        fps = time_tower(forward, pixels, steps, grad)
        lines.append(f"| {name} | {model.config._attn_implementation} | {grad} | "
                     f"{'noise' if pixels is noise else 'mostly still'} | {compiled} | {fps:,.0f} | "
                     f"{fps * GFLOP_PER_FRAME / 1000:.0f} | {gpu_state()} |")
        print(lines[-1], flush=True)

    for name, make, grad, pixels in rows:
        model = make()
        add(name, model, grad, pixels, "no", lambda x, m=model: m(pixel_values=x))
        del model
    if with_compile:
        model = loaded("sdpa")
        for mode in ("default", "reduce-overhead"):
            started = time.perf_counter()
            forward = torch.compile(lambda x, m=model: m(pixel_values=x).last_hidden_state, mode=mode, dynamic=False)
            with torch.inference_mode():
                forward(noise[0])
            torch.cuda.synchronize()
            add("from_pretrained, sdpa", model, "inference_mode", noise,
                f"{mode} ({time.perf_counter() - started:.0f} s to compile)", forward)
            add("from_pretrained, sdpa", model, "inference_mode", still, mode, forward)
            torch._dynamo.reset()
    return lines


def stream_batches(frames: np.ndarray, streams: int, step: int):
    from operators.frames import FrameBatch, SegmentInfo

    per = len(frames) // streams
    out = []
    for s in range(streams):
        info = SegmentInfo("bench", f"s{s}", step, 1.7e9 + step * per, float(step * per), float(per))
        out.append(FrameBatch(info, step * per + np.arange(per, dtype=float), frames[s * per : (s + 1) * per]))
    return out


@dataclass(frozen=True)
class Allocations:
    """What the CUDA allocators made: pinned host blocks (cudaHostAlloc, and the ms spent in it) and device
    blocks (cudaMalloc). A call that makes none has only its own work to be slow about."""

    pinned_blocks: int = 0
    pinned_ms: float = 0.0
    device_blocks: int = 0

    @classmethod
    def so_far(cls) -> Allocations:
        host, device = torch.cuda.host_memory_stats(), torch.cuda.memory_stats()
        return cls(host.get("num_host_alloc", 0), host.get("host_alloc_time.total", 0) / 1000,
                   device.get("num_device_alloc", 0))

    def __add__(self, other: Allocations) -> Allocations:
        return Allocations(self.pinned_blocks + other.pinned_blocks, self.pinned_ms + other.pinned_ms,
                           self.device_blocks + other.device_blocks)

    def __sub__(self, other: Allocations) -> Allocations:
        return Allocations(self.pinned_blocks - other.pinned_blocks, self.pinned_ms - other.pinned_ms,
                           self.device_blocks - other.device_blocks)


@dataclass
class CallTimes:
    """Host wall seconds of each submit and collect of a ``steady`` run, and what each allocated: one long call
    (a stall) and a slow steady state read alike in frames/s, and differently here (benchmarks/encode_stalls.py)."""

    submit: list[float] = field(default_factory=list)
    collect: list[float] = field(default_factory=list)
    submit_made: list[Allocations] = field(default_factory=list)
    collect_made: list[Allocations] = field(default_factory=list)


def steady(fused, frames: np.ndarray, streams: int, steps: int, first_step: int, warmup: int = 3,
           calls: CallTimes | None = None) -> float:
    """Frames/s of a continuously fed EncodeCompressor: each call's batches submitted before the last is collected;
    each call's time and allocations into ``calls`` when given. The first ``warmup`` calls are not timed: a fresh
    compressor keeps its streams' first frames whole, and its first calls fill the allocator's caches (one untimed
    run read 49% of the tower where the next read 78%)."""

    def timed(kind: str, call, *args):  # kind: "submit" or "collect", the CallTimes fields it goes into
        if calls is None:  # reading the allocators' statistics costs host time: only when asked for
            return call(*args)
        before, at = Allocations.so_far(), time.perf_counter()
        out = call(*args)
        getattr(calls, kind).append(time.perf_counter() - at)
        getattr(calls, f"{kind}_made").append(Allocations.so_far() - before)
        return out

    for step in range(first_step, first_step + warmup):
        fused.process(stream_batches(frames, streams, step))
    first_step += warmup
    torch.cuda.synchronize()
    started = time.perf_counter()
    pending = timed("submit", fused.submit, stream_batches(frames, streams, first_step))
    for step in range(first_step + 1, first_step + steps):
        following = timed("submit", fused.submit, stream_batches(frames, streams, step))
        timed("collect", fused.collect, pending)
        pending = following
    fused.collect(pending)
    torch.cuda.synchronize()
    return len(frames) * steps / (time.perf_counter() - started)


def path_rows(model_dir: Path, batch: int, streams: int, sizes: list[str], steps: int, with_compile: bool,
              profile: bool = False, preprocessing: tuple[str, ...] = ("torch",)) -> list[str]:
    from operators.compress import TokenDropCompressor
    from operators.device_compress import DeviceTokenCompressor
    from operators.encode import VisionEncoder
    from operators.encode_compress import EncodeCompressor
    from pipelines.config import CompressConfig, DropConfig, EncodeConfig, PruneConfig

    compress, drop, prune = CompressConfig(), DropConfig(mode="pixel"), PruneConfig()
    lines = ["| frames | path | chunk | compile | frames/s | of bare tower | tokens kept |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for size in sizes:
        width, height = map(int, size.split("x"))
        frames = synthetic_frames(batch, height, width, seed=7, per_stream=batch // streams)
        bare_config = EncodeConfig(device="cuda", dtype="bfloat16", batch_frames=batch)
        encoder = VisionEncoder(bare_config, model_dir)
        pixels = [to_pixels(frames)]
        bare = time_tower(lambda x: encoder._forward(x), pixels, steps, "inference_mode")
        lines.append(f"| {size} | bare tower (frames resized on the device) | {batch} | no | {bare:,.0f} | 100% | |")
        print(lines[-1], flush=True)

        def timed(call) -> tuple[float, float]:
            times, kept = [], 0.0
            for step in range(steps + 2):
                inputs = stream_batches(frames, streams, step)
                torch.cuda.synchronize()
                started = time.perf_counter()
                out = call(inputs)
                torch.cuda.synchronize()
                if step >= 2:
                    times.append(time.perf_counter() - started)
                    kept = sum(int(o.kept.sum()) for o in out) / (batch * encoder.tokens_per_frame)
            return batch / statistics.median(times), kept

        compressor = TokenDropCompressor(compress, drop, prune)
        fps, kept = timed(lambda inputs: [compressor.compress(f, b.images)
                                          for f, b in zip(encoder.encode(inputs), inputs)])
        lines.append(f"| {size} | VisionEncoder.encode + TokenDropCompressor (before) | {batch} | no | {fps:,.0f} | "
                     f"{fps / bare:.0%} | {kept:.1%} |")
        print(lines[-1], flush=True)
        for preprocess, compiled in itertools.product(preprocessing, [False, True] if with_compile else [False]):
            for chunk in ((batch, batch // 4) if compiled else (batch, batch // 2, batch // 4)):
                config = EncodeConfig(device="cuda", dtype="bfloat16", batch_frames=chunk, compile=compiled,
                                      preprocess=preprocess)
                fused = EncodeCompressor(VisionEncoder(config, model_dir),
                                         DeviceTokenCompressor(compress, drop, prune, device="cuda"))
                fps, kept = timed(fused.process)
                lines.append(f"| {size} | EncodeCompressor.process, one call at a time, {preprocess} | {chunk} | "
                             f"{'yes' if compiled else 'no'} | {fps:,.0f} | {fps / bare:.0%} | {kept:.1%} |")
                print(lines[-1], flush=True)
                fps = steady(fused, frames, streams, steps, 100)
                lines.append(f"| {size} | EncodeCompressor, fed continuously, {preprocess} | {chunk} | "
                             f"{'yes' if compiled else 'no'} | {fps:,.0f} | {fps / bare:.0%} | |")
                print(lines[-1], flush=True)
        if profile:
            config = EncodeConfig(device="cuda", dtype="bfloat16", batch_frames=batch // 4)
            fused = EncodeCompressor(VisionEncoder(config, model_dir),
                                     DeviceTokenCompressor(compress, drop, prune, device="cuda"))
            for step in range(3):
                fused.process(stream_batches(frames, streams, step))
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                fused.process(stream_batches(frames, streams, 3))
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=25), flush=True)
        del encoder
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--sizes", nargs="+", default=["640x360", "224x224"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--parts", nargs="+", choices=["tower", "path"], default=["tower", "path"])
    parser.add_argument("--compile", action="store_true", help="Add torch.compile rows (minutes of compiling).")
    parser.add_argument("--profile", action="store_true", help="Print a torch profile of one EncodeCompressor call.")
    parser.add_argument("--preprocess", nargs="+", choices=["torch", "triton"], default=["torch"],
                        help="encode.preprocess values of the EncodeCompressor rows.")
    args = parser.parse_args()
    import transformers

    model_dir = build_siglip(Path(tempfile.mkdtemp(prefix="encode-path-")) / "siglip-b16")
    peak = matmul_tflops()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"bf16 8192^3 matmul {peak:.0f} TFLOP/s; SigLIP-B/16 {GFLOP_PER_FRAME} GFLOP/frame: FLOP limit "
          f"{peak * 1000 / GFLOP_PER_FRAME:,.0f} frames/s; {time.strftime('%Y-%m-%d')}", flush=True)
    if "tower" in args.parts:
        tower_rows(model_dir, args.batch, args.steps, args.compile)
    if "path" in args.parts:
        path_rows(model_dir, args.batch, args.streams, args.sizes, args.steps, args.compile, args.profile,
                  tuple(args.preprocess))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
