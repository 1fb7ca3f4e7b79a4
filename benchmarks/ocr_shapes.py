"""What an OCR model run costs on onnxruntime when its input shape is new against one seen before (issue 18).

    python benchmarks/ocr_shapes.py [--device cpu|cuda] [--shapes 25]

The PP-OCRv4 detector on a whole 640x352 frame and on windows of random sizes (multiples of 32, as the
detector takes them), and the recogniser on one crop at random widths (320-1199 px, height 48), each shape
run once new and then three times more (the fastest of those is "seen"). On CUDA, with each of cuDNN's
algorithm searches: the reader asks for HEURISTIC (operators/ocr_engine.py). Wall and CPU ms (CPU time of
this process, every onnxruntime thread counted), medians over the shapes. Needs onnxruntime-gpu for cuda.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.ocr_engine import DETECTOR_MODEL, RECOGNISER_MODEL  # noqa: E402
from operators.onnx_session import CPU, open_session  # noqa: E402


def timed(session, x: np.ndarray) -> tuple[float, float]:
    name = session.get_inputs()[0].name
    cpu, wall = time.process_time(), time.perf_counter()
    session.run(None, {name: x})
    return 1000 * (time.perf_counter() - wall), 1000 * (time.process_time() - cpu)


def probe(label: str, provider, shapes: int, threads: int) -> None:
    rng = random.Random(0)
    cases = (("detector", DETECTOR_MODEL, (352, 640), [(rng.randrange(64, 353, 32), rng.randrange(64, 641, 32))
                                                 for _ in range(shapes)]),
             ("recogniser", RECOGNISER_MODEL, (48, 320), [(48, rng.randrange(320, 1200)) for _ in range(shapes)]))
    for model, path, base, sizes in cases:
        session = open_session(path, provider, threads=threads)
        x = np.random.rand(1, 3, *base).astype(np.float32)
        timed(session, x)
        steady = [timed(session, x) for _ in range(10)]
        first, seen = [], []
        for size in sizes:
            x = np.random.rand(1, 3, *size).astype(np.float32)
            first.append(timed(session, x))
            seen.append(min(timed(session, x) for _ in range(3)))

        def median(rows: list[tuple[float, float]], i: int) -> float:
            return statistics.median(row[i] for row in rows)

        print(f"| {label} | {model} | {median(steady, 0):.1f} / {median(steady, 1):.1f} | "
              f"{median(first, 0):.1f} / {median(first, 1):.1f} | {max(row[0] for row in first):.0f} | "
              f"{median(seen, 0):.1f} / {median(seen, 1):.1f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shapes", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (the CPU rows)")
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d')}; wall / CPU ms a run, medians over {args.shapes} shapes")
    print("| provider | model | its usual input (detector 640x352, recogniser 320x48) | a new shape | new, slowest "
          "| a seen shape |\n| --- | --- | ---: | ---: | ---: | ---: |")
    probe(f"CPU, {args.threads} threads", (CPU, {}), args.shapes, args.threads)
    if args.device == "cuda":
        for search in ("HEURISTIC", "DEFAULT", "EXHAUSTIVE"):
            probe(f"CUDA, cudnn_conv_algo_search {search}",
                  ("CUDAExecutionProvider", {"cudnn_conv_algo_search": search}), args.shapes, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
