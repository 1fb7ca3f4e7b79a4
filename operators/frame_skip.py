"""Spend encoder compute only on frames that changed: skip whole frames (frame level, model-agnostic).

FrameSkipper (methods.md section 1)
    A pixel-mode change test (section 2) against the stream's last ENCODED frame:
    frames where almost no patch changed are not encoded at all and reuse the
    last features. ``plan`` says which frames must be encoded, ``fill`` builds
    the full FeatureBatch, so downstream stages still see every frame.

Its per-stream state is explicit and has snapshot / restore (operators.state.Stateful). The token-level
cache inside the vision tower is operators/vit_cache.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from operators.config import FrameSkipConfig
from operators.frames import FeatureBatch, FrameBatch
from operators.state import PerStreamState, StreamKey

# Cells per token patch along each side for the pixel change test: 4x4 cells see an object that
# covers a quarter of a patch move, with 16 values per patch instead of a 16x16 (or 56x56) pixel block.
CELLS_PER_PATCH = 4


# ---------------------------------------------------------------------------------------------
# Pixel-mode change test (methods.md section 2), shared with operators.compress.


def pixel_cells(images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Area means of RGB frames [N,H,W,3] on a (rows*4, cols*4) lattice: float32 [N, rows*4, cols*4, 3], 0..255.

    Cells follow the whole frame (no crop), as the encoder resizes it, so cell block (r, c) covers the
    pixels behind token (r, c); where the size does not divide, neighbouring cells share a pixel row or
    column (adaptive average pooling). Cells of cells are the same cells: a pipeline may ship these
    (~10 KB a frame) instead of the frames and every change test gives the same answer.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N,H,W,3], got {images.shape}")
    rows, cols = grid[0] * CELLS_PER_PATCH, grid[1] * CELLS_PER_PATCH
    height, width = images.shape[1:3]
    if height < rows or width < cols:
        raise ValueError(f"a {height}x{width} frame is smaller than the {rows}x{cols} cell lattice of grid {grid}")
    # torch, not numpy: adaptive pooling is ~2.5x faster than np.add.reduceat on one core (17 vs 39 ms for
    # 16 frames at 640x360) and uses every core. Arrays from Ray's shared memory are read-only: copy those.
    owned = images if images.flags.writeable else images.copy()
    x = torch.from_numpy(owned).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(x, (rows, cols)).permute(0, 2, 3, 1).contiguous().numpy()


def patch_change(cells: np.ndarray, previous: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Mean absolute RGB difference per patch in [0, 1]: [..., rows*4, cols*4, 3] pairs -> [..., rows*cols]."""
    diff = np.abs(cells - previous)
    lead = diff.shape[:-3]
    per_patch = diff.reshape(*lead, grid[0], CELLS_PER_PATCH, grid[1], CELLS_PER_PATCH, 3).mean(axis=(-4, -2, -1))
    return per_patch.reshape(*lead, grid[0] * grid[1]) / 255.0


# ---------------------------------------------------------------------------------------------
# Frame level: skip frames that did not change.


@dataclass
class SkipStats:
    frames_seen: int
    frames_skipped: int


@dataclass
class _SkipState:
    cells: np.ndarray  # cells of the last encoded frame: the reference of the change test
    tokens: np.ndarray  # [T, D] features of the last encoded frame, reused by skipped frames
    embedding: np.ndarray  # [E]
    grid: tuple[int, int]
    skipped_run: int  # frames skipped since the last encoded one
    seen: int
    skipped: int


