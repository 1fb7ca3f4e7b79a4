"""Which model each stage loads, per profile.

The offline profile leaves model ids empty: the encoder then loads a tiny
random CLIP built under the data dir, through the same `from_pretrained` path a
real checkpoint takes. The gpu profile names real Hugging Face checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.config import LivelensConfig


def encoder_model(config: LivelensConfig) -> str:
    if config.encode.model:
        return config.encode.model
    from operators.tiny_models import build_tiny_clip

    return str(build_tiny_clip(Path(config.tiny_models_dir).resolve() / "tiny-clip"))


def answer_model(config: LivelensConfig) -> str | None:
    """None means extractive answers; the offline profile has no generative model by default."""
    return config.answer.model or None
