"""A long synthetic stream for the tier tests: scenes that revisit a few places, cut into segments, boundaries
marked by the real BoundaryDetector on the drop ratio, as the compressor actor does."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from operators.boundaries import BoundaryDetector
from operators.config import BoundaryConfig
from operators.frames import CompressedBatch, SegmentInfo
from tests.memory_store.batches import WALL0, unit

GRID = (8, 8)
TOKEN_DIM = 16
EMBED_DIM = 48


@dataclass
class Truth:
    """What the stream showed, uncompressed: one embedding per frame, its wallclock, and the scene starts."""

    embeddings: list[np.ndarray]
    wallclocks: list[float]
    cuts: list[float]


def synthetic_stream(
    *,
    seconds: float,
    tenant: str = "acme",
    stream: str = "cam-1",
    fps: float = 1.0,
    segment_frames: int = 10,
    places: int = 25,
    seed: int = 0,
    start_s: float = 0.0,
    truth: Truth | None = None,
) -> Iterator[CompressedBatch]:
    """Segments of a stream of scenes 20-120 s long, each at one of ``places`` places (never the same twice in a
    row). Within a scene the embedding wanders around the place's and ~10% of the tokens change per frame; a
    cut changes every token. The stream starts ``start_s`` after WALL0. Offsets: topic "segs", partition 0,
    offset = seq."""
    rng = np.random.default_rng(seed)
    place_vectors = unit(rng.standard_normal((places, EMBED_DIM)))
    place_tokens = rng.standard_normal((places, GRID[0] * GRID[1], TOKEN_DIM)).astype(np.float32)
    detector = BoundaryDetector(BoundaryConfig())
    n_frames = int(seconds * fps)
    scene_left, place, tokens = 0, -1, None
    for seq, start in enumerate(range(0, n_frames, segment_frames)):
        count = min(segment_frames, n_frames - start)
        pts = start_s + (start + np.arange(count)) / fps
        kept = np.zeros((count, GRID[0] * GRID[1]), bool)
        embeddings, stored = [], []
        for i in range(count):
            if scene_left == 0:
                place = (place + 1 + int(rng.integers(places - 1))) % places
                scene_left = int(rng.integers(20, 121) * fps)
                tokens = place_tokens[place] + 0.3 * rng.standard_normal(place_tokens[place].shape).astype(np.float32)
                kept[i] = True
                if truth is not None:
                    truth.cuts.append(WALL0 + float(pts[i]))
            else:
                changed = rng.random(kept.shape[1]) < 0.1
                tokens[changed] += rng.standard_normal((int(changed.sum()), TOKEN_DIM)).astype(np.float32)
                kept[i] = changed
            scene_left -= 1
            embeddings.append(unit(place_vectors[place] + 0.25 * unit(rng.standard_normal(EMBED_DIM))))
            stored.append(tokens[kept[i]].copy())
        info = SegmentInfo(
            tenant_id=tenant,
            stream_id=stream,
            seq=seq,
            wallclock_start=WALL0 + float(pts[0]),
            media_start_s=float(pts[0]),
            duration_s=count / fps,
            topic="segs",
            partition=0,
            offset=seq,
        )
        batch = CompressedBatch(
            segment=info,
            pts_s=pts,
            embedding=np.stack(embeddings),
            kept=kept,
            tokens=np.concatenate(stored),
            drop_ratio=1.0 - kept.mean(axis=1),
            grid=GRID,
            thumbnails=[b"\xff\xd8" + bytes(200) for _ in range(count)],
        )
        if truth is not None:
            truth.embeddings += embeddings
            truth.wallclocks += [WALL0 + float(p) for p in pts]
        yield detector.mark(batch)
