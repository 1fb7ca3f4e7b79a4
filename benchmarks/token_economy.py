"""Token economy benchmark: what frame skipping, the ViT token cache, token drop and pruning save, and what the
drop ratio's boundaries find. Prints markdown tables; --write appends them to BENCHMARKS.md.

    python benchmarks/token_economy.py [--fps 1] [--shape tiny-clip] [--write]
    python benchmarks/token_economy.py --device cuda --shape siglip-b16 --batch 512 [--write]

videos (CPU; skipped with --device cuda): the 60 s sample broadcast and the static-camera clip
    one-by-one-person-detection.mp4, sampled at --fps and cut into --segment-s segments, encoded by a
    random-weight tower of --shape:
    - token reduction: 1 - stored / all tokens, for the differential drop in feature mode (cosine 0.5) and
      pixel mode (0.03), each with and without pruning to 60/196 of the tokens per frame. Feature mode on
      random weights is not representative (methods.md, last section); pixel mode is.
    - frames skipped by FrameSkipper (default config), with the encoder's features reused for them.
    - ViT token cache (CachedViT, default config but --reference-every): fraction of token rows recomputed,
      encoder time full vs cached (best of 3 passes), mean per-token cosine of the cached output to full
      compute.
    - event boundaries from the pixel-mode drop ratio: precision / recall against the sample's scene cuts
      (+-1 s); boundaries found on the clip (it has no ground truth).
encoder (--device, --shape, --batch): synthetic streams of frames at the tower's input size, half of
    each stream in still stretches and half with a moving square, batch = streams x --frames-per-stream
    consecutive frames of each. Frames/s over --steps batches after one warm-up: full compute, CachedViT,
    FrameSkipper (skipped frames not encoded), and both. Encoder frames/s counts every frame (skipped ones
    too) over the encoder's time; the skipper's change test runs on the CPU and is reported apart, and
    in series with the encoder (one process doing both; in the pipeline it belongs beside decoding).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere, as benchmarks/ingest.py is

from operators.config import FrameSkipConfig, ViTCacheConfig  # noqa: E402
from operators.frame_skip import FrameSkipper  # noqa: E402
from operators.frames import FeatureBatch, FrameBatch, SegmentInfo  # noqa: E402
from operators.vit_cache import CachedViT, CacheStats  # noqa: E402

SHARED_CLIP = REPO.parent / "shared" / "data" / "real-video" / "one-by-one-person-detection.mp4"


@dataclass
class Tower:
    """A random-weight vision tower of a real architecture, with its preprocessing."""

    name: str
    model: torch.nn.Module
    size: int  # input side in pixels
    grid: tuple[int, int]  # patch grid
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    prefix: int  # CLS tokens ahead of the patches
    device: torch.device
    dtype: torch.dtype

    def pixels(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N,H,W,3] -> normalised [N,3,size,size], whole frame resized (no crop), as VisionEncoder does."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return ((x / 255.0 - mean) / std).to(self.dtype)

    def forward(self, pixels: torch.Tensor):
        if hasattr(self.model, "get_image_features"):
            return self.model.get_image_features(pixel_values=pixels)
        return self.model(pixel_values=pixels)

    def features(self, output) -> tuple[np.ndarray, np.ndarray]:
        """(patch tokens [N,T,D] float16, L2-normalised embedding [N,E]), as VisionEncoder stores them."""
        tokens = output.last_hidden_state[:, self.prefix :].to(torch.float16).cpu().numpy()
        embedding = F.normalize(output.pooler_output.float(), dim=-1).cpu().numpy()
        return tokens, embedding


def build_tower(shape: str, device: str) -> Tower:
    torch.manual_seed(0)
    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if shape == "siglip-b16":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        model = SiglipVisionModel(SiglipVisionConfig())  # defaults: 224 px, patch 16, 12 layers, hidden 768
        return Tower(shape, model.to(dev, dtype).eval(), 224, (14, 14), (0.5,) * 3, (0.5,) * 3, 0, dev, dtype)
    from transformers import CLIPModel
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    from operators.tiny_models import IMAGE_SIZE, PATCH, build_tiny_clip

    model = CLIPModel.from_pretrained(build_tiny_clip(Path(tempfile.mkdtemp(prefix="bench-clip-")) / "clip"))
    grid = (IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH)
    return Tower(shape, model.to(dev, dtype).eval(), IMAGE_SIZE, grid, tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD),
                 1, dev, dtype)


def sync(tower: Tower) -> None:
    if tower.device.type == "cuda":
        torch.cuda.synchronize()


def token_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean per-token cosine; on the CPU, where the frame skipper's filled tokens are."""
    return float(F.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=-1).mean())


