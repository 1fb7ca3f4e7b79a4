"""Whisper on a GPU: real-time factor of livelens's Whisper path at the shapes of real checkpoints, random weights.

    python benchmarks/asr_whisper.py [--shapes small large-v3] [--batches 1 8 32] [--region-s 8] [--tokens 24]
                                     [--device cuda] [--dtype float16] [--write]

For each shape a random-weight checkpoint is built and saved (operators/speech/tiny_whisper.py) and loaded
through ``WhisperEngine`` as production loads ``openai/whisper-*``; batches of ``--batches`` speech regions
of ``--region-s`` seconds are recognised through ``WhisperEngine.recognise`` (log-mel on the device, then
``generate``). Random weights stop at arbitrary lengths, so every region is made to emit exactly ``--tokens``
tokens (EOS suppressed until then): ~3 tokens per second of speech is typical of English, so 24 for 8 s.
Wall time is measured after a warm-up batch (CUDA synchronised); RTF = wall seconds / audio seconds.
--write appends the table to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from operators.config import SpeechConfig  # noqa: E402
from operators.speech.audio import SAMPLE_RATE  # noqa: E402
from operators.speech.tiny_whisper import build_random_whisper  # noqa: E402
from operators.speech.whisper_engine import WhisperEngine  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["small", "large-v3"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--region-s", type=float, default=8.0)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rng = np.random.default_rng(0)
    rows = [f"| shape | batch | regions of {args.region_s:g} s, {args.tokens} tokens each | wall s per batch | RTF | "
            "audio hours per GPU hour | peak GiB |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            path = build_random_whisper(Path(tmp) / shape, shape=shape, dtype=args.dtype)
            for batch in args.batches:
                config = SpeechConfig(engine="whisper", model=str(path), device=args.device, dtype=args.dtype,
                                      batch_regions=batch)
                engine = WhisperEngine(config)
                engine.model.generation_config.min_new_tokens = args.tokens
                engine.max_new_tokens = args.tokens
                clips = [(0.1 * rng.standard_normal(round(args.region_s * SAMPLE_RATE))).astype(np.float32)
                         for _ in range(batch)]
                engine.recognise(clips)  # warm-up: kernels, allocator
                if args.device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sync(args.device)
                start = time.perf_counter()
                for _ in range(args.repeats):
                    engine.recognise(clips)
                sync(args.device)
                wall = (time.perf_counter() - start) / args.repeats
                rtf = wall / (batch * args.region_s)
                peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
                rows.append(f"| {shape} | {batch} | {batch} x {args.region_s:g} s | {wall:.3f} | {rtf:.4f} | "
                            f"{1 / rtf:.0f} | {peak:.1f} |")
                print(rows[-1], flush=True)
                del engine
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    print("\n".join(rows))
    if args.write:
        header = [f"\n## Whisper shapes on {device_name} ({datetime.now(UTC):%Y-%m-%d}, random weights, {args.dtype})",
                  "", f"Command: `python benchmarks/asr_whisper.py --shapes {' '.join(args.shapes)} --batches "
                  f"{' '.join(map(str, args.batches))} --region-s {args.region_s:g} --tokens {args.tokens} "
                  f"--dtype {args.dtype} --write`", ""]
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write("\n".join(header + rows) + "\n")


if __name__ == "__main__":
    main()
