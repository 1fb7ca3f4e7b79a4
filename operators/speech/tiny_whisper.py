"""Random-weight Whisper checkpoints of any shape, saved like a real one, for tests and GPU benchmarks.

No Whisper checkpoint can be downloaded where the tests run, so tests build a tiny one and load it through
the same ``from_pretrained`` path that production uses for ``openai/whisper-*``; the benchmark builds the
shapes of whisper-small and whisper-large-v3 the same way. Their transcripts mean nothing.

The tokenizer is a real Whisper (byte-level BPE) tokenizer with the 256 byte tokens and no merges, plus the
special tokens generation needs (start of transcript, language, task, no-timestamps), so prompts are built
exactly as for a real checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

LANGUAGES = ("en", "de", "fr", "es")
SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", *(f"<|{lang}|>" for lang in LANGUAGES), "<|translate|>",
            "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")
TINY = dict(d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=1500, max_target_positions=64)
# The published shapes (their config.json), for benchmarks with random weights.
SMALL = dict(d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12,
             decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_source_positions=1500,
             max_target_positions=448)
LARGE_V3 = dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128,
                max_source_positions=1500, max_target_positions=448)
SHAPES = {"tiny": TINY, "small": SMALL, "large-v3": LARGE_V3}


def _tokenizer() -> WhisperTokenizer:
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(SPECIALS)})
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIALS[1:])})
    return tokenizer


def build_random_whisper(out: Path | str, shape: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Save a random-weight Whisper of ``shape`` (tiny, small, large-v3) with its processor to ``out``, its
    weights in ``dtype`` (large-v3 is 6 GB in float32, 3 GB in float16)."""
    out = Path(out)
    if (out / "config.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = _tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIALS}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    config = WhisperConfig(vocab_size=len(tokenizer), pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                           decoder_start_token_id=sot,
                           **SHAPES[shape])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        is_multilingual=True,
        lang_to_id={f"<|{lang}|>": ids[f"<|{lang}|>"] for lang in LANGUAGES},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
        begin_suppress_tokens=[eot], suppress_tokens=[])
    model.to(getattr(torch, dtype)).save_pretrained(tmp)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer).save_pretrained(tmp)
    (tmp / "livelens-random-whisper").write_text("random weights: transcripts mean nothing\n")
    tmp.rename(out)
    return out
