"""VisionEncoder on tiny random models of each kind, loaded through from_pretrained like real checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    AutoImageProcessor,
    CLIPModel,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)

from operators.config import EncodeConfig
from operators.encode import UnsupportedModel, VisionEncoder
from operators.frames import FrameBatch, SegmentInfo, StageError

_TINY_VISION = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)


@pytest.fixture(scope="session")
def models(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shared tiny CLIP, LLaVA and Llama, plus two plain vision models (ViT; DINOv2 with 4 register tokens)."""
    root = tmp_path_factory.mktemp("vision-models")
    torch.manual_seed(0)
    plain = {
        "vit": ViTModel(ViTConfig(intermediate_size=64, **_TINY_VISION)),
        "dinov2": Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(mlp_ratio=2, num_register_tokens=4, **_TINY_VISION)
        ),
    }
    for name, model in plain.items():
        model.save_pretrained(root / name)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / name)
    return {**tiny_models, **{name: root / name for name in plain}}


@pytest.fixture(scope="session")
def encoders(models: dict[str, Path]) -> dict[str, VisionEncoder]:
    # batch_frames=4 so the 10 frames of the batching test need three forward passes.
    config = EncodeConfig(batch_frames=4)
    return {name: VisionEncoder(config, models[name]) for name in ("clip", "vlm", "vit", "dinov2")}


def frames(n: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def batch(stream: str, images: np.ndarray, start_s: float = 0.0) -> FrameBatch:
    info = SegmentInfo("t1", stream, 0, 1_700_000_000.0, start_s, 2.0)
    thumbnails = [f"{stream}-{i}".encode() for i in range(len(images))]
    return FrameBatch(info, start_s + np.arange(len(images)) * 0.5, images, thumbnails)


@pytest.mark.parametrize(
    ("name", "kind", "tokens_per_frame", "grid", "token_dim", "embedding_dim", "has_text_tower"),
    [
        ("clip", "dual", 64, (8, 8), 64, 32, True),  # CLS dropped: 8x8 patches; 32-d shared text/image space
        ("vlm", "vlm", 65, (1, 65), 64, 64, False),  # "full" feature strategy keeps CLS; dims of the Llama
        ("vit", "plain", 16, (4, 4), 32, 32, False),  # CLS dropped
        ("dinov2", "plain", 16, (4, 4), 32, 32, False),  # CLS and 4 registers dropped
    ],
)
def test_kind_and_token_shapes(encoders, name, kind, tokens_per_frame, grid, token_dim, embedding_dim, has_text_tower):
    encoder = encoders[name]
    assert (encoder.kind, encoder.tokens_per_frame, encoder.grid) == (kind, tokens_per_frame, grid)
    assert (encoder.token_dim, encoder.embedding_dim) == (token_dim, embedding_dim)
    assert encoder.has_text_tower == has_text_tower
    [out] = encoder.encode([batch("cam", frames(3, 72, 128, seed=0))])
    assert out.tokens.shape == (3, tokens_per_frame, token_dim) and out.tokens.dtype == np.float16
    assert out.embedding.shape == (3, embedding_dim) and out.embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.embedding, axis=1), 1.0, atol=1e-5)
    assert out.grid == grid and grid[0] * grid[1] == tokens_per_frame


@pytest.mark.parametrize("name", ["clip", "vlm", "dinov2"])
def test_batching_across_streams_matches_encoding_each_alone(encoders, name):
    encoder = encoders[name]
    # Three streams of different frame sizes; 3 + 5 + 2 frames cross the 4-frame pass boundaries.
    inputs = [
        batch("a", frames(3, 252, 448, 1), 10.0),
        batch("b", frames(5, 336, 448, 2)),
        batch("c", frames(2, 90, 160, 3)),
    ]
    together = encoder.encode(inputs)
    for given, out in zip(inputs, together):
        [alone] = encoder.encode([given])
        assert out.segment == given.segment and out.thumbnails == given.thumbnails
        np.testing.assert_array_equal(out.pts_s, given.pts_s)
        np.testing.assert_allclose(out.tokens.astype(np.float32), alone.tokens.astype(np.float32), atol=2e-3, rtol=2e-3)
        np.testing.assert_allclose(out.embedding, alone.embedding, atol=1e-5)
    # Different streams really got different features (no mix-up when splitting back).
    assert not np.allclose(together[0].embedding[0], together[1].embedding[0], atol=1e-3)


def test_dual_embedding_matches_the_checkpoint_run_with_its_own_processor(encoders, models):
    """Resize + normalise in torch equals the HF processor where no resize is needed (a frame at input size)."""
    images = frames(2, 64, 64, seed=4)
    processor = AutoImageProcessor.from_pretrained(models["clip"], backend="pil")
    model = CLIPModel.from_pretrained(models["clip"]).eval()
    with torch.inference_mode():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        reference = torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    np.testing.assert_allclose(encoders["clip"].embed_images(images), reference.numpy(), atol=1e-5)


def test_whole_frame_is_encoded_without_centre_crop(encoders):
    """A change at the left edge of a wide frame must reach the features (a centre crop would cut it away)."""
    wide = frames(1, 64, 256, seed=5)
    edited = wide.copy()
    edited[:, :, :24] = 255 - edited[:, :, :24]
    before, after = encoders["clip"].embed_images(np.concatenate([wide, edited]))
    assert np.abs(before - after).max() > 1e-3


