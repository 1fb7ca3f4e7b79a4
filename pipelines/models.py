"""Which model each stage loads, per profile.

The offline profile leaves model ids empty: the encoder then loads a tiny
random CLIP built under the data dir, through the same `from_pretrained` path a
real checkpoint takes. The gpu profile names real Hugging Face checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config import LivelensConfig

if TYPE_CHECKING:  # torch and transformers load only in the processes that encode
    from operators.encode import VisionEncoder


def encoder_model(config: LivelensConfig) -> str:
    if config.encode.model:
        return config.encode.model
    from operators.tiny_models import build_tiny_clip

    return str(build_tiny_clip(Path(config.tiny_models_dir).resolve() / "tiny-clip"))


def vision_encoder(config: LivelensConfig) -> VisionEncoder:
    """The encoder live ingest and backfill share: same model, same token cache setting."""
    from operators.encode import VisionEncoder

    return VisionEncoder(config.encode, encoder_model(config),
                         token_cache=config.cache.vit if config.cache.token_cache else None)


def answer_model(config: LivelensConfig) -> str | None:
    """None means extractive answers; the offline profile has no generative model by default."""
    return config.answer.model or None