# ---------------------------------------------------------------------------------------------
# videos


def decode(video: Path, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(pts, RGB frames) on a ``fps`` grid from the video's start, decoded with PyAV."""
    import av

    times, frames = [], []
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            if t + 1e-6 >= len(times) / fps:
                times.append(t)
                frames.append(frame.to_ndarray(format="rgb24"))
    return np.array(times), np.stack(frames)


def video_row(tower: Tower, name: str, video: Path, cuts: list[float] | None, fps: float, segment_s: float,
              vit_config: ViTCacheConfig) -> dict:
    from operators.boundaries import BoundaryDetector, match_boundaries
    from operators.compress import TokenDropCompressor
    from operators.config import BoundaryConfig, CompressConfig, DropConfig, PruneConfig

    pts, frames = decode(video, fps)
    per_segment = max(1, round(segment_s * fps))
    segments = [slice(i, i + per_segment) for i in range(0, len(pts), per_segment)]
    infos = [SegmentInfo("bench", name, k, 0.0, float(pts[s][0]), segment_s) for k, s in enumerate(segments)]
    pixels = [tower.pixels(frames[s]) for s in segments]

    with torch.inference_mode():
        outputs = [tower.forward(p) for p in pixels]
    batches = [FeatureBatch(info, pts[s], *tower.features(o), tower.grid)
               for info, s, o in zip(infos, segments, outputs)]

    variants = {f"{mode}{' + prune' if prune else ''}": TokenDropCompressor(
        CompressConfig(drop_threshold=0.5), DropConfig(mode=mode), PruneConfig() if prune else None)
        for mode in ("feature", "pixel") for prune in (False, True)}
    stored = dict.fromkeys(variants, 0)
    detector = BoundaryDetector(BoundaryConfig())
    found: list[float] = []
    for batch, s in zip(batches, segments):
        for label, compressor in variants.items():
            out = compressor.compress(batch, frames[s] if label.startswith("pixel") else None)
            stored[label] += int(out.kept.sum())
            if label == "pixel":
                found += out.pts_s[detector.detect(out)].tolist()
    total = sum(b.tokens.shape[0] * b.tokens.shape[1] for b in batches)

    skipper = FrameSkipper(FrameSkipConfig())
    for batch, info, s in zip(batches, infos, segments):
        frame_batch = FrameBatch(info, pts[s], frames[s])
        mask = skipper.plan(frame_batch)
        encoded = FeatureBatch(info, pts[s][mask], batch.tokens[mask], batch.embedding[mask], batch.grid)
        skipper.fill(frame_batch, encoded if mask.any() else None, mask)
    skip = next(iter(skipper.stats().values()))

    keys = [name] * len(pts)
    full_s = min(vit_pass(tower, pixels, keys, False, vit_config)[0] for _ in range(3))
    cached_s, cached, stats = min((vit_pass(tower, pixels, keys, True, vit_config) for _ in range(3)),
                                  key=lambda r: r[0])
    cosine = token_cosine(torch.cat(cached), torch.cat([o.last_hidden_state for o in outputs]))
    row = dict(video=name, frames=len(pts), reduction={k: 1 - v / total for k, v in stored.items()},
               skipped=skip.frames_skipped / skip.frames_seen, token_fraction=stats.token_fraction,
               cuts=stats.cuts, full_s=full_s, cached_s=cached_s, cosine=cosine, boundaries=len(found))
    if cuts is not None:
        row["precision"], row["recall"] = match_boundaries(found, cuts, tolerance_s=1.0)
    return row


def vit_pass(tower: Tower, pixels: list[torch.Tensor], keys: list[str], cached: bool,
             vit_config: ViTCacheConfig) -> tuple[float, list[torch.Tensor], CacheStats]:
    """(seconds, last hidden states, totals) of one pass over a stream's segments, full or through a fresh cache."""
    cache = CachedViT(tower.model, vit_config) if cached else None
    outputs, stats, done = [], [], 0
    with torch.inference_mode():
        sync(tower)
        start = time.perf_counter()
        for p in pixels:
            if cache is None:
                out, st = tower.forward(p), CacheStats(len(p), len(p), 0, 1.0)
            else:
                out, st = cache(p, keys[done : done + len(p)], forward=tower.forward)
            outputs.append(out.last_hidden_state)
            stats.append(st)
            done += len(p)
        sync(tower)
        seconds = time.perf_counter() - start
    frames = sum(s.frames for s in stats)
    total = CacheStats(frames, sum(s.references for s in stats), sum(s.cuts for s in stats),
                       sum(s.token_fraction * s.frames for s in stats) / frames)
    return seconds, outputs, total


# ---------------------------------------------------------------------------------------------
# encoder throughput on synthetic streams


def synthetic_frames(stream: int, start: int, count: int, size: int, stretch: int) -> np.ndarray:
    """Frames start..start+count of one synthetic stream: alternating still and moving stretches of ``stretch``
    frames (the stream's phase is shifted by its index, so a batch mixes both)."""
    rng = np.random.default_rng(stream)
    yy, xx = np.mgrid[:size, :size]
    top, bottom = rng.integers(0, 256, (2, 3))
    ramp = (yy / size)[..., None]
    background = top * (1 - ramp) + bottom * ramp
    background[((xx + yy) // (8 + stream % 8)) % 2 == 0] *= 0.8
    background = background.astype(np.uint8)
    side, speed = size // 5, size // 28
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        t = start + i + stream * (stretch // 2)
        # Still stretches keep the square where the last moving stretch left it.
        moved = (t // (2 * stretch)) * stretch + min(t % (2 * stretch), stretch)
        x = (moved * speed) % (size - side)
        out[i] = background
        out[i, size // 3 : size // 3 + side, x : x + side] = (255, 255, 255)
    return out


def encoder_rows(tower: Tower, batch: int, per_stream: int, steps: int, stretch: int,
                 vit_config: ViTCacheConfig) -> list[dict]:
    streams = max(1, batch // per_stream)
    keys = [f"s{s}" for s in range(streams) for _ in range(per_stream)]
    batches = []
    for step in range(steps + 1):
        images = np.concatenate([synthetic_frames(s, step * per_stream, per_stream, tower.size, stretch)
                                 for s in range(streams)])
        batches.append((images, tower.pixels(images)))

    def run(mode: str) -> dict:
        cache = CachedViT(tower.model, vit_config) if "cache" in mode else None
        skipper = FrameSkipper(FrameSkipConfig()) if "skip" in mode else None
        encode_s, plan_s, frames, fraction, skipped, outputs = 0.0, 0.0, 0, 0.0, 0, []
        for step, (images, pixels) in enumerate(batches):
            start = time.perf_counter()
            encode = np.ones(len(images), bool)
            if skipper is not None:  # on the CPU, from the frames: in the pipeline, beside decoding
                encode = np.concatenate([skipper.plan(frame_batch(images, s, per_stream, step))
                                         for s in range(len(images) // per_stream)])
            planned = time.perf_counter()
            rows = torch.from_numpy(np.flatnonzero(encode)).to(tower.device)
            tokens, stats = None, None
            with torch.inference_mode():
                if cache is not None and len(rows):
                    out, stats = cache(pixels[rows], [keys[i] for i in rows.tolist()], forward=tower.forward)
                    tokens = out.last_hidden_state
                elif len(rows):
                    tokens = tower.forward(pixels[rows]).last_hidden_state
            sync(tower)
            if step:  # the first batch warms up (and fills the caches)
                plan_s += planned - start
                encode_s += time.perf_counter() - planned
                frames += len(images)
                fraction += (stats.token_fraction if stats else 1.0) * int(encode.sum())
                skipped += int((~encode).sum())
            if skipper is not None:
                tokens = fill(skipper, images, per_stream, step, encode, tokens)
            outputs.append(tokens)
        return dict(mode=mode, fps=frames / encode_s, plan_ms=1000 * plan_s / frames,
                    fps_serial=frames / (encode_s + plan_s), skipped=skipped / frames,
                    token_fraction=fraction / max(1, frames - skipped), outputs=outputs)

    results = [run(mode) for mode in ("full", "cache", "skip", "skip + cache")]
    reference = results[0]["outputs"]
    for r in results:
        r["cosine"] = token_cosine(torch.cat(r.pop("outputs")[1:]), torch.cat(reference[1:]))
        r["speedup"] = r["fps"] / results[0]["fps"]
    return results


def frame_batch(images: np.ndarray, stream: int, per_stream: int, step: int) -> FrameBatch:
    info = SegmentInfo("bench", f"s{stream}", step, 0.0, float(step * per_stream), float(per_stream))
    return FrameBatch(info, step * per_stream + np.arange(per_stream, dtype=float),
                      images[stream * per_stream : (stream + 1) * per_stream])


def fill(skipper: FrameSkipper, images: np.ndarray, per_stream: int, step: int, encode: np.ndarray,
         tokens: torch.Tensor | None) -> torch.Tensor:
    """Every frame's tokens, skipped frames taking their stream's last encoded ones (what downstream sees)."""
    host = tokens.float().cpu().numpy() if tokens is not None else None
    done, full = 0, []
    for s in range(len(images) // per_stream):
        batch = frame_batch(images, s, per_stream, step)
        mask = encode[s * per_stream : (s + 1) * per_stream]
        rows = host[done : done + int(mask.sum())]
        done += len(rows)
        encoded = FeatureBatch(batch.segment, batch.pts_s[mask], rows, np.ones((len(rows), 1), np.float32), (1, 1))
        full.append(skipper.fill(batch, encoded if mask.any() else None, mask).tokens)
    return torch.from_numpy(np.concatenate(full))


# ---------------------------------------------------------------------------------------------
# report


def video_table(rows: list[dict], tower: Tower, fps: float, vit_config: ViTCacheConfig) -> list[str]:
    labels = list(rows[0]["reduction"])
    lines = [
        f"Token economy on real and sample video ({tower.name} random weights, {tower.device.type}, {fps:g} fps, "
        f"ViT reference every {vit_config.reference_every} frames):",
        "",
        "| video | frames | " + " | ".join(f"tokens dropped, {k}" for k in labels)
        + " | frames skipped | ViT tokens recomputed | ViT full s | ViT cached s | time saved | cosine to full "
        "| boundaries (P / R vs cuts +-1 s) |",
        "| --- | ---: | " + " | ".join("---:" for _ in labels) + " | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        found = f"{r['boundaries']} found"
        if "precision" in r:
            found += f" (P {r['precision']:.2f} / R {r['recall']:.2f})"
        lines.append(
            f"| {r['video']} | {r['frames']} | " + " | ".join(f"{100 * r['reduction'][k]:.1f}%" for k in labels)
            + f" | {100 * r['skipped']:.1f}% | {100 * r['token_fraction']:.1f}% ({r['cuts']} cuts) | "
            f"{r['full_s']:.3f} | {r['cached_s']:.3f} | {100 * (1 - r['cached_s'] / r['full_s']):.1f}% | "
            f"{r['cosine']:.4f} | {found} |")
    return lines


def encoder_table(rows: list[dict], tower: Tower, args: argparse.Namespace) -> list[str]:
    device = torch.cuda.get_device_name() if tower.device.type == "cuda" else "CPU"
    lines = [
        f"Encoder throughput, {tower.name} random weights, {device}, {str(tower.dtype).replace('torch.', '')}, "
        f"batch {args.batch} = {args.batch // args.frames_per_stream} streams x {args.frames_per_stream} frames, "
        f"half of each stream still ({args.stretch}-frame stretches), {args.steps} batches after a warm-up, "
        f"ViT reference every {args.reference_every} frames:",
        "",
        "| mode | encoder frames/s | speed-up | frames skipped | ViT tokens recomputed (encoded frames) | "
        "change test CPU ms/frame | frames/s, test and encoder in series | cosine to full |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['fps']:.1f} | {r['speedup']:.2f}x | {100 * r['skipped']:.1f}% | "
                     f"{100 * r['token_fraction']:.1f}% | {r['plan_ms']:.3f} | {r['fps_serial']:.1f} | "
                     f"{r['cosine']:.4f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shape", choices=["tiny-clip", "siglip-b16"], default="tiny-clip")
    parser.add_argument("--batch", type=int, default=64, help="Encoder part: frames per forward pass.")
    parser.add_argument("--frames-per-stream", type=int, default=16, help="Encoder part: consecutive frames of "
                        "each stream in a batch.")
    parser.add_argument("--steps", type=int, default=4, help="Encoder part: timed batches.")
    parser.add_argument("--stretch", type=int, default=8, help="Encoder part: frames per still or moving stretch.")
    parser.add_argument("--fps", type=float, default=1.0, help="Videos part: frames sampled per second.")
    parser.add_argument("--segment-s", type=float, default=4.0, help="Videos part: seconds per segment.")
    parser.add_argument("--reference-every", type=int, default=ViTCacheConfig().reference_every,
                        help="ViT token cache: every n-th frame of a stream is computed in full.")
    parser.add_argument("--parts", nargs="+", choices=["videos", "encoder"],
                        help="Default: both on cpu; encoder only on cuda (the videos part decodes on the CPU).")
    parser.add_argument("--write", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = parser.parse_args()
    parts = args.parts or (["encoder"] if args.device == "cuda" else ["videos", "encoder"])
    torch.set_grad_enabled(False)
    tower = build_tower(args.shape, args.device)
    vit_config = ViTCacheConfig(reference_every=args.reference_every)

    lines = [f"### Token economy ({time.strftime('%Y-%m-%d')})", "",
             f"Command: `python benchmarks/token_economy.py {shlex.join(sys.argv[1:])}`", ""]
    print("\n".join(lines), flush=True)
    if "videos" in parts:
        from pipelines.cli.sample_video import write_sample_video

        sample = Path(tempfile.mkdtemp(prefix="bench-video-")) / "broadcast.mp4"
        truth = write_sample_video(sample, duration_s=60.0)
        rows = [video_row(tower, "sample broadcast 60 s", sample, truth["scene_cuts"], args.fps, args.segment_s,
                          vit_config),
                video_row(tower, SHARED_CLIP.name, SHARED_CLIP, None, args.fps, args.segment_s, vit_config)]
        table = video_table(rows, tower, args.fps, vit_config)
        print("\n".join(table) + "\n", flush=True)
        lines += table + [""]
    if "encoder" in parts:
        rows = encoder_rows(tower, args.batch, args.frames_per_stream, args.steps, args.stretch, vit_config)
        table = encoder_table(rows, tower, args)
        print("\n".join(table), flush=True)
        lines += table + [""]
    if args.write:
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
