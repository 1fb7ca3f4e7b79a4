"""Differential token drop (TimeChat-Online DTD, feature mode): store only the tokens that changed.

For every frame after a stream's first, each token is compared with the token
at the same position in the previous frame; it is dropped when their cosine is
above ``CompressConfig.drop_threshold``. The comparison is always with the
previous frame's FULL tokens, never with the last kept token at that position:
comparing with the last kept token would let slow drift accumulate unseen until
it crossed the threshold, and make the mask depend on the drop history rather
than on two frames. Kept tokens keep their positions (a mask over T), so the
answer side can place them back on the grid.

The compressor is stateful per (tenant_id, stream_id): it remembers the last
frame's full tokens and pts. The first frame it sees for a stream, and the first
frame after a stream goes back in time (a replay or a restart) or changes token
shape (a new model), is kept whole: keeping too much is safe, comparing with the
wrong frame is not. State is explicit (snapshot / restore) so a restarted actor
continues exactly where its snapshot left off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from operators.frames import CompressedBatch, FeatureBatch
from pipelines.config import CompressConfig

logger = logging.getLogger(__name__)

StreamKey = tuple[str, str]  # (tenant_id, stream_id)

# Norm floor for the cosine: an all-zero token has no direction, so it compares as 0
# (kept unless the threshold is negative) instead of dividing by zero.
_EPS = 1e-12
_SNAPSHOT_VERSION = 1


@dataclass
class _LastFrame:
    pts_s: float
    tokens: np.ndarray  # [T, D] float32, full (not only the kept tokens)


class TokenDropCompressor:
    """Drops tokens that barely changed since the previous frame of the same stream.

    drop_threshold (cosine): lower drops more. 0.5 (TimeChat-Online's evaluation)
    keeps tokens that turned more than 60 degrees; near 1 keeps nearly everything.
    """

    def __init__(self, config: CompressConfig):
        self.config = config
        self._last: dict[StreamKey, _LastFrame] = {}

    def compress(self, batch: FeatureBatch) -> CompressedBatch:
        segment = batch.segment
        key = (segment.tenant_id, segment.stream_id)
        tokens = np.asarray(batch.tokens, dtype=np.float32)
        n, t, _ = tokens.shape
        kept = np.ones((n, t), dtype=bool)
        if n:
            last = self._last.get(key)
            whole_first = last is None or not self._continues(key, last, batch)
            previous = np.empty_like(tokens)
            previous[0] = tokens[0] if whole_first else last.tokens
            previous[1:] = tokens[:-1]
            kept = _cosine(tokens, previous) <= self.config.drop_threshold
            if whole_first:
                kept[0] = True
            self._last[key] = _LastFrame(float(batch.pts_s[-1]), tokens[-1].copy())
        return CompressedBatch(
            segment=segment,
            pts_s=batch.pts_s,
            embedding=batch.embedding,
            kept=kept,
            tokens=batch.tokens[kept],
            drop_ratio=1.0 - kept.mean(axis=1),
            grid=batch.grid,
            thumbnails=list(batch.thumbnails),
        )

    def _continues(self, key: StreamKey, last: _LastFrame, batch: FeatureBatch) -> bool:
        """Whether batch follows the remembered frame; if not, its first frame is kept whole (and why is logged)."""
        if batch.tokens.shape[1:] != last.tokens.shape:
            logger.warning("compress %s/%s: token shape %s -> %s (model changed?); first frame kept whole",
                           *key, last.tokens.shape, batch.tokens.shape[1:])
            return False
        if batch.pts_s[0] <= last.pts_s:
            logger.warning("compress %s/%s: pts %.3f is not after the last seen %.3f (replay or restart); "
                           "first frame kept whole", *key, batch.pts_s[0], last.pts_s)
            return False
        return True

    def forget(self, tenant_id: str, stream_id: str) -> None:
        """Drop a stream's state (stream ended or was deleted); its next frame is kept whole."""
        self._last.pop((tenant_id, stream_id), None)

    def snapshot(self) -> dict:
        """Plain, picklable state: the last full frame of every stream."""
        return {
            "version": _SNAPSHOT_VERSION,
            "streams": [
                {"tenant_id": tenant, "stream_id": stream, "pts_s": last.pts_s, "tokens": last.tokens.copy()}
                for (tenant, stream), last in self._last.items()
            ],
        }

    def restore(self, state: dict) -> None:
        """Replace all state with a snapshot's."""
        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"compressor snapshot version {state.get('version')!r}, expected {_SNAPSHOT_VERSION}")
        self._last = {
            (s["tenant_id"], s["stream_id"]): _LastFrame(float(s["pts_s"]), np.asarray(s["tokens"], np.float32).copy())
            for s in state["streams"]
        }


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per position of [N,T,D] arrays -> [N,T], clipped to [-1, 1] so threshold 1.0 never drops."""
    dot = np.einsum("ntd,ntd->nt", a, b)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.clip(dot / np.maximum(norms, _EPS), -1.0, 1.0)
