"""What memory stores about a frame: the record types, and the frame hash they are encoded to and read from.

A frame hash (``keys.frame``) holds metadata, the frame's embedding, its kept
tokens while it is in the short tier, and its on-screen text when it has some
(see ``memory_store.text``). Everything here is plain encoding and decoding;
RedisTier decides when it is written.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from memory_store import keys
from memory_store.text import check_texts, joined, parse_lines
from operators.frames import CompressedBatch, FrameText, StageError

# The two vector indexes of a tenant: frame embeddings, and embeddings of on-screen text.
IndexKind = Literal["visual", "text"]
# The frame hash field each kind's vectors are read from.
VECTOR_FIELD: dict[IndexKind, str] = {"visual": "embedding", "text": "text_embedding"}

# The fields of a frame hash that leave when the frame leaves the short tier (n_tokens and token_bytes are
# its share of the short tier's budgets: their presence means the frame is in the short tier).
TOKEN_FIELDS = ("positions", "tokens", "token_shape", "n_tokens", "token_bytes")
META_FIELDS = ("id", "stream_id", "seq", "pts_s", "t_end_s", "wallclock", "embedding", "drop_ratio", "grid",
               "thumbnail", "text_lines", "text_unread", "kind", "covers", "boundary", "reps")
# What an entry is: a sampled frame, an event segment (frames between two boundaries), or a merged entry
# (a time-ordered k-means centroid that replaced older entries; memory_store.merge).
EntryKind = Literal["frame", "event", "merged"]
# Positions are stored as int16.
_MAX_TOKENS_PER_FRAME = 1 << 15


@dataclass(frozen=True)
class WriteResult:
    """A segment that this call made durable. ``tokens_evicted``: frames of the stream that left the short tier."""

    tenant_id: str
    stream_id: str
    seq: int
    frame_keys: tuple[str, ...]
    ids: tuple[int, ...]
    wallclocks: tuple[float, ...]
    tokens_evicted: int
    removed_ids: tuple[int, ...] = ()  # index ids of the version a replacing write removed (memory_store.replace)
    # Index entries this write created besides its frames (closed event segments, merged centroids), and those
    # of them that go into the text index; removed_ids above then also names the entries merges and retention
    # deleted (memory_store.tiers).
    entries: tuple[IndexEntry, ...] = ()
    text_entries: tuple[IndexEntry, ...] = ()


@dataclass(frozen=True)
class StreamGap:
    """A stretch of a stream without video: its live source dropped, stalled or restarted and the publisher
    waited (VideoSegment.gap_before_s). Stream seconds [start_s, end_s); video resumed at ``resumed_at``
    (epoch s) with segment ``segment``."""

    start_s: float
    end_s: float
    resumed_at: float
    segment: str

    def member(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)  # the same gap is the same member: idempotent


@dataclass(frozen=True)
class StreamInfo:
    """What a tenant's stream has stored: wallclock (epoch s) and media (s from stream start) ranges covered,
    and ``gaps``: the newest stretches without video inside them (at most `MAX_GAPS_LISTED`), oldest first."""

    stream_id: str
    first_wallclock: float
    last_wallclock: float
    first_media_s: float
    last_media_s: float
    frames: int
    segments: int
    last_seq: int
    updated_at: float
    gaps: tuple[StreamGap, ...] = ()


@dataclass
class FrameRecord:
    """One stored frame. ``positions``/``tokens`` are None once the frame has left the short tier.

    tokens: float16 [K, D], the kept tokens; positions: int16 [K], their index in the frame's token grid.
    text: the frame's on-screen text, lines joined by newlines; lines: one dict per line (text,
        confidence, box: 4 [x, y] corners in [0, 1]). Both empty when the frame has no text.
    text_read: False when the live reader did not read the frame (it was behind: ``ocr.max_lag_s``): text and
        lines are then empty because the text is unknown, not because there was none.
    """

    id: int
    frame_key: str
    stream_id: str
    seq: int
    pts_s: float
    t_end_s: float
    wallclock_start: float
    wallclock_end: float
    embedding: np.ndarray
    drop_ratio: float
    grid: tuple[int, int]
    thumbnail: str | None
    positions: np.ndarray | None
    tokens: np.ndarray | None
    text: str
    lines: list[dict]
    kind: EntryKind = "frame"
    covers: int = 1  # frames this entry stands for
    boundary: bool = False  # a frame that begins an event; an entry that covers one
    representatives: tuple[str, ...] = ()  # event / merged: the frame keys it shows (nearest its mean)
    text_read: bool = True


class IndexEntry(NamedTuple):
    """What a vector index needs of a frame: ``embedding`` is the vector of the index's kind."""

    id: int
    frame_key: str
    stream_id: str
    wallclock: float
    embedding: np.ndarray


