"""Differential token drop (TimeChat-Online DTD, methods.md section 2): store only the tokens that changed.

For every frame after a stream's first, each token position is compared with
the same position in the previous frame, in one of two modes:

feature  cosine of the two tokens after the ViT; dropped when above
         ``CompressConfig.drop_threshold``.
pixel    mean absolute RGB difference (0..1) of the frame patch behind the token;
         dropped when below ``DropConfig.pixel_threshold``. Needs the frames, not
         just the features: ``compress(batch, images)`` takes the FrameBatch's
         images, or ``operators.frame_skip.pixel_cells(images, batch.grid)``, the
         ~10 KB-a-frame area means the decoder or encoder side can ship instead
         (cells of cells are the same cells, so both give identical masks). Token
         (r, c) of a (rows, cols) grid covers the same fraction of the whole frame,
         because the encoder resizes frames whole (no crop). Pixel mode needs a
         spatial grid: VLM tokens with a (1, T) grid have no patch to compare.

The comparison is always with the previous frame's FULL tokens (or patches),
never with the last kept token at that position: comparing with the last kept
token would let slow drift accumulate unseen until it crossed the threshold,
and make the mask depend on the drop history rather than on two frames. Kept
tokens keep their positions (a mask over T), so the answer side can place them
back on the grid.

Optionally, a DistinctivePruner (STC-Pruner, section 3) then cuts what the drop
kept down to a fixed per-frame budget. ``drop_ratio`` stays the differential
drop's ratio, before pruning: it is the change signal (valleys = scene changes,
section 2) and a budget would flatten it. The stored token count is
``kept.sum()``.

The compressor is stateful per (tenant_id, stream_id): it remembers the last
frame's full tokens (or patches) and pts. The first frame it sees for a stream,
and the first frame after a stream goes back in time (a replay or a restart) or
changes shape (a new model, another grid), is kept whole: keeping too much is
safe, comparing with the wrong frame is not. State is explicit (snapshot /
restore) so a restarted actor continues exactly where its snapshot left off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from operators.config import CompressConfig, DropConfig, DropMode, PruneConfig
from operators.frame_skip import patch_change, pixel_cells
from operators.frames import CompressedBatch, FeatureBatch
from operators.pruning import DistinctivePruner
from operators.state import StreamKey, replace_stream

logger = logging.getLogger(__name__)

# Norm floor for the cosine: an all-zero token has no direction, so it compares as 0
# (kept unless the threshold is negative) instead of dividing by zero.
_EPS = 1e-12
_SNAPSHOT_VERSION = 2  # 2: mode, pixel references and the pruner's state
_REFERENCE_KEY: dict[DropMode, str] = {"feature": "tokens", "pixel": "cells"}




@dataclass
class _LastFrame:
    pts_s: float
    reference: np.ndarray  # full, not only the kept tokens: tokens [T, D] float32, or pixel cells [h, w, 3]


class TokenDropCompressor:
    """Drops tokens that barely changed since the previous frame of the same stream, then optionally prunes.

    drop_threshold (cosine, feature mode): lower drops more. 0.5 (TimeChat-Online's
    evaluation) keeps tokens that turned more than 60 degrees; near 1 keeps nearly everything.
    """

    def __init__(self, config: CompressConfig, drop: DropConfig | None = None, prune: PruneConfig | None = None):
        self.config = config
        self.drop = drop or DropConfig()
        self._pruner = DistinctivePruner(prune) if prune is not None else None
        self._last: dict[StreamKey, _LastFrame] = {}

    def compress(self, batch: FeatureBatch, images: np.ndarray | None = None) -> CompressedBatch:
        """Mask and kept tokens of one batch. ``images``: the batch's frames [N,H,W,3] or their pixel cells; needed
        in pixel mode, refused in feature mode (it would be silently ignored)."""
        segment = batch.segment
        key = (segment.tenant_id, segment.stream_id)
        tokens = np.asarray(batch.tokens, dtype=np.float32)
        n, t, _ = tokens.shape
        references = self._references(batch, tokens, images)
        kept = np.ones((n, t), dtype=bool)
        if n:
            last = self._last.get(key)
            whole_first = last is None or not self._continues(key, last, batch, references[0])
            previous = np.empty_like(references)
            previous[0] = references[0] if whole_first else last.reference
            previous[1:] = references[:-1]
            kept = self._changed(references, previous, batch.grid)
            if whole_first:
                kept[0] = True
            self._last[key] = _LastFrame(float(batch.pts_s[-1]), references[-1].copy())
        drop_ratio = 1.0 - kept.mean(axis=1)
        if self._pruner is not None:
            kept = self._pruner.prune(key, tokens, kept)
        return CompressedBatch(
            segment=segment,
            pts_s=batch.pts_s,
            embedding=batch.embedding,
            kept=kept,
            tokens=batch.tokens[kept],
            drop_ratio=drop_ratio,
            grid=batch.grid,
            thumbnails=list(batch.thumbnails),
        )

    def _references(self, batch: FeatureBatch, tokens: np.ndarray, images: np.ndarray | None) -> np.ndarray:
        """What frames are compared on: tokens [N,T,D], or pixel cells [N,h,w,3] on the token grid."""
        if self.drop.mode == "feature":
            if images is not None:
                raise ValueError("images given to a feature-mode compressor: set DropConfig(mode='pixel') to use them")
            return tokens
        rows, cols = batch.grid
        if images is None:
            raise ValueError("pixel mode needs the batch's images (or their pixel_cells)")
        if rows * cols != tokens.shape[1] or rows == 1:
            raise ValueError(f"pixel mode needs a spatial token grid; grid {batch.grid} for {tokens.shape[1]} tokens "
                             "is not one (a VLM's tokens?): use feature mode")
        if len(images) != len(batch):
            raise ValueError(f"{len(images)} images for {len(batch)} frames")
        return pixel_cells(images, batch.grid)

    def _changed(self, references: np.ndarray, previous: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """Kept mask [N,T]: where a position changed enough since the previous frame."""
        if self.drop.mode == "feature":
            return _cosine(references, previous) <= self.config.drop_threshold
        return patch_change(references, previous, grid) >= self.drop.pixel_threshold

    def _continues(self, key: StreamKey, last: _LastFrame, batch: FeatureBatch, first: np.ndarray) -> bool:
        """Whether batch follows the remembered frame; if not, its first frame is kept whole (and why is logged)."""
        if first.shape != last.reference.shape:
            logger.warning("compress %s/%s: %s shape %s -> %s (model or grid changed?); first frame kept whole",
                           *key, _REFERENCE_KEY[self.drop.mode], last.reference.shape, first.shape)
            return False
        if batch.pts_s[0] <= last.pts_s:
            logger.warning("compress %s/%s: pts %.3f is not after the last seen %.3f (replay or restart); "
                           "first frame kept whole", *key, batch.pts_s[0], last.pts_s)
            return False
        return True

    def forget(self, tenant_id: str, stream_id: str) -> None:
        """Drop a stream's state (stream ended or was deleted); its next frame is kept whole."""
        self._last.pop((tenant_id, stream_id), None)
        if self._pruner is not None:
            self._pruner.forget(tenant_id, stream_id)

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable state: the last full frame of every stream (``tokens`` in feature mode, ``cells`` in
        pixel mode) and the pruner's running means."""
        return self._snapshot(list(self._last), self._pruner.snapshot() if self._pruner is not None else None)

    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict[str, Any] | None:
        """`snapshot` of one stream; None when it has no state here."""
        key = (tenant_id, stream_id)
        pruner = self._pruner.snapshot_stream(tenant_id, stream_id) if self._pruner is not None else None
        if key not in self._last and pruner is None:
            return None
        if self._pruner is not None and pruner is None:
            pruner = self._pruner.snapshot_of([])
        return self._snapshot([key] if key in self._last else [], pruner)

    def _snapshot(self, keys: list[StreamKey], pruner: dict[str, Any] | None) -> dict[str, Any]:
        field = _REFERENCE_KEY[self.drop.mode]
        return {
            "version": _SNAPSHOT_VERSION,
            "mode": self.drop.mode,
            "streams": [{"tenant_id": tenant, "stream_id": stream, "pts_s": self._last[(tenant, stream)].pts_s,
                         field: self._last[(tenant, stream)].reference.copy()} for tenant, stream in keys],
            "pruner": pruner,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace all state with a snapshot's, taken by a compressor of the same mode and pruning."""
        self._last = self._parse(state)
        if self._pruner is not None:
            self._pruner.restore(state["pruner"])

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict[str, Any]) -> None:
        """Take back `snapshot_stream`'s result: the stream continues from its last frame, others are untouched."""
        replace_stream(self._last, tenant_id, stream_id, self._parse(state))
        if self._pruner is not None:
            self._pruner.restore_stream(tenant_id, stream_id, state["pruner"])

    def _parse(self, state: dict[str, Any]) -> dict[StreamKey, _LastFrame]:
        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"compressor snapshot version {state.get('version')!r}, expected {_SNAPSHOT_VERSION}")
        if state["mode"] != self.drop.mode:
            raise ValueError(f"a {state['mode']}-mode snapshot cannot restore a {self.drop.mode}-mode compressor")
        if (state["pruner"] is None) != (self._pruner is None):
            raise ValueError("snapshot and compressor disagree on pruning: restore into the same configuration")
        field = _REFERENCE_KEY[self.drop.mode]
        return {
            (s["tenant_id"], s["stream_id"]): _LastFrame(float(s["pts_s"]), np.asarray(s[field], np.float32).copy())
            for s in state["streams"]
        }


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per position of [N,T,D] arrays -> [N,T], clipped to [-1, 1] so threshold 1.0 never drops."""
    dot = np.einsum("ntd,ntd->nt", a, b)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.clip(dot / np.maximum(norms, _EPS), -1.0, 1.0)
