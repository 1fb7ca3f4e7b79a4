"""The mid tier's events: frames folded into the stream's open event, closed at a boundary or after max_event_s."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from memory_store import keys
from memory_store.events import Reference, fold_frame, record_dtype
from memory_store.merge import centroid
from memory_store.records import EncodedFrame, entry_bytes
from operators.frames import CompressedBatch

OPEN_FIELDS = (
    "pts_s",
    "wallclock",
    "seq",
    "grid",
    "positions",
    "token_dim",
    "covers",
    "emb_sum",
    "drop_sum",
    "t_end_s",
    "last_pts",
    "blob_tokens",
    "blob_bytes",
)


@dataclass
class OpenEvent:
    """The stream's current event, as this transaction leaves it."""

    key: str
    start_pts: float
    start_wallclock: float
    seq: int
    grid: str
    positions: int
    token_dim: int
    ref: Reference
    covers: int = 0
    emb_sum: np.ndarray | None = None
    drop_sum: float = 0.0
    t_end: float = 0.0
    last_pts: float = -math.inf
    blob_tokens: int = 0
    appended: list[bytes] = field(default_factory=list)
    # Frames of this transaction folded into it: (key, embedding, thumbnail bytes or None).
    new_frames: list[tuple[str, np.ndarray, bytes | None]] = field(default_factory=list)