@dataclass(frozen=True)
class EncodedFrame:
    """One frame of a segment, ready to write. ``text_indexed``: it goes into the text index's id set."""

    key: str
    pts: float
    wallclock: float
    t_end: float
    fields: dict[str, bytes | str | int | float]
    thumbnail: bytes | None
    text_indexed: bool


def encode_frames(batch: CompressedBatch, texts: Sequence[FrameText] | None) -> list[EncodedFrame]:
    """Frame hashes of a segment, validated (texts included) before anything is written."""
    seg = batch.segment
    n = len(batch)
    if n == 0:
        raise StageError("empty_segment", f"segment {seg.seq} of {seg.stream_id} has no frames to store",
                         stage="memory")
    embedding = np.ascontiguousarray(batch.embedding, dtype=np.float32)
    if embedding.ndim != 2 or not np.isfinite(embedding).all() or not np.linalg.norm(embedding, axis=1).all():
        # A zero vector has no direction: cosine search cannot place it.
        raise StageError("bad_embedding", f"embedding must be finite, non-zero rows [N, E], got {embedding.shape}",
                         stage="memory")
    if batch.kept.shape[1] > _MAX_TOKENS_PER_FRAME:
        raise ValueError(f"{batch.kept.shape[1]} tokens per frame; positions are stored as int16")
    if batch.thumbnails and len(batch.thumbnails) != n:
        raise ValueError(f"{len(batch.thumbnails)} thumbnails for {n} frames")
    pts = [float(p) for p in batch.pts_s]
    if any(b <= a for a, b in zip(pts, pts[1:])):
        raise ValueError(f"pts of segment {seg.seq} of {seg.stream_id} must be strictly increasing")
    stored_texts = check_texts(batch, texts)
    # A frame lasts until the next one; the last until the segment ends. A publisher may not
    # know the duration (0 is valid on the wire): the last frame then ends where it starts.
    ends = pts[1:] + [max(seg.media_start_s + seg.duration_s, pts[-1])]
    counts = batch.kept.sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)])
    tokens = batch.tokens.astype(np.float16, copy=False)
    frames = []
    for i in range(n):
        key = seg.frame_key(pts[i])
        wallclock = seg.wallclock_start + (pts[i] - seg.media_start_s)
        kept_tokens = tokens[starts[i] : starts[i + 1]]
        fields: dict[str, bytes | str | int | float] = {
            "stream_id": seg.stream_id,
            "seq": seg.seq,
            "pts_s": pts[i],
            "t_end_s": ends[i],
            "wallclock": wallclock,
            "embedding": embedding[i].tobytes(),
            "drop_ratio": float(batch.drop_ratio[i]),
            "grid": f"{batch.grid[0]},{batch.grid[1]}",
            "positions": np.flatnonzero(batch.kept[i]).astype(np.int16).tobytes(),
            "tokens": np.ascontiguousarray(kept_tokens).tobytes(),
            "token_shape": f"{kept_tokens.shape[0]},{kept_tokens.shape[1]}",
            "n_tokens": int(kept_tokens.shape[0]),
            "boundary": int(batch.boundaries[i]) if batch.boundaries is not None else 0,
        }
        fields["token_bytes"] = len(fields["positions"]) + len(fields["tokens"])
        thumbnail = batch.thumbnails[i] if batch.thumbnails else None
        if thumbnail is not None:
            fields["thumbnail"] = keys.thumbnail(seg.tenant_id, key)
        text = stored_texts[i]
        if text is not None and text.unread:
            fields["text_unread"] = 1
        elif text is not None:
            fields["text_lines"] = text.lines_json
            if text.embedding is not None:
                fields["text_embedding"] = text.embedding.tobytes()
        text_indexed = text is not None and text.embedding is not None
        fields["bytes"] = entry_bytes(fields, thumbnail)
        frames.append(EncodedFrame(key, pts[i], wallclock, ends[i], fields, thumbnail, text_indexed))
    if len({f.key for f in frames}) != n:
        raise StageError("duplicate_frame_key", f"two frames of segment {seg.seq} share a millisecond pts",
                         stage="memory")
    return frames


