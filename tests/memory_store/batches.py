"""CompressedBatch builders for the memory tests: random numpy data, reproducible per segment."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from operators.frames import CompressedBatch, SegmentInfo

# Wallclock of media time 0 of every test stream (epoch seconds).
WALL0 = 1_700_000_000.0


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def make_batch(*, tenant: str = "acme", stream: str = "cam-1", seq: int = 0, frames: int = 2, tokens: int = 64,
               token_dim: int = 64, embed_dim: int = 64, fps: float = 1.0, keep: float = 0.5,
               embedding: np.ndarray | None = None, pts: Sequence[float] | None = None,
               duration: float | None = None, thumbnails: bool = True) -> CompressedBatch:
    """Segment ``seq`` of a stream sampled at ``fps``: it starts at seq * frames / fps seconds.

    The same (tenant, stream, seq) always gives the same batch, as a replayed Kafka record would.
    """
    rng = np.random.default_rng(zlib.crc32(f"{tenant}/{stream}/{seq}".encode()))
    seg_duration = frames / fps if duration is None else duration
    media_start = seq * (frames / fps)
    pts_s = media_start + (np.arange(frames) / fps if pts is None else np.asarray(pts, dtype=np.float64))
    info = SegmentInfo(tenant_id=tenant, stream_id=stream, seq=seq, wallclock_start=WALL0 + media_start,
                       media_start_s=media_start, duration_s=seg_duration)
    kept = rng.random((frames, tokens)) < keep
    emb = unit(rng.standard_normal((frames, embed_dim))) if embedding is None else np.asarray(embedding, np.float32)
    return CompressedBatch(
        segment=info,
        pts_s=pts_s,
        embedding=emb,
        kept=kept,
        tokens=rng.standard_normal((int(kept.sum()), token_dim)).astype(np.float32),
        drop_ratio=1.0 - kept.mean(axis=1),
        grid=(8, tokens // 8),
        thumbnails=[b"\xff\xd8\xff" + info.frame_key(p).encode() for p in pts_s] if thumbnails else [],
    )