class EventSteps:
    """StreamTxn's event steps (transaction.py holds the state and the shared steps they use)."""

    def fold(self, batch: CompressedBatch, frames: Sequence[EncodedFrame]) -> list[str | None]:
        """Fold the segment's frames into the stream's events; the event key of each frame (None: not folded).

        A frame begins a new event at a boundary, when the open event reached ``max_event_s``, or when its
        token grid differs from the event's (a new model). A frame not after the open event's last one (a
        late or replaced segment) is not folded: an event is a chain in time.
        """
        out: list[str | None] = []
        counts = np.concatenate([[0], np.cumsum(batch.kept.sum(axis=1))])
        for i, f in enumerate(frames):
            event = self._open_event()
            positions = np.flatnonzero(batch.kept[i])
            tokens = batch.tokens[counts[i] : counts[i + 1]]
            grid = f"{batch.grid[0]},{batch.grid[1]}"
            if event is not None and f.pts <= event.last_pts:
                out.append(None)
                continue
            if (
                event is None
                or bool(f.fields["boundary"])
                or f.pts - event.start_pts >= self.config.max_event_s
                or (event.positions, event.token_dim, event.grid) != (batch.kept.shape[1], tokens.shape[1], grid)
            ):
                if event is not None:
                    self._close(event)
                event = self._start(
                    f,
                    batch.segment.seq,
                    grid,
                    batch.kept.shape[1],
                    batch.tokens.shape[1],
                )
            records = fold_frame(
                event.ref,
                round((f.pts - event.start_pts) * 1000),
                positions,
                tokens,
                self.config.mid_similarity,
            )
            event.appended.append(records)
            added = len(records) // record_dtype(event.token_dim).itemsize
            event.blob_tokens += added
            self.counters["mid_tokens"] += added
            self.counters["mid_bytes"] += len(records)
            embedding = np.asarray(batch.embedding[i], np.float64)
            event.emb_sum = embedding if event.emb_sum is None else event.emb_sum + embedding
            event.covers += 1
            event.drop_sum += float(batch.drop_ratio[i])
            event.t_end, event.last_pts = f.t_end, f.pts
            event.new_frames.append((f.key, embedding, f.thumbnail))
            out.append(event.key)
        return out

    def close_open_event(self) -> None:
        """Close the stream's open event now (the stream ended): it becomes a searchable long-tier entry."""
        event = self._open_event()
        if event is not None:
            self._close(event)

    def _open_event(self) -> OpenEvent | None:
        if self._open_loaded:
            return self._open
        self._open_loaded = True
        if self._open_key is None:
            return None
        h = dict(
            zip(
                OPEN_FIELDS,
                self.pipe.hmget(keys.frame(self.t, self._open_key), OPEN_FIELDS),
            )
        )
        if h["pts_s"] is None:
            raise LookupError(f"open event {self._open_key} of {self.t}/{self.s} is named but not stored")
        positions, token_dim, blob_bytes = (
            int(h["positions"]),
            int(h["token_dim"]),
            int(h["blob_bytes"]),
        )
        cached = self._refs.get(self._open_key)
        if cached is not None and cached.blob_len == blob_bytes:
            ref = cached.copy()
        else:
            blob = self.pipe.get(keys.event_tokens(self.t, self._open_key)) or b""
            ref = Reference.from_blob(blob, positions, token_dim)
        self._open = OpenEvent(
            key=self._open_key,
            start_pts=float(h["pts_s"]),
            start_wallclock=float(h["wallclock"]),
            seq=int(h["seq"]),
            grid=h["grid"].decode(),
            positions=positions,
            token_dim=token_dim,
            ref=ref,
            covers=int(h["covers"]),
            emb_sum=np.frombuffer(h["emb_sum"], np.float64).copy(),
            drop_sum=float(h["drop_sum"]),
            t_end=float(h["t_end_s"]),
            last_pts=float(h["last_pts"]),
            blob_tokens=int(h["blob_tokens"]),
        )
        return self._open

    def _start(self, f: EncodedFrame, seq: int, grid: str, positions: int, token_dim: int) -> OpenEvent:
        key = keys.event_key(self.t, self.s, f.pts)
        self._open = OpenEvent(
            key=key,
            start_pts=f.pts,
            start_wallclock=f.wallclock,
            seq=seq,
            grid=grid,
            positions=positions,
            token_dim=token_dim,
            ref=Reference.empty(positions, token_dim),
        )
        self.writes.append(lambda p: p.zadd(keys.mid_tier(self.t, self.s), {key: f.wallclock}))
        return self._open

    def _close(self, event: OpenEvent) -> None:
        """Index the event: its mean embedding, its representative frames and a copy of the best one's thumbnail."""
        self._flush_event(event, still_open=False)
        mean = centroid(event.emb_sum[None, :], np.ones(1))
        frames = self._event_frames(event)
        order = sorted(
            range(len(frames)),
            key=lambda j: (-round(float(frames[j][1] @ mean), 9), frames[j][0]),
        )
        reps = sorted(frames[j][0] for j in order[: self.config.representative_frames])
        best_key, _, best_thumb_bytes = frames[order[0]]
        (entry_id,) = self.allocate(1)
        fields: dict = {
            "id": entry_id,
            "kind": "event",
            "embedding": mean.astype(np.float32).tobytes(),
            "drop_ratio": event.drop_sum / max(event.covers, 1),
            "covers": event.covers,
            "boundary": 1,
            "reps": json.dumps(reps),
            "stream_id": self.s,
            "seq": event.seq,
            "pts_s": event.start_pts,
            "t_end_s": event.t_end,
            "wallclock": event.start_wallclock,
            "grid": event.grid,
        }
        if best_thumb_bytes is not None:
            fields["thumbnail"] = keys.thumbnail(self.t, event.key)
            self.writes.append(
                lambda p: p.copy(
                    keys.thumbnail(self.t, best_key),
                    keys.thumbnail(self.t, event.key),
                    replace=True,
                )
            )
        fields["bytes"] = entry_bytes(fields, None) + (best_thumb_bytes or 0)
        self.writes.append(lambda p: p.hset(keys.frame(self.t, event.key), mapping=fields))
        self.writes.append(lambda p: p.hdel(keys.frame(self.t, event.key), "emb_sum", "drop_sum", "last_pts"))
        self._index(event.key, entry_id, event.start_wallclock, mean, int(fields["bytes"]))
        self.ref_updates[event.key] = None
        self._closed.add(event.key)
        self._open = None

    def _event_frames(self, event: OpenEvent) -> list[tuple[str, np.ndarray, int | None]]:
        """(key, unit embedding, thumbnail bytes or None) of the event's frames: those stored before, then ours."""
        found: list[tuple[str, np.ndarray, int | None]] = []
        if event.covers > len(event.new_frames):
            members = [
                m.decode()
                for m in self.pipe.zrangebyscore(keys.long_tier(self.t, self.s), event.start_wallclock, "+inf")
            ]
            reads = self.pipe.pipeline(transaction=False)
            for key in members:
                reads.hmget(keys.frame(self.t, key), ("event", "embedding"))
                reads.strlen(keys.thumbnail(self.t, key))
            values = reads.execute()
            for key, (of, embedding), thumb in zip(members, values[0::2], values[1::2]):
                if of is not None and of.decode() == event.key:
                    found.append(
                        (
                            key,
                            np.frombuffer(embedding, np.float32).astype(np.float64),
                            thumb or None,
                        )
                    )
        found += [(k, e, len(b) if b is not None else None) for k, e, b in event.new_frames]
        return [(k, e / max(float(np.linalg.norm(e)), 1e-12), b) for k, e, b in found]

    def _flush_event(self, event: OpenEvent, *, still_open: bool) -> None:
        fields = {
            "kind": "event",
            "stream_id": self.s,
            "seq": event.seq,
            "pts_s": event.start_pts,
            "t_end_s": event.t_end,
            "wallclock": event.start_wallclock,
            "grid": event.grid,
            "positions": event.positions,
            "token_dim": event.token_dim,
            "covers": event.covers,
            "blob_tokens": event.blob_tokens,
            "blob_bytes": event.ref.blob_len,
        }
        if still_open:
            fields.update(
                emb_sum=event.emb_sum.tobytes(),
                drop_sum=event.drop_sum,
                last_pts=event.last_pts,
            )
        blob = b"".join(event.appended)
        event.appended = []
        key = keys.frame(self.t, event.key)
        self.writes.append(lambda p: p.hset(key, mapping=fields))
        if blob:
            self.writes.append(lambda p: p.append(keys.event_tokens(self.t, event.key), blob))
        if still_open:
            self.ref_updates[event.key] = event.ref

    def has_open_event(self) -> bool:
        return self._open_event() is not None