def entry_bytes(fields: dict, thumbnail: bytes | None) -> int:
    """An entry's share of the long tier's byte budget: its field values but the tokens, and its thumbnail.

    Payload bytes, not Redis's own overhead (~100 bytes a hash field set), which the budget leaves aside.
    """
    return sum(len(v) if isinstance(v, bytes | str) else 8 for k, v in fields.items() if k not in TOKEN_FIELDS) + (
        len(thumbnail) if thumbnail is not None else 0)


def merged_stats(old: list[float | None], batch: CompressedBatch,
                 frames: list[EncodedFrame]) -> dict[str, float | int]:
    """Stream stats widened by this segment; segments may arrive out of order, so min/max, not last-wins."""
    first_wc, last_wc, first_media, last_media, last_seq = old
    seg_end_wc = frames[-1].wallclock + (frames[-1].t_end - frames[-1].pts)
    return {
        "first_wallclock": min(frames[0].wallclock, first_wc if first_wc is not None else np.inf),
        "last_wallclock": max(seg_end_wc, last_wc if last_wc is not None else -np.inf),
        "first_media_s": min(frames[0].pts, first_media if first_media is not None else np.inf),
        "last_media_s": max(frames[-1].t_end, last_media if last_media is not None else -np.inf),
        "last_seq": max(batch.segment.seq, int(last_seq) if last_seq is not None else -1),
        "updated_at": time.time(),
    }


MAX_GAPS_LISTED = 100


def stream_info(stream_id: str, h: dict[bytes, bytes], gaps: Sequence[bytes] = ()) -> StreamInfo:
    return StreamInfo(
        stream_id=stream_id,
        first_wallclock=float(h[b"first_wallclock"]),
        last_wallclock=float(h[b"last_wallclock"]),
        first_media_s=float(h[b"first_media_s"]),
        last_media_s=float(h[b"last_media_s"]),
        frames=int(h[b"frames"]),
        segments=int(h[b"segments"]),
        last_seq=int(h[b"last_seq"]),
        updated_at=float(h[b"updated_at"]),
        gaps=tuple(StreamGap(**json.loads(g)) for g in gaps),
    )


def frame_record(frame_key: str, h: dict[str, bytes | None]) -> FrameRecord:
    pts, t_end, wallclock = float(h["pts_s"]), float(h["t_end_s"]), float(h["wallclock"])
    rows, cols = (int(x) for x in h["grid"].split(b","))
    positions = tokens = None
    if h.get("tokens") is not None:
        k, d = (int(x) for x in h["token_shape"].split(b","))
        positions = np.frombuffer(h["positions"], dtype=np.int16)
        tokens = np.frombuffer(h["tokens"], dtype=np.float16).reshape(k, d)
    lines = parse_lines(h["text_lines"])
    return FrameRecord(
        id=int(h["id"]),
        frame_key=frame_key,
        stream_id=h["stream_id"].decode(),
        seq=int(h["seq"]),
        pts_s=pts,
        t_end_s=t_end,
        wallclock_start=wallclock,
        wallclock_end=wallclock + (t_end - pts),
        embedding=np.frombuffer(h["embedding"], dtype=np.float32),
        drop_ratio=float(h["drop_ratio"]),
        grid=(rows, cols),
        thumbnail=h["thumbnail"].decode() if h["thumbnail"] is not None else None,
        positions=positions,
        tokens=tokens,
        text=joined(lines),
        lines=lines,
        text_read=h.get("text_unread") is None,
        kind=h["kind"].decode() if h.get("kind") is not None else "frame",
        covers=int(h["covers"]) if h.get("covers") is not None else 1,
        boundary=bool(int(h["boundary"])) if h.get("boundary") is not None else False,
        representatives=tuple(json.loads(h["reps"])) if h.get("reps") is not None else (),
    )
