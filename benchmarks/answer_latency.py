"""Time to first token of the answer stage fed stored visual tokens (issue 18): a 7B-class decoder, 16 and 64
frames of evidence, every token of each frame against what compression keeps.

    python benchmarks/answer_latency.py [--frames 16 64] [--kept 196 60 39] [--repeats 10] [--device cuda]
                                        [--compile off on]

What runs: `operators.answer.Answerer` (the answer actor's code) around a LLaVA-architecture VLM whose language
model has Qwen2-7B's shape (28 layers, 3584 wide, 28 heads, 4 KV heads, 18944 MLP; 7.6 B parameters), built
from its transformers config with random weights in bf16 on the device (no checkpoint exists there, and random
weights cost the same time). Evidence: N frames, each with K stored tokens of the model's width (float16, as
memory stores them) and a text marker; the prompt is the actor's own (instructions, markers, question), through
the MiniLM tokenizer (--tokenizer; any tokenizer gives the same token counts to within a few per frame).

Time to first token = `Answerer.answer` with max_new_tokens=1: building the inputs (tokens to the device,
embedding the text, splicing) plus the prefill and the first token, wall clock around a CUDA synchronise,
after 3 warm-up calls; p50 and p90 of --repeats calls. "prefill only" times the bare forward over the same
inputs_embeds, to show what the actor adds. K=196 is every token of a SigLIP-B/16 frame; 60 is the pruning
budget (60/196, the most a frame keeps); 39 is 20% (the anchor's point).

--compile off on: every row with `answer.compile` off, then on (the same model, its norms and MLPs compiled in
place; the compile time is printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from operators.answer import Answerer, EvidenceItem  # noqa: E402
from operators.config import AnswerConfig  # noqa: E402

QWEN2_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6)
QUESTION = "When did the red truck enter the crossing, and which lane did it take?"


def build_model(device: str):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, Qwen2Config, SiglipVisionConfig

    config = LlavaConfig(vision_config=SiglipVisionConfig(num_hidden_layers=1).to_dict(),
                         text_config=Qwen2Config(**QWEN2_7B).to_dict(), image_token_index=QWEN2_7B["vocab_size"] - 1)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def evidence(frames: int, kept: int, width: int, rng: np.random.Generator) -> list[EvidenceItem]:
    start = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
    out = []
    for i in range(frames):
        tokens = (rng.standard_normal((kept, width), dtype=np.float32) * 0.02).astype(np.float16)
        positions = np.sort(rng.choice(196, kept, replace=False)).astype(np.int16)
        out.append(EvidenceItem(stream_id=f"cam-{i % 4}", t_start=2.0 * i, t_end=2.0 * i + 2.0,
                                wallclock_start=(start + timedelta(seconds=2 * i)).isoformat(),
                                score=1.0 - i / (2 * frames), tokens=tokens, positions=positions,
                                text="LANE 2 CLOSED" if i % 8 == 0 else ""))
    return out


def timed(fn, repeats: int, device: str) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--kept", type=int, nargs="+", default=[196, 60, 39])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokenizer", default="", help="Tokenizer dir; default: the MiniLM package's.")
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off"],
                        help="answer.compile settings to run: off, on, or off on")
    args = parser.parse_args()
    if args.compile not in (["off"], ["on"], ["off", "on"]):
        parser.error("--compile: off, on, or off on (on compiles the model in place, so nothing runs eager after it)")

    from transformers import AutoTokenizer

    from operators.tiny_models import minilm_tokenizer_dir

    built = time.perf_counter()
    model = build_model(args.device)
    params = sum(p.numel() for p in model.language_model.parameters()) if hasattr(model, "language_model") else \
        sum(p.numel() for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or minilm_tokenizer_dir())
    print(f"model built in {time.perf_counter() - built:.0f} s: language model {params / 1e9:.2f} B parameters",
          flush=True)
    rows = []
    for compiled in args.compile:
        started = time.perf_counter()
        answerer = Answerer.around(AnswerConfig(device=args.device, dtype="bfloat16", max_new_tokens=1,
                                                max_evidence_frames=max(args.frames), compile=compiled == "on"),
                                   model, tokenizer, "qwen2-7b-shape", random_weights=True)
        if compiled == "on":
            print(f"compiled in {time.perf_counter() - started:.1f} s", flush=True)
        rng = np.random.default_rng(0)  # the same evidence for every setting
        for frames in args.frames:
            for kept in args.kept:
                items = evidence(frames, kept, answerer.expects_token_dim, rng)
                rows.append((compiled, frames, kept, *measure(answerer, items, args)))
                print(f"compile {compiled}, {frames} frames x {kept} tokens: {rows[-1][3]} positions, TTFT p50 "
                      f"{1000 * rows[-1][4]:.1f} ms, p90 {1000 * rows[-1][5]:.1f} ms, prefill only "
                      f"{1000 * rows[-1][6]:.1f} ms", flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"\n{device}; torch {torch.__version__}; Qwen2-7B-shaped LLaVA, random weights, bf16, SDPA; "
          f"{datetime.now(UTC):%Y-%m-%d}")
    print("| answer.compile | frames | tokens a frame | prompt positions | TTFT p50 ms | TTFT p90 ms "
          "| prefill only ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for compiled, frames, kept, length, p50, p90, bare in rows:
        print(f"| {compiled} | {frames} | {kept} | {length:,} | {1000 * p50:.1f} | {1000 * p90:.1f} | "
              f"{1000 * bare:.1f} |")
    return 0


def measure(answerer: Answerer, items: list[EvidenceItem], args) -> tuple[int, float, float, float]:
    """(prompt positions, TTFT p50 and p90 s, median bare prefill s) of one evidence set."""
    length = answerer.build_inputs(QUESTION, items).length
    ttft = timed(lambda: answerer.answer(QUESTION, items), args.repeats, args.device)
    embeds = answerer.build_inputs(QUESTION, items).inputs_embeds

    def prefill():
        with torch.inference_mode():
            answerer.model(inputs_embeds=embeds, logits_to_keep=1)

    bare = timed(prefill, args.repeats, args.device)
    return length, float(np.percentile(ttft, 50)), float(np.percentile(ttft, 90)), float(np.median(bare))


if __name__ == "__main__":
    raise SystemExit(main())
