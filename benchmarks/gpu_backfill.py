"""Backfill on a GPU host, operators driven directly: hours of video per hour per GPU.

    python benchmarks/gpu_backfill.py --source CLIP.mp4 [--minutes 10] [--sizes 720p 1080p] [--gops 1 2]
                                      [--workers 15] [--batch 512] [--device cuda]

The backfill path without its Redis writes (measured on the CPU by benchmarks/backfill.py):
`iter_segments` cuts the file at keyframes, `ParallelDecoder` decodes segments in
worker processes (keyframe-aligned parallel decode), groups of up to --batch
frames go through `VisionEncoder` (SigLIP-B/16 vision tower, random weights,
bf16) and `TokenDropCompressor`, exactly as `Backfill.process` groups them.

The test files are --source (a real clip) scaled to each size, re-encoded with
libx264 at 25 fps with a keyframe every GOP seconds, and repeated (packets
copied, no re-encode) to --minutes. Sampling is 1 frame/s: with a 1 s GOP the
decoder runs keyframes-only, with 2 s it decodes every frame and keeps one a
second. Speed-up = stream seconds / wall seconds = hours of video per hour.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

FPS = 25
SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}


def make_video(source: Path, out: Path, size: tuple[int, int], gop_s: int, minutes: float) -> None:
    """A minute of ``source`` (looped) at ``size``, encoded once, then its packets repeated to ``minutes``."""
    base_s = min(60.0, minutes * 60)
    base = out.with_name(f"base-{out.name}")
    want = int(base_s * FPS)
    with av.open(str(base), "w") as dst:
        stream = dst.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.time_base = Fraction(1, FPS)
        stream.options = {"preset": "veryfast", "crf": "23",
                          "x264-params": f"keyint={FPS * gop_s}:min-keyint={FPS * gop_s}:scenecut=0"}
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
    repeats = max(1, round(minutes * 60 / base_s))
    with av.open(str(base)) as src, av.open(str(out), "w") as dst:
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream_from_template(in_stream)
        # New packets each time: muxing rescales a packet's timestamps in place.
        packets = [(bytes(p), p.pts, p.dts, p.is_keyframe) for p in src.demux(in_stream) if p.size]
        ticks = round(base_s / in_stream.time_base)
        for r in range(repeats):
            for data, pts, dts, key in packets:
                packet = av.Packet(data)
                packet.pts, packet.dts, packet.time_base = pts + r * ticks, dts + r * ticks, in_stream.time_base
                packet.is_keyframe = key
                packet.stream = out_stream
                dst.mux(packet)
    base.unlink()


def build_siglip(root: Path) -> Path:
    """SigLIP-B/16's vision tower with random weights, saved like a checkpoint (loaded via from_pretrained)."""
    import torch
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig()).save_pretrained(root)
    SiglipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(root)
    return root


def run(video: Path, model: Path, workers: int, batch: int, device: str, keyframes_only: bool) -> dict:
    import torch

    from operators.compress import TokenDropCompressor
    from operators.encode import VisionEncoder
    from operators.frames import FrameBatch, SegmentInfo
    from operators.parallel_decode import ParallelDecoder
    from pipelines.config import LivelensConfig
    from pipelines.segmenter import iter_segments

    config = LivelensConfig(decode={"sample_fps": 1.0, "keyframes_only": keyframes_only},
                            encode={"model": str(model), "device": device, "dtype": "bfloat16", "batch_frames": batch})
    encoder = VisionEncoder(config.encode, model)
    compressor = TokenDropCompressor(config.compress, config.drop, config.prune)

    def segments():
        for m in iter_segments(str(video)):
            yield SegmentInfo("bench", "gpu", m.seq, 1.7e9 + m.media_start_s, m.media_start_s, m.duration_s,
                              m.codec, m.container), m.payload

    stream_s = frames = kept = 0
    encode_s = 0.0
    started = time.perf_counter()
    with ParallelDecoder(config.decode, workers=workers) as decoder:
        group: list[FrameBatch] = []

        def flush() -> None:
            nonlocal kept, encode_s
            t0 = time.perf_counter()
            features = encoder.encode(group)
            if device == "cuda":
                torch.cuda.synchronize()
            encode_s += time.perf_counter() - t0
            for f in features:
                kept += int(compressor.compress(f).kept.sum())
            group.clear()

        for info, result in decoder.decode(segments()):
            if not isinstance(result, FrameBatch):
                raise RuntimeError(f"segment {info.seq}: {result}")
            if group and sum(len(b) for b in group) + len(result) > batch:
                flush()
            group.append(result)
            stream_s += info.duration_s
            frames += len(result)
        if group:
            flush()
    wall = time.perf_counter() - started
    return dict(stream_s=stream_s, wall_s=wall, speedup=stream_s / wall, frames=frames, encode_s=encode_s,
                tokens_kept=kept, tokens_total=frames * encoder.tokens_per_frame)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--sizes", nargs="+", default=["720p", "1080p"], choices=list(SIZES))
    parser.add_argument("--gops", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--workers", type=int, default=15)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpu-backfill-"))
    model = build_siglip(work / "siglip-b16")
    import torch

    gpu = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor()
    print(f"device: {gpu}; decode workers: {args.workers}; batch {args.batch}; sampling 1 fps; {args.minutes} min files")
    print("| size | GOP | decode | stream min | wall s | speed-up (h video / h) | frames | encoder busy | tokens kept |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for size in args.sizes:
        for gop in args.gops:
            video = work / f"{size}-gop{gop}.mp4"
            t0 = time.perf_counter()
            make_video(args.source, video, SIZES[size], gop, args.minutes)
            made = time.perf_counter() - t0
            keyframes_only = gop <= 1  # 1 fps sampling: every keyframe is a sample
            run(video, model, args.workers, args.batch, args.device, keyframes_only)  # warm-up: CUDA, workers
            r = run(video, model, args.workers, args.batch, args.device, keyframes_only)
            print(f"| {size} | {gop} s | {'keyframes' if keyframes_only else 'all frames'} | {r['stream_s'] / 60:.1f} "
                  f"| {r['wall_s']:.1f} | {r['speedup']:.0f}x | {r['frames']} | {r['encode_s'] / r['wall_s']:.0%} "
                  f"| {r['tokens_kept'] / r['tokens_total']:.1%} |  (file made in {made:.0f} s)", flush=True)
            video.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