class FrameSkipper(PerStreamState["_SkipState"]):
    """Per stream: encode a frame only when enough of it changed since the last encoded frame.

    Use per batch: ``mask = plan(batch)``, encode ``batch.images[mask]``, then
    ``fill(batch, encoded, mask)``. ``plan`` reads state, ``fill`` commits it, so a
    failed encode leaves the stream as it was. A stream's batches must go through
    plan and fill in stream order, one at a time (as through the compressor).
    Comparing with the last encoded frame, not the previous frame, keeps slow
    drift from hiding: it adds up until it crosses the test or ``max_skip``.
    """

    SNAPSHOT_NAME = "frame skipper"
    SNAPSHOT_VERSION = 1

    def __init__(self, config: FrameSkipConfig):
        self.config = config
        self._streams: dict[StreamKey, _SkipState] = {}

    def plan(self, batch: FrameBatch) -> np.ndarray:
        """bool [N]: True where the frame must be encoded."""
        return self.plan_all([batch])[0]

    def plan_all(self, batches: Sequence[FrameBatch]) -> list[np.ndarray]:
        """One mask per batch, for batches filled in this order: a stream's later batch is planned against the
        frames its earlier ones encode, as if each batch were planned and filled in turn. So how a stream's
        segments are grouped into encoder calls does not change what is skipped (a resumed backfill groups
        them differently from an uninterrupted one)."""
        carried: dict[StreamKey, tuple[np.ndarray | None, int]] = {}
        masks = []
        for batch in batches:
            key = _key(batch)
            if key not in carried:
                state = self._streams.get(key)
                carried[key] = (state.cells, state.skipped_run) if state else (None, 0)
            reference, run = carried[key]
            must = np.zeros(len(batch), dtype=bool)
            cells = pixel_cells(batch.images, self.config.grid) if len(batch) else None
            for i in range(len(batch)):
                if reference is None or run >= self.config.max_skip or self._changed(cells[i], reference):
                    must[i], reference, run = True, cells[i], 0
                else:
                    run += 1
            carried[key] = (reference, run)
            masks.append(must)
        return masks

    def fill(self, batch: FrameBatch, encoded: FeatureBatch | None, mask: np.ndarray) -> FeatureBatch:
        """Features for every frame of ``batch``: ``encoded`` holds the rows of the frames ``mask`` selects, in
        order (None when it selects none); skipped frames repeat the features of the last encoded frame before
        them. Commits the stream's state."""
        key = _key(batch)
        mask = np.asarray(mask, dtype=bool)
        state = self._streams.get(key)
        count = int(mask.sum())
        if mask.shape != (len(batch),):
            raise ValueError(f"mask has shape {mask.shape} for {len(batch)} frames")
        if (0 if encoded is None else len(encoded)) != count:
            raise ValueError(f"{0 if encoded is None else len(encoded)} encoded rows for {count} frames to encode")
        if state is None and len(batch) and not mask[0]:
            raise ValueError(f"stream {key}: frame 0 is skipped but no frame of the stream was ever encoded")
        if encoded is not None and state is not None and encoded.tokens.shape[1:] != state.tokens.shape:
            raise ValueError(f"stream {key}: encoded tokens {encoded.tokens.shape[1:]} do not match the cached "
                             f"{state.tokens.shape} (the model changed?): forget the stream first")
        # The table skipped frames index into: the stream's cached frame (if any), then the encoded frames.
        tokens = ([state.tokens[None]] if state else []) + ([encoded.tokens] if encoded is not None else [])
        embedding = ([state.embedding[None]] if state else []) + ([encoded.embedding] if encoded is not None else [])
        if not tokens:
            raise ValueError(f"stream {key}: an empty batch and no frame ever encoded: no feature shape to give")
        source = np.cumsum(mask) - (0 if state else 1)
        grid = encoded.grid if encoded is not None else state.grid
        out = FeatureBatch(batch.segment, batch.pts_s, np.concatenate(tokens)[source],
                           np.concatenate(embedding)[source], grid, list(batch.thumbnails))
        self._commit(key, batch, out, mask, state)
        return out

    def _commit(self, key: StreamKey, batch: FrameBatch, out: FeatureBatch, mask: np.ndarray,
                state: _SkipState | None) -> None:
        seen = (state.seen if state else 0) + len(batch)
        skipped = (state.skipped if state else 0) + int((~mask).sum())
        if mask.any():
            last = int(np.flatnonzero(mask)[-1])
            self._streams[key] = _SkipState(
                cells=pixel_cells(batch.images[last : last + 1], self.config.grid)[0], tokens=out.tokens[last].copy(),
                embedding=out.embedding[last].copy(), grid=out.grid, skipped_run=len(batch) - 1 - last,
                seen=seen, skipped=skipped)
        elif state is not None:
            state.skipped_run += len(batch)
            state.seen, state.skipped = seen, skipped

    def _changed(self, cells: np.ndarray, reference: np.ndarray) -> bool:
        changed = patch_change(cells, reference, self.config.grid) > self.config.patch_threshold
        return bool(changed.mean() >= self.config.changed_fraction)

    def stats(self) -> dict[StreamKey, SkipStats]:
        """Frames seen and skipped per stream since its state began (or was restored)."""
        return {key: SkipStats(s.seen, s.skipped) for key, s in self._streams.items()}

    # Snapshots (operators.state.PerStreamState): per stream the last encoded frame's cells and features, and the
    # counters; a restored stream's next frame is compared with its last encoded one.
    def _dump(self, s: _SkipState) -> dict[str, Any]:
        return {"cells": s.cells.copy(), "tokens": s.tokens.copy(), "embedding": s.embedding.copy(),
                "grid": tuple(s.grid), "skipped_run": s.skipped_run, "seen": s.seen, "skipped": s.skipped}

    def _load(self, s: dict[str, Any]) -> _SkipState:
        return _SkipState(np.asarray(s["cells"], np.float32).copy(), np.asarray(s["tokens"]).copy(),
                          np.asarray(s["embedding"], np.float32).copy(), tuple(s["grid"]), int(s["skipped_run"]),
                          int(s["seen"]), int(s["skipped"]))


def _key(batch: FrameBatch | FeatureBatch) -> StreamKey:
    return batch.segment.tenant_id, batch.segment.stream_id


def encode_skipping(encode: Callable[[list[FrameBatch]], list[FeatureBatch]], skipper: FrameSkipper | None,
                    batches: list[FrameBatch]) -> list[FeatureBatch]:
    """Encode batches (of several streams), running the ViT only on frames ``skipper`` says changed.

    Two segments of one stream in one call are planned in order (`FrameSkipper.plan_all`), exactly as
    two calls would plan them.
    """
    if skipper is None:
        return encode(batches)
    masks = skipper.plan_all(batches)
    encoded = iter(encode([_subset(b, m) for b, m in zip(batches, masks) if m.any()]))
    return [skipper.fill(b, next(encoded) if m.any() else None, m) for b, m in zip(batches, masks)]


def _subset(batch: FrameBatch, mask: np.ndarray) -> FrameBatch:
    return FrameBatch(batch.segment, batch.pts_s[mask], batch.images[mask],
                      [t for t, keep in zip(batch.thumbnails, mask) if keep] if batch.thumbnails else [])