def test_downscaling_averages_instead_of_aliasing(encoders):
    """A 1-pixel checkerboard shrunk 7x must look mid-grey to the model, not like a sample of black and white."""
    rows, cols = np.mgrid[:448, :448]
    checkerboard = np.repeat((((rows + cols) % 2) * 255).astype(np.uint8)[None, ..., None], 3, axis=-1)
    grey = np.full_like(checkerboard, 128)
    board, flat = encoders["clip"].embed_images(np.concatenate([checkerboard, grey]))
    assert np.abs(board - flat).max() < 0.02


def test_embed_images_is_the_frame_path(encoders):
    images = frames(5, 120, 200, seed=6)
    for name in ("clip", "vlm", "vit"):
        [out] = encoders[name].encode([batch("cam", images)])
        np.testing.assert_allclose(encoders[name].embed_images(images), out.embedding, atol=1e-6)


def test_embed_text_with_a_dual_encoder(encoders):
    clip = encoders["clip"]
    texts = ["a red car turns left", "a person walks in", "a red car turns left"]
    vectors = clip.embed_text(texts)
    assert vectors.shape == (3, clip.embedding_dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)
    assert clip.embed_text([]).shape == (0, clip.embedding_dim)


@pytest.mark.parametrize("name", ["vlm", "vit"])
def test_embed_text_fails_loudly_without_a_text_tower(encoders, name):
    with pytest.raises(StageError) as raised:
        encoders[name].embed_text(["a person walks in"])
    assert raised.value.code == "no_text_tower"


def test_empty_batch_yields_empty_features(encoders):
    clip = encoders["clip"]
    empty = FrameBatch(SegmentInfo("t1", "cam", 3, 0.0, 6.0, 2.0), np.zeros(0), np.zeros((0, 252, 448, 3), np.uint8))
    full = batch("other", frames(2, 252, 448, 7))
    out_empty, out_full = clip.encode([empty, full])
    assert out_empty.tokens.shape == (0, 64, 64) and out_empty.embedding.shape == (0, 32)
    assert len(out_full) == 2
    assert clip.encode([]) == []


def test_encoding_is_deterministic(encoders):
    given = batch("cam", frames(4, 100, 100, seed=8))
    first, second = encoders["vlm"].encode([given]), encoders["vlm"].encode([given])
    np.testing.assert_array_equal(first[0].tokens, second[0].tokens)
    np.testing.assert_array_equal(first[0].embedding, second[0].embedding)


def test_a_model_that_is_not_a_vision_model_is_refused_by_name(models):
    with pytest.raises(UnsupportedModel, match="LlamaModel"):
        VisionEncoder(EncodeConfig(), models["llm"])


# ---------------------------------------------------------------------------------------------
# The token cache inside the encoder (operators.vit_cache.CachedViT)


def smooth_frames(n: int, seed: int) -> np.ndarray:
    """A still picture with a little noise per frame: what the token cache is for."""
    base = frames(1, 32, 32, seed)[0].astype(np.int16)
    noise = np.random.default_rng(seed + 1).integers(-3, 4, (n, 32, 32, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("name", "fraction", "expect_cached"),
    [
        ("clip", 1.0, False),  # recompute everything: exactly full compute, every row recomputed
        ("clip", 0.25, True),
        ("vit", 0.25, True),
        ("dinov2", 0.25, False),  # not a supported family: full compute, and the log says so
    ],
)
def test_token_cache_stays_close_to_full_compute(models, encoders, name, fraction, expect_cached):
    from operators.config import ViTCacheConfig

    cached = VisionEncoder(EncodeConfig(batch_frames=4), models[name],
                           token_cache=ViTCacheConfig(reference_every=4, recompute_fraction=fraction))
    images = smooth_frames(8, seed=3)
    full = encoders[name].encode([batch("cam", images)])[0]
    out = cached.encode([batch("cam", images)])[0]
    cosine = (out.embedding * full.embedding).sum(axis=1)
    assert cosine.min() > 0.99, cosine
    stats = cached.stats()[("t1", "cam")]
    assert stats.frames == 8 and stats.seconds > 0
    if expect_cached:
        assert stats.token_fraction < 1.0
    else:
        assert stats.token_fraction == 1.0
        np.testing.assert_allclose(out.embedding, full.embedding, atol=1e-5)


def test_token_cache_keeps_streams_apart_and_query_calls_out(models):
    from operators.config import ViTCacheConfig

    cached = VisionEncoder(EncodeConfig(batch_frames=16), models["clip"],
                           token_cache=ViTCacheConfig(reference_every=4, recompute_fraction=0.25))
    cached.encode([batch("a", smooth_frames(4, seed=1)), batch("b", smooth_frames(4, seed=2))])
    cached.embed_images(smooth_frames(2, seed=5))  # a query: no stream, no cache, no stats
    assert set(cached.stats()) == {("t1", "a"), ("t1", "b")}
    cached.forget(("t1", "a"))
    assert set(cached.stats()) == {("t1", "b")}
