"""Frame skipping and the STC token cache inside the ViT, on frames and tiny random towers of known behaviour."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from operators.config import FrameSkipConfig, ViTCacheConfig
from operators.frame_skip import CELLS_PER_PATCH, FrameSkipper, SkipStats, patch_change, pixel_cells
from operators.frames import FeatureBatch, FrameBatch, SegmentInfo
from operators.vit_cache import CachedViT

# ------------------------------------------------------------------------------------------
# Pixel change test


@pytest.mark.parametrize(
    ("height", "width", "grid"),
    [(64, 64, (4, 4)), (90, 160, (4, 4)), (360, 640, (14, 14)), (16, 16, (4, 4))],
)
def test_pixel_cells_are_area_means_and_idempotent(height, width, grid):
    images = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    cells = pixel_cells(images, grid)
    assert cells.shape == (2, grid[0] * CELLS_PER_PATCH, grid[1] * CELLS_PER_PATCH, 3) and cells.dtype == np.float32
    np.testing.assert_allclose(cells.mean(axis=(1, 2)), images.mean(axis=(1, 2)), rtol=0.02)
    np.testing.assert_array_equal(pixel_cells(cells, grid), cells)  # cells of cells: shippable instead of frames


def test_pixel_cells_refuse_frames_smaller_than_the_lattice():
    with pytest.raises(ValueError, match="smaller"):
        pixel_cells(np.zeros((1, 8, 8, 3), np.uint8), (4, 4))


@pytest.mark.parametrize(
    ("region", "delta", "expected"),
    [
        ((slice(0, 16), slice(0, 16)), 51, {0: 0.2}),  # one whole patch of a 4x4 grid on 64x64, +51/255
        ((slice(0, 8), slice(0, 16)), 102, {0: 0.2}),  # half a patch, twice the change: the same mean
        ((slice(16, 32), slice(48, 64)), 255, {7: 1.0}),  # row 1, col 3
        ((slice(0, 0), slice(0, 0)), 0, {}),  # nothing changed
    ],
)
def test_patch_change_is_the_mean_absolute_difference_per_patch(region, delta, expected):
    before = np.zeros((64, 64, 3), np.uint8)
    after = before.copy()
    after[region] = delta
    change = patch_change(pixel_cells(after[None], (4, 4)), pixel_cells(before[None], (4, 4)), (4, 4))[0]
    want = np.zeros(16)
    for patch, value in expected.items():
        want[patch] = value
    np.testing.assert_allclose(change, want, atol=1e-6)


# ------------------------------------------------------------------------------------------
# FrameSkipper

H = W = 64
SKIP = FrameSkipConfig(grid=(4, 4), patch_threshold=0.03, changed_fraction=0.1, max_skip=3)


def frame_batch(images: np.ndarray, start_s: float = 0.0, stream: str = "cam-1") -> FrameBatch:
    info = SegmentInfo("t1", stream, int(start_s), 1_700_000_000.0 + start_s, start_s, 1.0)
    return FrameBatch(info, start_s + np.arange(len(images)) * 0.25, images, [b"jpg"] * len(images))


def with_patches(changed: int, level: int = 200) -> np.ndarray:
    """A 64x64 frame, grey, with the first ``changed`` of its 16 patches (4x4 grid) set to ``level``."""
    image = np.full((H, W, 3), 100, np.uint8)
    for p in range(changed):
        r, c = divmod(p, 4)
        image[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = level
    return image


def fake_encode(batch: FrameBatch, mask: np.ndarray) -> FeatureBatch | None:
    """Features that identify the frame: every token is its mean pixel value."""
    if not mask.any():
        return None
    images = batch.images[mask]
    tokens = np.repeat(images.mean(axis=(1, 2, 3))[:, None, None], 16, axis=1).repeat(2, axis=2)
    return FeatureBatch(batch.segment, batch.pts_s[mask], tokens.astype(np.float16),
                        np.ones((len(images), 4), np.float32), (4, 4))


@pytest.mark.parametrize(
    ("changed_patches", "encoded"),
    [
        ([0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 1, 0]),  # static: skipped, forced refresh after max_skip=3
        ([0, 1, 1, 2, 2, 2], [1, 0, 0, 1, 0, 0]),  # 1 of 16 patches (6%) < 10%: skipped; 2 vs 0 (12%) encoded
        ([0, 1, 2, 3, 4, 5], [1, 0, 1, 0, 1, 0]),  # slow drift adds up against the last ENCODED frame
        ([0, 16, 0, 16, 0, 16], [1, 1, 1, 1, 1, 1]),  # cuts every frame
    ],
)
def test_skip_plan_table(changed_patches, encoded):
    skipper = FrameSkipper(SKIP)
    batch = frame_batch(np.stack([with_patches(c) for c in changed_patches]))
    mask = skipper.plan(batch)
    np.testing.assert_array_equal(mask, np.array(encoded, bool))
    out = skipper.fill(batch, fake_encode(batch, mask), mask)
    # Every frame has features; a skipped frame carries the last encoded frame's.
    last_encoded = np.maximum.accumulate(np.where(mask, np.arange(len(mask)), 0))
    np.testing.assert_array_equal(out.tokens, fake_encode(batch, np.ones(len(mask), bool)).tokens[last_encoded])
    assert skipper.stats() == {("t1", "cam-1"): SkipStats(len(mask), int((~mask).sum()))}


@pytest.mark.parametrize("max_skip", [0, 1, 5])
def test_max_skip_bounds_consecutive_skips(max_skip):
    skipper = FrameSkipper(SKIP.model_copy(update={"max_skip": max_skip}))
    mask = skipper.plan(frame_batch(np.stack([with_patches(0)] * 12)))
    runs = np.diff(np.flatnonzero(np.append(mask, True))) - 1
    assert mask[0] and runs.max() == max_skip


def test_state_carries_across_batches_and_fill_reuses_the_cached_features():
    skipper = FrameSkipper(SKIP)
    first = frame_batch(np.stack([with_patches(0), with_patches(16)]))
    mask = skipper.plan(first)
    encoded_first = skipper.fill(first, fake_encode(first, mask), mask)
    second = frame_batch(np.stack([with_patches(16)] * 3), start_s=1.0)  # same as the last encoded frame
    mask = skipper.plan(second)
    assert not mask.any()
    out = skipper.fill(second, None, mask)
    np.testing.assert_array_equal(out.tokens, np.repeat(encoded_first.tokens[-1:], 3, axis=0))
    np.testing.assert_array_equal(out.embedding, np.repeat(encoded_first.embedding[-1:], 3, axis=0))
    assert out.grid == (4, 4) and out.thumbnails == second.thumbnails
    np.testing.assert_array_equal(out.pts_s, second.pts_s)


def test_plan_alone_changes_nothing_and_streams_are_separate():
    skipper = FrameSkipper(SKIP)
    batch = frame_batch(np.stack([with_patches(0)] * 2))
    skipper.fill(batch, fake_encode(batch, skipper.plan(batch)), skipper.plan(batch))
    later = frame_batch(np.stack([with_patches(16)]), start_s=1.0)
    assert skipper.plan(later).all() and skipper.plan(later).all()  # planned twice, never filled
    assert skipper.plan(frame_batch(np.stack([with_patches(0)]), start_s=1.0)).tolist() == [False]
    assert skipper.plan(frame_batch(np.stack([with_patches(0)]), stream="other")).tolist() == [True]


def test_skipper_snapshot_restore_and_forget():
    running = FrameSkipper(SKIP)
    batch = frame_batch(np.stack([with_patches(0), with_patches(5), with_patches(5)]))
    mask = running.plan(batch)
    running.fill(batch, fake_encode(batch, mask), mask)
    restored = FrameSkipper(SKIP)
    restored.restore(pickle.loads(pickle.dumps(running.snapshot())))
    assert restored.stats() == running.stats()
    nxt = frame_batch(np.stack([with_patches(5)] * 4), start_s=1.0)
    mask = running.plan(nxt)
    np.testing.assert_array_equal(restored.plan(nxt), mask)
    assert mask.tolist() == [False, False, True, False]  # the restored skip run reached max_skip=3 at frame 2
    np.testing.assert_array_equal(restored.fill(nxt, fake_encode(nxt, mask), mask).tokens,
                                  running.fill(nxt, fake_encode(nxt, mask), mask).tokens)
    restored.forget("t1", "cam-1")
    assert restored.plan(nxt)[0] and restored.stats() == {}
    with pytest.raises(ValueError, match="version"):
        restored.restore({"version": 0, "streams": []})


@pytest.mark.parametrize(
    ("mask", "rows", "message"),
    [
        ([True, False], 2, "encoded rows"),
        ([True, True], 1, "encoded rows"),
        ([False, True], 1, "ever encoded"),  # a new stream's first frame cannot be skipped
    ],
)
def test_fill_refuses_inconsistent_input(mask, rows, message):
    batch = frame_batch(np.stack([with_patches(0)] * len(mask)))
    encoded = fake_encode(batch, np.ones(len(mask), bool))
    encoded = FeatureBatch(batch.segment, batch.pts_s[:rows], encoded.tokens[:rows], encoded.embedding[:rows], (4, 4))
    with pytest.raises(ValueError, match=message):
        FrameSkipper(SKIP).fill(batch, encoded, np.array(mask))


def test_fill_refuses_features_of_another_shape():
    skipper = FrameSkipper(SKIP)
    batch = frame_batch(np.stack([with_patches(0)]))
    skipper.fill(batch, fake_encode(batch, np.array([True])), np.array([True]))
    later = frame_batch(np.stack([with_patches(16)]), start_s=1.0)
    wide = FeatureBatch(later.segment, later.pts_s, np.zeros((1, 9, 2), np.float16), np.ones((1, 4), np.float32),
                        (3, 3))
    with pytest.raises(ValueError, match="forget the stream"):
        skipper.fill(later, wide, np.array([True]))


# ------------------------------------------------------------------------------------------
# CachedViT

_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
             patch_size=8)


@pytest.fixture(scope="module")
def towers(tiny_models: dict[str, Path]) -> dict[str, tuple[torch.nn.Module, int]]:
    """(model, input size) per family: the shared tiny CLIP (dual), and tiny SigLIP and ViT vision models."""
    torch.manual_seed(0)
    return {
        "clip": (CLIPModel.from_pretrained(tiny_models["clip"]).eval(), 64),
        "siglip": (SiglipVisionModel(SiglipVisionConfig(**_TINY)).eval(), 32),
        "vit": (ViTModel(ViTConfig(**_TINY)).eval(), 32),
    }


def full(model: torch.nn.Module, pixels: torch.Tensor):
    with torch.inference_mode():
        if hasattr(model, "get_image_features"):
            return model.get_image_features(pixel_values=pixels)
        return model(pixel_values=pixels)


def pixels(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def token_cosine(a, b) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.last_hidden_state, b.last_hidden_state, dim=-1)


FAMILIES = ["clip", "siglip", "vit"]


@pytest.mark.parametrize("family", FAMILIES)
def test_recomputing_every_token_equals_full_compute(towers, family):
    model, size = towers[family]
    cache = CachedViT(model, ViTCacheConfig(recompute_fraction=1.0, cut_similarity=-1.0))
    frames = pixels(8, size, seed=1)
    streams = ["a", "b"] * 4  # two interleaved streams, each with references and partial frames
    out_1, stats_1 = cache(frames[:4], streams[:4])
    out_2, stats_2 = cache(frames[4:], streams[4:])  # partial frames here reuse references of the first call
    expected = full(model, frames)
    assert stats_1.references + stats_2.references == 4 and stats_2.token_fraction == 1.0 and not stats_2.fallback
    got = torch.cat([out_1.last_hidden_state, out_2.last_hidden_state])
    torch.testing.assert_close(got, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([out_1.pooler_output, out_2.pooler_output]), expected.pooler_output,
                               atol=1e-5, rtol=1e-5)


def test_every_layer_output_is_in_batch_order(towers):
    """Inside, rows are grouped references first; what each layer hands on (and hooks record) is in batch order."""
    model, size = towers["siglip"]
    frames = pixels(6, size, seed=15)
    streams = ["a", "a", "b", "a", "b", "b"]
    cache = CachedViT(model, ViTCacheConfig(recompute_fraction=1.0, cut_similarity=-1.0))
    out, _ = cache(frames, streams, forward=lambda p: model(pixel_values=p, output_hidden_states=True))
    with torch.inference_mode():
        expected = model(pixel_values=frames, output_hidden_states=True)
    assert len(out.hidden_states) == len(expected.hidden_states) == 3
    for got, want in zip(out.hidden_states, expected.hidden_states):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("content", "min_mean_cosine"),
    [
        ("identical", 1.0 - 1e-6),  # the cached outputs are exactly what full compute gives
        ("noise", 0.99),  # near-identical frames: sensor-like noise of 1% of the pixel range
        ("one_patch", 0.99),  # one patch changes completely, the rest is still
    ],
)
def test_static_content_stays_close_to_full_compute(towers, family, content, min_mean_cosine):
    model, size = towers[family]
    base = pixels(1, size, seed=2)
    frames = base.repeat(6, 1, 1, 1)
    if content == "noise":
        frames = frames + 0.02 * pixels(6, size, seed=3)
    if content == "one_patch":
        frames[1::2, :, :8, :8] = pixels(3, size, seed=4)[:, :, :8, :8]
    cache = CachedViT(model, ViTCacheConfig())
    out, stats = cache(frames, ["s"] * 6)
    cosine = token_cosine(out, full(model, frames))
    assert stats.references == 3 and stats.cuts == 0 and stats.token_fraction < 0.7
    assert cosine.mean() >= min_mean_cosine, f"mean per-token cosine {cosine.mean():.5f}"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_scene_cut_is_computed_in_full(towers, family):
    model, size = towers[family]
    still = pixels(1, size, seed=5).repeat(3, 1, 1, 1)
    frames = torch.cat([still, pixels(1, size, seed=6)])  # frame 3: another scene
    cache = CachedViT(model, ViTCacheConfig(reference_every=100))  # only the cut test makes references
    out, stats = cache(frames, ["s"] * 4)
    assert (stats.references, stats.cuts) == (1, 1)
    expected = full(model, frames)
    torch.testing.assert_close(out.last_hidden_state[3], expected.last_hidden_state[3], atol=1e-5, rtol=1e-5)
    # The frame after the cut is computed against the cut frame, now the reference: identical, so exact.
    after, stats = cache(frames[3:], ["s"])
    assert (stats.references, stats.cuts) == (0, 0)
    torch.testing.assert_close(after.last_hidden_state[0], expected.last_hidden_state[3], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("reference_every", "fraction", "frames", "references", "token_fraction"),
    [
        (2, 0.25, 6, 3, (3 * 16 + 3 * 4) / (6 * 16)),  # SigLIP: 16 tokens, 4 recomputed on partial frames
        (3, 0.25, 6, 2, (2 * 16 + 4 * 4) / (6 * 16)),
        (1, 0.25, 4, 4, 1.0),  # every frame a reference
        (2, 0.01, 2, 1, (16 + 1) / 32),  # at least one token
        (4, 0.5, 5, 2, (2 * 16 + 3 * 8) / (5 * 16)),
    ],
)
def test_reference_schedule_and_token_fraction(towers, reference_every, fraction, frames, references, token_fraction):
    model, size = towers["siglip"]
    cache = CachedViT(model, ViTCacheConfig(reference_every=reference_every, recompute_fraction=fraction,
                                            cut_similarity=-1.0))
    _, stats = cache(pixels(1, size, seed=7).repeat(frames, 1, 1, 1), ["s"] * frames)
    assert (stats.frames, stats.references, stats.cuts) == (frames, references, 0)
    assert stats.token_fraction == pytest.approx(token_fraction)


def test_streams_keep_separate_caches_and_batching_does_not_matter(towers):
    model, size = towers["clip"]
    a, b = pixels(1, size, seed=8) + 0.05 * pixels(4, size, seed=9), pixels(1, size, seed=10).repeat(4, 1, 1, 1)
    together = CachedViT(model, ViTCacheConfig())
    mixed = torch.stack([a[0], b[0], a[1], b[1], a[2], b[2]])
    out_mixed, _ = together(mixed, ["a", "b", "a", "b", "a", "b"])
    out_rest, _ = together(torch.stack([b[3], a[3]]), ["b", "a"])
    alone = CachedViT(model, ViTCacheConfig())
    for key, frames, rows in (("a", a, [0, 2, 4]), ("b", b, [1, 3, 5])):
        single = torch.cat([alone(frames[i : i + 1], [key])[0].last_hidden_state for i in range(4)])
        torch.testing.assert_close(out_mixed.last_hidden_state[rows], single[:3], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_rest.last_hidden_state[0 if key == "b" else 1], single[3], atol=1e-5,
                                   rtol=1e-5)


def test_forget_makes_the_next_frame_a_reference(towers):
    model, size = towers["vit"]
    cache = CachedViT(model, ViTCacheConfig(reference_every=10))
    frame = pixels(1, size, seed=11)
    cache(frame, ["s"])
    assert cache(frame, ["s"])[1].references == 0
    cache.forget("s")
    assert cache(frame, ["s"])[1].references == 1


def test_the_model_is_left_as_it_was(towers):
    model, size = towers["clip"]
    frames = pixels(2, size, seed=12)
    before = full(model, frames).last_hidden_state
    cache = CachedViT(model, ViTCacheConfig(recompute_fraction=0.1))
    cache(frames, ["s", "s"])
    assert all("forward" not in vars(layer) for layer in model.vision_model.encoder.layers)
    torch.testing.assert_close(full(model, frames).last_hidden_state, before, atol=0, rtol=0)


def test_an_unknown_architecture_falls_back_to_full_compute_loudly(caplog):
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(mlp_ratio=2, **{k: v for k, v in _TINY.items() if k != "intermediate_size"}))
    model.eval()
    with caplog.at_level(logging.ERROR, logger="operators.vit_cache"):
        cache = CachedViT(model, ViTCacheConfig())
    assert "Dinov2Layer" in caplog.text and "IN FULL" in caplog.text
    frames = pixels(3, 32, seed=13)
    out, stats = cache(frames, ["s"] * 3)
    assert stats.fallback and "Dinov2Layer" in stats.fallback
    assert (stats.references, stats.token_fraction) == (3, 1.0)
    torch.testing.assert_close(out.last_hidden_state, full(model, frames).last_hidden_state, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("streams", "train", "message"),
    [(["s"], False, "stream keys"), (["s", "s"], True, "eval")],
)
def test_cached_vit_refuses_misuse(towers, streams, train, message):
    model, size = towers["siglip"]
    cache = CachedViT(model, ViTCacheConfig())
    model.train(train)
    try:
        with pytest.raises(ValueError, match=message):
            cache(pixels(2, size, seed=14), streams)
    finally:
        model.eval()
