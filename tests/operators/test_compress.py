"""TokenDropCompressor on tokens and frames of known geometry: which positions survive, and state across batches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from operators.compress import TokenDropCompressor
from operators.config import CompressConfig, DropConfig, PruneConfig
from operators.frame_skip import pixel_cells
from operators.frames import FeatureBatch, SegmentInfo

T, D = 16, 8  # a 4x4 grid of 8-d tokens


def features(tokens: np.ndarray, start_s: float = 0.0, stream: str = "cam-1", tenant: str = "t1") -> FeatureBatch:
    n = len(tokens)
    info = SegmentInfo(tenant, stream, int(start_s), 1_700_000_000.0 + start_s, start_s, 1.0)
    embedding = np.ones((n, 4), np.float32) / 2
    return FeatureBatch(info, start_s + np.arange(n) * 0.25, tokens.astype(np.float16), embedding, (4, 4),
                        [b"jpeg"] * n)


def random_frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, T, D)).astype(np.float32)


def compressor(threshold: float = 0.5) -> TokenDropCompressor:
    return TokenDropCompressor(CompressConfig(drop_threshold=threshold))


def test_first_frame_is_kept_whole_and_identical_frames_are_dropped():
    frame = random_frames(1, seed=0)
    out = compressor().compress(features(np.repeat(frame, 4, axis=0)))
    assert out.kept[0].all() and not out.kept[1:].any()
    np.testing.assert_allclose(out.drop_ratio, [0.0, 1.0, 1.0, 1.0])
    assert out.tokens.shape == (T, D)


def test_changed_region_is_kept_at_its_positions():
    frames = np.repeat(random_frames(1, seed=1), 3, axis=0)
    changed = [2, 5, 6, 9]  # a small region of the 4x4 grid
    frames[1, changed] = -frames[0, changed]  # cosine -1: changed beyond any threshold
    out = compressor().compress(features(frames))
    positions, tokens = out.frame_tokens(1)
    np.testing.assert_array_equal(positions, changed)
    np.testing.assert_array_equal(tokens, frames[1, changed].astype(np.float16))
    # Frame 2 reverts to the original: the same positions changed again, relative to frame 1.
    np.testing.assert_array_equal(out.frame_tokens(2)[0], changed)
    np.testing.assert_allclose(out.drop_ratio, [0.0, 1 - 4 / T, 1 - 4 / T])


def test_compares_with_the_previous_full_frame_not_the_last_kept_token():
    # Each frame turns every token 40 degrees further: cos 0.77 to the previous frame (dropped at 0.5),
    # while the first frame's tokens drift to 80 and 120 degrees (kept, were they the reference).
    angles = np.deg2rad([0, 40, 80, 120])
    frames = np.zeros((4, T, D), np.float32)
    frames[:, :, 0], frames[:, :, 1] = np.cos(angles)[:, None], np.sin(angles)[:, None]
    out = compressor(0.5).compress(features(frames))
    assert out.kept[0].all() and not out.kept[1:].any()


@pytest.mark.parametrize(
    ("angle_deg", "threshold", "dropped"),
    [
        (30, 0.5, True),  # cos 0.87 > 0.5
        (30, 0.9, False),
        (59, 0.5, True),  # cos 0.515
        (61, 0.5, False),  # cos 0.485
        (90, 0.5, False),  # orthogonal: a new token
        (90, -0.5, True),
        (0, 1.0, False),  # threshold 1.0 never drops, even identical tokens
        (0, 0.999, True),
        (180, -1.0, False),  # nothing is below -1: threshold -1 keeps only exact reversals
        (170, -1.0, True),
    ],
)
def test_threshold_table(angle_deg, threshold, dropped):
    angle = np.deg2rad(angle_deg)
    frames = np.zeros((2, T, D), np.float32)
    frames[0, :, 0] = 1.0
    frames[1, :, 0], frames[1, :, 1] = np.cos(angle), np.sin(angle)
    out = compressor(threshold).compress(features(frames))
    assert (~out.kept[1]).all() == dropped and out.kept[1].all() != dropped


def test_state_carries_the_last_frame_across_batches():
    c = compressor()
    frames = random_frames(2, seed=3)
    c.compress(features(frames, start_s=0.0))
    nxt = np.stack([frames[1], -frames[1]])  # starts with the previous batch's last frame, then reverses it
    out = c.compress(features(nxt, start_s=1.0))
    assert not out.kept[0].any() and out.kept[1].all()


def test_streams_and_tenants_keep_separate_state():
    c = compressor()
    frame = random_frames(1, seed=5)
    c.compress(features(frame, stream="a"))
    same_stream = c.compress(features(frame, start_s=1.0, stream="a"))
    other_stream = c.compress(features(frame, start_s=1.0, stream="b"))
    other_tenant = c.compress(features(frame, start_s=1.0, stream="a", tenant="t2"))
    assert not same_stream.kept.any()
    assert other_stream.kept.all() and other_tenant.kept.all()


def test_snapshot_and_restore_continue_identically():
    first, second = random_frames(5, seed=6), random_frames(5, seed=7)
    second[0, :8], second[0, 8:] = first[-1, :8], -first[-1, 8:]  # across the boundary: half same, half reversed
    running = compressor()
    running.compress(features(first, start_s=0.0, stream="a"))
    running.compress(features(random_frames(2, seed=8), start_s=0.0, stream="b"))
    state = pickle.loads(pickle.dumps(running.snapshot()))
    restored = compressor()
    restored.restore(state)
    for stream in ("a", "b"):
        expected = running.compress(features(second, start_s=5.0, stream=stream))
        got = restored.compress(features(second, start_s=5.0, stream=stream))
        np.testing.assert_array_equal(got.kept, expected.kept)
        np.testing.assert_array_equal(got.tokens, expected.tokens)
        if stream == "a":  # the restored reference frame was really used at the boundary
            assert not got.kept[0, :8].any() and got.kept[0, 8:].all()
    [restored_a, _], [running_a, _] = restored.snapshot()["streams"], running.snapshot()["streams"]
    np.testing.assert_array_equal(restored_a["tokens"], running_a["tokens"])


def test_restore_replaces_state_and_rejects_unknown_versions():
    c = compressor()
    c.compress(features(random_frames(1, seed=9)))
    c.restore(compressor().snapshot())
    assert c.compress(features(random_frames(1, seed=9), start_s=1.0)).kept.all()
    with pytest.raises(ValueError, match="version"):
        c.restore({"version": 99, "streams": []})


def test_forget_makes_the_next_frame_whole():
    c = compressor()
    frame = random_frames(1, seed=10)
    c.compress(features(frame))
    c.forget("t1", "cam-1")
    assert c.compress(features(frame, start_s=1.0)).kept.all()


@pytest.mark.parametrize(
    ("second_start_s", "tokens", "first_kept_whole"),
    [
        (1.0, T, False),  # continues: compared with the remembered frame
        (0.0, T, True),  # a replay of the same segment: no valid previous frame
        (0.5, T, True),  # goes back in time, into the previous batch
        (1.0, T // 2, True),  # a different token count (the model changed)
    ],
)
def test_discontinuities_keep_the_first_frame_whole(second_start_s, tokens, first_kept_whole):
    c = compressor()
    frame = random_frames(1, seed=11)
    c.compress(features(np.repeat(frame, 4, axis=0)))  # pts 0.0 .. 0.75
    out = c.compress(features(frame[:, :tokens], start_s=second_start_s))
    assert out.kept[0].all() == first_kept_whole and out.kept[0].any() == first_kept_whole


def test_output_carries_the_batch_through():
    given = features(random_frames(3, seed=12), start_s=4.0)
    out = compressor().compress(given)
    assert out.segment == given.segment and out.grid == given.grid and out.thumbnails == given.thumbnails
    np.testing.assert_array_equal(out.pts_s, given.pts_s)
    np.testing.assert_array_equal(out.embedding, given.embedding)
    assert out.tokens.dtype == np.float16  # stored as the encoder produced them


def test_empty_batch_leaves_state_alone():
    c = compressor()
    frame = random_frames(1, seed=13)
    c.compress(features(frame))
    empty = c.compress(features(np.zeros((0, T, D), np.float32), start_s=1.0))
    assert empty.kept.shape == (0, T) and empty.tokens.shape == (0, D)
    assert not c.compress(features(frame, start_s=2.0)).kept.any()


# ------------------------------------------------------------------------------------------
# Pixel mode: the patch behind each token of the 4x4 grid is 16x16 pixels of a 64x64 frame.


def pixel_compressor(threshold: float = 0.03, prune: PruneConfig | None = None) -> TokenDropCompressor:
    return TokenDropCompressor(CompressConfig(), DropConfig(mode="pixel", pixel_threshold=threshold), prune)


def grey_frames(n: int, level: int = 100) -> np.ndarray:
    return np.full((n, 64, 64, 3), level, np.uint8)


def set_patch(image: np.ndarray, position: int, level: int) -> None:
    r, c = divmod(position, 4)
    image[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = level


@pytest.mark.parametrize(
    ("delta", "threshold", "dropped"),
    [
        (0, 0.03, True),  # unchanged
        (5, 0.03, True),  # 0.020 < 0.03: noise-sized change
        (10, 0.03, False),  # 0.039
        (10, 0.05, True),
        (255 - 100, 0.5, False),  # 0.61
        (0, 0.0, False),  # threshold 0 drops nothing: nothing is below it
    ],
)
def test_pixel_threshold_table(delta, threshold, dropped):
    images = grey_frames(2)
    set_patch(images[1], 6, 100 + delta)
    out = pixel_compressor(threshold).compress(features(random_frames(2, seed=20)), images)
    assert out.kept[0].all() and out.kept[1, 6] == (not dropped)
    assert (np.delete(out.kept[1], 6) == (threshold == 0.0)).all()  # unchanged patches: dropped, unless threshold 0


def test_pixel_mode_keeps_the_changed_patches_whatever_the_features_say():
    images = grey_frames(3)
    for position in (2, 5, 6, 9):
        set_patch(images[1], position, 250)
    same_features = np.repeat(random_frames(1, seed=21), 3, axis=0)  # feature mode would drop everything
    out = pixel_compressor().compress(features(same_features), images)
    np.testing.assert_array_equal(out.frame_tokens(1)[0], [2, 5, 6, 9])
    np.testing.assert_array_equal(out.frame_tokens(2)[0], [2, 5, 6, 9])  # frame 2 reverts: changed again
    np.testing.assert_allclose(out.drop_ratio, [0.0, 0.75, 0.75])


def test_pixel_cells_give_the_same_masks_as_frames():
    images = np.random.default_rng(22).integers(0, 256, (4, 90, 160, 3), dtype=np.uint8)
    images[2] = images[1]
    tokens = features(random_frames(4, seed=23))
    from_frames = pixel_compressor().compress(tokens, images)
    from_cells = pixel_compressor().compress(tokens, pixel_cells(images, (4, 4)))
    np.testing.assert_array_equal(from_cells.kept, from_frames.kept)
    assert not from_frames.kept[2].any()


@pytest.mark.parametrize(
    ("mode", "images", "grid_tokens", "message"),
    [
        ("pixel", None, (4, 4), "needs the batch's images"),
        ("feature", grey_frames(2), (4, 4), "feature-mode"),
        ("pixel", grey_frames(2), (1, 16), "spatial token grid"),  # a VLM's (1, T) grid
        ("pixel", grey_frames(3), (4, 4), "3 images for 2 frames"),
    ],
)
def test_mode_and_input_mismatches_fail_loudly(mode, images, grid_tokens, message):
    batch = features(random_frames(2, seed=24))
    batch.grid = grid_tokens
    c = TokenDropCompressor(CompressConfig(), DropConfig(mode=mode))
    with pytest.raises(ValueError, match=message):
        c.compress(batch, images)


def test_pixel_state_carries_across_batches_and_a_new_grid_restarts_it():
    c = pixel_compressor()
    c.compress(features(random_frames(2, seed=25)), grey_frames(2))
    assert not c.compress(features(random_frames(1, seed=26), start_s=1.0), grey_frames(1)).kept.any()
    finer = FeatureBatch(SegmentInfo("t1", "cam-1", 2, 0.0, 2.0, 1.0), np.array([2.0]),
                         np.ones((1, 64, 8), np.float16), np.ones((1, 4), np.float32), (8, 8))
    assert c.compress(finer, grey_frames(1)).kept.all()


# ------------------------------------------------------------------------------------------
# Drop, then prune to a budget


@pytest.mark.parametrize("mode", ["feature", "pixel"])
def test_pruning_applies_the_budget_to_what_the_drop_kept(mode):
    tokens = random_frames(3, seed=27)
    tokens[1] = tokens[0]
    tokens[1, :2] = -tokens[0, :2]  # frame 1: two tokens change
    images = grey_frames(3)
    set_patch(images[1], 0, 250)
    set_patch(images[1], 1, 250)
    prune = PruneConfig(keep_fraction=0.25)  # 4 of 16
    drop = DropConfig(mode=mode)
    pixels = images if mode == "pixel" else None
    plain = TokenDropCompressor(CompressConfig(), drop).compress(features(tokens), pixels)
    pruned = TokenDropCompressor(CompressConfig(), drop, prune).compress(features(tokens), pixels)
    assert not (pruned.kept & ~plain.kept).any()  # pruning only removes
    assert pruned.kept.sum(axis=1).tolist() == [4, 2, min(4, int(plain.kept[2].sum()))]
    np.testing.assert_array_equal(pruned.drop_ratio, plain.drop_ratio)  # the change signal, before the budget
    assert pruned.tokens.shape == (int(pruned.kept.sum()), D)
    positions, kept_tokens = pruned.frame_tokens(0)
    np.testing.assert_array_equal(kept_tokens, tokens[0, positions].astype(np.float16))  # full channels, in order


def test_pixel_and_pruner_state_snapshot_and_restore():
    prune = PruneConfig(keep_fraction=0.25)
    running = pixel_compressor(prune=prune)
    images = np.random.default_rng(28).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    tokens = random_frames(6, seed=29)
    running.compress(features(tokens[:3]), images[:3])
    state = pickle.loads(pickle.dumps(running.snapshot()))
    assert state["mode"] == "pixel" and "cells" in state["streams"][0] and state["pruner"]["streams"]
    restored = pixel_compressor(prune=prune)
    restored.restore(state)
    expected = running.compress(features(tokens[3:], start_s=3.0), images[3:])
    got = restored.compress(features(tokens[3:], start_s=3.0), images[3:])
    np.testing.assert_array_equal(got.kept, expected.kept)
    np.testing.assert_array_equal(got.drop_ratio, expected.drop_ratio)
    with pytest.raises(ValueError, match="pixel-mode snapshot"):
        compressor().restore(state)
    with pytest.raises(ValueError, match="pruning"):
        pixel_compressor().restore(state)
