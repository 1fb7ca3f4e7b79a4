"""The tiers of one stream, kept within budget inside the transaction that writes a segment.

    short  the newest frames with all their kept tokens (frame hashes; ``ll:{t}:short:<s>``)
    mid    event segments, the frames between two boundaries, with the tokens that do not repeat
           within the event (``memory_store.events``; ``ll:{t}:mid:<s>``)
    long   every index entry of the stream, searchable through FAISS: frames, closed event
           segments (their mean embedding) and merged entries (``ll:{t}:long:<s>``)

A frame is in the long tier from its write on, and in the short tier while it
holds tokens; an event is in the mid tier while it holds its token blob, and in
the long tier once it is closed (a boundary, or ``max_event_s``). Bytes are
counted per tier, so the three add up: short counts tokens and positions, mid
the event blobs, long the entries' other fields and thumbnails.

One segment write (`StreamTxn`, used by `RedisTier.write_segment`) does, in one
MULTI/EXEC, after the frames: fold them into events, then bring each tier within
its budgets, oldest first:

1. short: frames past ``recent_frames``, ``short_max_tokens`` or ``short_max_bytes``
   lose their tokens (the frame stays a long-tier entry);
2. mid: closed events past ``mid_max_tokens`` / ``mid_max_bytes`` lose their blob;
3. long: past ``long_max_entries`` / ``long_max_bytes``, the oldest entries that are
   older than the short tier and the open event, and not events still in the mid
   tier, are merged by time-ordered k-means
   (`memory_store.merge`) down to ``merge_low_water`` of the budget: each centroid
   replaces its members (hashes, thumbnails, index ids) with one merged entry;
4. retention: entries that ended more than ``retention_s`` before the stream's
   newest frame are deleted from every tier.

Everything is decided from what Redis holds, read under WATCH, and the segment's
frames: the same segments written in the same order give the same memory, ids
included. Nothing is logged until EXEC succeeds (redis-py reruns a transaction
whose watched keys changed); `StreamTxn.log` and ``warnings`` hold the lines.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from memory_store import keys
from memory_store.events import Reference, fold_frame, record_dtype
from memory_store.merge import centroid, contiguous_kmeans
from memory_store.records import TOKEN_FIELDS, EncodedFrame, IndexEntry, entry_bytes
from operators.frames import CompressedBatch
from pipelines.config import MemoryConfig

log = logging.getLogger(__name__)

Pipeline = redis.client.Pipeline
_COUNTERS = ("short_tokens", "short_bytes", "mid_tokens", "mid_bytes", "long_bytes")
# What a merge or a deletion needs of an entry.
_ENTRY_FIELDS = (
    "id",
    "kind",
    "seq",
    "pts_s",
    "t_end_s",
    "wallclock",
    "embedding",
    "drop_ratio",
    "grid",
    "thumbnail",
    "text_lines",
    "text_embedding",
    "covers",
    "boundary",
    "reps",
    "bytes",
    "n_tokens",
    "token_bytes",
    "blob_tokens",
    "blob_bytes",
)
_OPEN_FIELDS = (
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
_PAGE = 512


@dataclass
class _Entry:
    """An entry read back from Redis (for a merge or a deletion)."""

    key: str
    h: dict[str, bytes | None]

    def num(self, name: str, default: float = 0.0) -> float:
        value = self.h.get(name)
        return float(value) if value is not None else default

    @property
    def id(self) -> int:
        return int(self.h["id"])

    @property
    def kind(self) -> str:
        return self.h["kind"].decode() if self.h.get("kind") is not None else "frame"

    @property
    def wallclock_end(self) -> float:
        return self.num("wallclock") + self.num("t_end_s") - self.num("pts_s")

    @property
    def in_short(self) -> bool:
        return self.h.get("n_tokens") is not None

    @property
    def representative(self) -> str:
        """The frame this entry shows: itself for a frame, else its first representative."""
        if self.kind == "frame":
            return self.key
        return json.loads(self.h["reps"])[0] if self.h.get("reps") is not None else self.key


@dataclass
class _OpenEvent:
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


class StreamTxn:
    """One transaction's changes to one stream's tiers: reads run at once (under WATCH), writes are queued.

    refs: the writer's cache of open events' references (event key -> Reference), valid for the blob
        length it names; `commit` returns the entries to store back after EXEC.
    """

    def __init__(
        self,
        pipe: Pipeline,
        config: MemoryConfig,
        tenant_id: str,
        stream_id: str,
        refs: dict[str, Reference],
    ):
        self.pipe, self.config, self.t, self.s = pipe, config, tenant_id, stream_id
        self._refs = refs
        self.stats_key = keys.stream_stats(tenant_id, stream_id)
        values = pipe.hmget(self.stats_key, (*_COUNTERS, "open_event"))
        self.counters = {name: int(v or 0) for name, v in zip(_COUNTERS, values)}
        self._open_key = values[-1].decode() if values[-1] else None
        self._open: _OpenEvent | None = None
        self._open_loaded = False
        self.next_id = int(pipe.get(keys.next_id(tenant_id)) or 0)
        self.long_count = pipe.zcard(keys.long_tier(tenant_id, stream_id))
        self.frame_writes: list[Callable[[Pipeline], object]] = []
        self.writes: list[Callable[[Pipeline], object]] = []
        self.added: list[IndexEntry] = []
        self.text_added: list[IndexEntry] = []
        self.removed: list[int] = []
        self.log: list[str] = []
        self.warnings: list[str] = []
        self.ref_updates: dict[str, Reference | None] = {}
        self.evicted_short = 0
        # Entries this transaction already deleted, and budgets it already took them out of: a later step reads
        # Redis, which still holds them until EXEC.
        self._deleted: set[str] = set()
        self._left_short: set[str] = set()
        self._left_mid: set[str] = set()
        self._closed: set[str] = set()  # events this transaction closed

    # -- ids -------------------------------------------------------------------------------

    def allocate(self, n: int) -> list[int]:
        ids = list(range(self.next_id + 1, self.next_id + 1 + n))
        self.next_id += n
        return ids

    # -- frames ----------------------------------------------------------------------------

    def add_frames(self, frames: Sequence[EncodedFrame], ids: Sequence[int]) -> None:
        """Queue the frames' hashes and their places in the short and long tiers."""
        t, s = self.t, self.s
        for frame_id, f in zip(ids, frames):
            fields = {**f.fields, "id": frame_id}
            self.frame_writes.append(lambda p, k=f.key, m=fields: p.hset(keys.frame(t, k), mapping=m))
            if f.thumbnail is not None:
                self.frame_writes.append(lambda p, k=f.key, b=f.thumbnail: p.set(keys.thumbnail(t, k), b))
            if f.fields.get("boundary"):
                self.frame_writes.append(lambda p, k=f.key, w=f.wallclock: p.zadd(keys.boundaries(t, s), {k: w}))
            self.counters["short_tokens"] += int(f.fields["n_tokens"])
            self.counters["short_bytes"] += int(f.fields["token_bytes"])
            self.counters["long_bytes"] += int(f.fields["bytes"])
        self.long_count += len(frames)
        self.frame_writes.append(lambda p: p.zadd(keys.long_tier(t, s), {f.key: f.wallclock for f in frames}))
        self.frame_writes.append(lambda p: p.zadd(keys.short_tier(t, s), {f.key: f.pts for f in frames}))

    def remove_frames(self, frame_keys: Sequence[str]) -> None:
        """Account for frames another step deletes (a replaced segment's): their share of each tier's budget."""
        for entry in self._read(frame_keys):
            self._uncount(entry)
        self.writes.append(lambda p: p.zrem(keys.long_tier(self.t, self.s), *frame_keys))
        self.writes.append(lambda p: p.zrem(keys.boundaries(self.t, self.s), *frame_keys))

    # -- events (mid tier) -----------------------------------------------------------------

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

    def _open_event(self) -> _OpenEvent | None:
        if self._open_loaded:
            return self._open
        self._open_loaded = True
        if self._open_key is None:
            return None
        h = dict(
            zip(
                _OPEN_FIELDS,
                self.pipe.hmget(keys.frame(self.t, self._open_key), _OPEN_FIELDS),
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
        self._open = _OpenEvent(
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

    def _start(self, f: EncodedFrame, seq: int, grid: str, positions: int, token_dim: int) -> _OpenEvent:
        key = keys.event_key(self.t, self.s, f.pts)
        self._open = _OpenEvent(
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

    def _close(self, event: _OpenEvent) -> None:
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

    def _event_frames(self, event: _OpenEvent) -> list[tuple[str, np.ndarray, int | None]]:
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

    def _flush_event(self, event: _OpenEvent, *, still_open: bool) -> None:
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

    # -- budgets ---------------------------------------------------------------------------

    def evict_short(self, new: Sequence[EncodedFrame], leaving: Sequence[str] = ()) -> list[str]:
        """Frames that lose their tokens so that the short tier fits its three budgets; oldest (pts, key) first.

        Ordered by (pts, frame key), as Redis orders the sorted set, so the outcome does not depend
        on the order segments arrive in. ``leaving``: members this transaction removes (a replaced
        segment's), counted as gone already.
        """
        short = keys.short_tier(self.t, self.s)
        gone = set(leaving) | self._deleted
        count = self.pipe.zcard(short) - len(gone & self._in_short(short, gone)) + len(new)
        mine = sorted((f.pts, f.key, int(f.fields["n_tokens"]), int(f.fields["token_bytes"])) for f in new)
        oldest_first = heapq.merge(self._short_oldest(short, gone), mine)
        victims: list[str] = []
        while (
            count > self.config.recent_frames
            or self.counters["short_tokens"] > self.config.short_max_tokens
            or self.counters["short_bytes"] > self.config.short_max_bytes
        ):
            oldest = next(oldest_first, None)
            if oldest is None:
                break
            _, key, n_tokens, n_bytes = oldest
            victims.append(key)
            count -= 1
            self.counters["short_tokens"] -= n_tokens
            self.counters["short_bytes"] -= n_bytes
        if victims:
            self.writes.append(lambda p: p.zrem(short, *victims))
            for victim in victims:
                self.writes.append(lambda p, v=victim: p.hdel(keys.frame(self.t, v), *TOKEN_FIELDS))
        self._left_short.update(victims)
        self.evicted_short = len(victims)
        return victims

    def _in_short(self, short: str, candidates: set[str]) -> set[str]:
        """Those of ``candidates`` that are members of the short tier."""
        ordered = sorted(candidates)
        scores = self.pipe.zmscore(short, ordered) if ordered else []
        return {key for key, score in zip(ordered, scores) if score is not None}

    def _short_oldest(self, short: str, gone: set[str]):
        start = 0
        while True:
            page = self.pipe.zrange(short, start, start + _PAGE - 1, withscores=True)
            if not page:
                return
            members = [m.decode() for m, _ in page]
            found = self.pipe.pipeline(transaction=False)
            for key in members:
                found.hmget(keys.frame(self.t, key), ("n_tokens", "token_bytes"))
            for (member, score), (n_tokens, n_bytes) in zip(page, found.execute()):
                if member.decode() not in gone:
                    yield (
                        score,
                        member.decode(),
                        int(n_tokens or 0),
                        int(n_bytes or 0),
                    )
            start += _PAGE

    def evict_mid(self) -> None:
        """Closed events past the mid tier's budgets lose their token blob, oldest first (they stay searchable)."""
        mid = keys.mid_tier(self.t, self.s)
        open_key = self._open.key if self._open is not None else self._open_key
        evicted: list[str] = []
        start = 0
        while self._mid_over():
            page = [m.decode() for m in self.pipe.zrange(mid, start, start + _PAGE - 1)]
            if not page:
                break
            start += _PAGE
            # Events this write closed are the newest; Redis holds them only once it commits.
            for entry in self._read(
                [k for k in page if k != open_key and k not in self._deleted and k not in self._closed]
            ):
                if not self._mid_over():
                    break
                self.counters["mid_tokens"] -= int(entry.num("blob_tokens"))
                self.counters["mid_bytes"] -= int(entry.num("blob_bytes"))
                evicted.append(entry.key)
        self._left_mid.update(evicted)
        if evicted:
            self.writes.append(lambda p: p.zrem(mid, *evicted))
            for key in evicted:
                self.writes.append(lambda p, k=key: p.delete(keys.event_tokens(self.t, k)))
                self.writes.append(
                    lambda p, k=key: p.hset(
                        keys.frame(self.t, k),
                        mapping={"blob_tokens": 0, "blob_bytes": 0},
                    )
                )
            self.log.append(
                f"mid tier of {self.t}/{self.s}: {len(evicted)} oldest events gave up their tokens "
                f"({evicted[0]} .. {evicted[-1]})"
            )

    def _mid_over(self) -> bool:
        return (
            self.counters["mid_tokens"] > self.config.mid_max_tokens
            or self.counters["mid_bytes"] > self.config.mid_max_bytes
        )

    def merge_long(self, new: Sequence[EncodedFrame]) -> None:
        """Past a long-tier budget, merge the oldest entries into time-ordered k-means centroids (module docstring)."""
        c = self.config
        if self.long_count <= c.long_max_entries and self.counters["long_bytes"] <= c.long_max_bytes:
            return
        mean_bytes = self.counters["long_bytes"] / max(self.long_count, 1)
        excess = max(
            self.long_count - int(c.merge_low_water * c.long_max_entries),
            math.ceil((self.counters["long_bytes"] - c.merge_low_water * c.long_max_bytes) / mean_bytes),
        )
        wanted = math.ceil(excess * c.merge_factor / (c.merge_factor - 1))
        candidates = self._merge_candidates(wanted, new)
        if len(candidates) < 2:
            self.warnings.append(
                f"long tier of {self.t}/{self.s} over budget ({self.long_count} entries, "
                f"{self.counters['long_bytes']} bytes) but only {len(candidates)} entries are older "
                "than the short tier and the open event: raise long_max_* or lower recent_frames"
            )
            return
        k = max(1, len(candidates) - excess)
        if len(candidates) < wanted:
            self.warnings.append(
                f"long tier of {self.t}/{self.s}: only {len(candidates)} entries may merge (the rest are in the short "
                f"tier, the open event or mid-tier events), so {len(candidates)} become {k}: the long budget is "
                "small for the short and mid budgets"
            )
        vectors = np.stack([np.frombuffer(e.h["embedding"], np.float32) for e in candidates])
        weights = np.array([e.num("covers", 1.0) for e in candidates])
        runs = contiguous_kmeans(vectors, weights, k)
        before = self.long_count
        for run in runs:
            if len(run) > 1:
                self._merge(
                    [candidates[i] for i in run],
                    vectors[run.start : run.stop],
                    weights[run.start : run.stop],
                )
        kinds = {kind: sum(e.kind == kind for e in candidates) for kind in ("frame", "event", "merged")}
        self.log.append(
            f"long tier of {self.t}/{self.s} over budget: merged the {len(candidates)} oldest entries {kinds} into "
            f"{len(runs)} ({before} -> {self.long_count} entries, {self.counters['long_bytes']} bytes)"
        )

    def _merge_candidates(self, wanted: int, new: Sequence[EncodedFrame]) -> list[_Entry]:
        """The ``wanted`` oldest long-tier entries older than the short tier (after this write) and the open event."""
        cutoffs = [f.wallclock for f in new if f.key not in self._left_short]
        event = self._open_event()
        if event is not None:
            cutoffs.append(event.start_wallclock)
        short = keys.short_tier(self.t, self.s)
        skip = self._left_short | self._deleted
        for member in self.pipe.zrange(short, 0, len(skip)):
            if member.decode() not in skip:
                cutoffs.append(float(self.pipe.hget(keys.frame(self.t, member.decode()), "wallclock")))
                break
        cutoff = f"({min(cutoffs)}" if cutoffs else "+inf"
        # Entries not merged yet go first, so that merges build levels (frames into centroids, later centroids
        # into coarser ones) instead of one old centroid swallowing every entry that ages past it. Only when
        # too few are left do merged entries merge again, oldest first.
        fresh = self._eligible(cutoff, wanted, merged=False)
        return fresh if len(fresh) >= wanted else self._eligible(cutoff, wanted, merged=True)

    def _eligible(self, cutoff: str, wanted: int, *, merged: bool) -> list[_Entry]:
        """The ``wanted`` oldest entries before ``cutoff`` that may merge (merged ones too if ``merged``)."""
        found: list[_Entry] = []
        start = 0
        while len(found) < wanted:
            page = [
                m.decode()
                for m in self.pipe.zrangebyscore(
                    keys.long_tier(self.t, self.s),
                    "-inf",
                    cutoff,
                    start=start,
                    num=_PAGE,
                )
            ]
            if not page:
                break
            start += len(page)
            page = [k for k in page if k not in self._deleted and (merged or not keys.is_merged_key(k))]
            # Events still in the mid tier keep their tokens until the mid tier's own budget takes them: they
            # stay entries of their own beside the merged spans.
            found += [e for e in self._read(page) if not e.num("blob_bytes") or e.key in self._left_mid]
        return found[:wanted]

    def _merge(self, members: list[_Entry], vectors: np.ndarray, weights: np.ndarray) -> None:
        mean = centroid(vectors, weights)
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        scores = np.round(unit.astype(np.float64) @ mean, 9)
        rep = members[int(np.argmax(scores))]
        (entry_id,) = self.allocate(1)
        key = keys.merged_key(self.t, self.s, entry_id)
        fields: dict = {
            "id": entry_id,
            "kind": "merged",
            "stream_id": self.s,
            "seq": min(int(e.num("seq")) for e in members),
            "pts_s": min(e.num("pts_s") for e in members),
            "t_end_s": max(e.num("t_end_s") for e in members),
            "wallclock": min(e.num("wallclock") for e in members),
            "embedding": mean.astype(np.float32).tobytes(),
            "drop_ratio": float(np.average([e.num("drop_ratio") for e in members], weights=weights)),
            "grid": members[0].h["grid"],
            "covers": int(weights.sum()),
            "boundary": int(any(e.num("boundary") for e in members)),
            "reps": json.dumps([rep.representative]),
        }
        thumb_len = 0
        if rep.h.get("thumbnail") is not None:
            fields["thumbnail"] = keys.thumbnail(self.t, key)
            source = rep.h["thumbnail"].decode()
            thumb_len = self.pipe.strlen(source)
            # Queued before the members' deletion, which takes the source with it.
            self.writes.append(lambda p: p.copy(source, keys.thumbnail(self.t, key), replace=True))
        text = next((e for e in [rep, *members] if e.h.get("text_embedding") is not None), None)
        if text is not None:
            fields["text_lines"], fields["text_embedding"] = (
                text.h["text_lines"],
                text.h["text_embedding"],
            )
        fields["bytes"] = entry_bytes(fields, None) + thumb_len
        self._delete(members)
        self.writes.append(lambda p: p.hset(keys.frame(self.t, key), mapping=fields))
        self.writes.append(lambda p: p.zadd(keys.timeline(self.t, self.s), {key: fields["wallclock"]}))
        self._index(key, entry_id, fields["wallclock"], mean, fields["bytes"])
        if text is not None:
            self.writes.append(lambda p: p.zadd(keys.text_ids(self.t), {key: entry_id}))
            self.text_added.append(
                IndexEntry(
                    entry_id,
                    key,
                    self.s,
                    fields["wallclock"],
                    np.frombuffer(text.h["text_embedding"], np.float32),
                )
            )

    def retain(self, horizon: float) -> int:
        """Delete every entry (and the open event) that ended before ``horizon`` (epoch s); how many went."""
        long = keys.long_tier(self.t, self.s)
        doomed: list[_Entry] = []
        start = 0
        while True:
            page = [m.decode() for m in self.pipe.zrangebyscore(long, "-inf", f"({horizon}", start=start, num=_PAGE)]
            if not page:
                break
            start += _PAGE
            doomed += [e for e in self._read([k for k in page if k not in self._deleted]) if e.wallclock_end < horizon]
        event = self._open_event()
        if (
            event is not None
            and self._open_key == event.key
            and event.t_end - event.start_pts + event.start_wallclock < horizon
        ):
            self.writes.append(lambda p: p.delete(keys.frame(self.t, event.key), keys.event_tokens(self.t, event.key)))
            self.writes.append(lambda p: p.zrem(keys.mid_tier(self.t, self.s), event.key))
            self.counters["mid_tokens"] -= event.blob_tokens
            self.counters["mid_bytes"] -= event.ref.blob_len
            self._open, self.ref_updates[event.key] = None, None
            self._deleted.add(event.key)
        if doomed:
            self._delete(doomed)
            self.log.append(
                f"retention of {self.t}/{self.s}: deleted {len(doomed)} entries that ended before {horizon:.0f}"
            )
        for name in (keys.boundaries(self.t, self.s), keys.timeline(self.t, self.s)):
            self.writes.append(lambda p, n=name: p.zremrangebyscore(n, "-inf", f"({horizon}"))
        segments = keys.segments(self.t, self.s)
        old = [m.decode() for m in self.pipe.zrangebyscore(segments, "-inf", f"({horizon}")]
        if old:
            self.writes.append(lambda p: p.delete(*(keys.segment(self.t, self.s, q) for q in old)))
            self.writes.append(lambda p: p.zremrangebyscore(segments, "-inf", f"({horizon}"))
        return len(doomed)

    def first_remaining(self, new: Sequence[EncodedFrame]) -> dict[str, float]:
        """Stream stats' start (first_wallclock, first_media_s) once this transaction's deletions are done;
        empty when nothing of the stream remains."""
        firsts = [(f.wallclock, f.pts) for f in new]
        for member, score in self.pipe.zrange(keys.long_tier(self.t, self.s), 0, len(self._deleted), withscores=True):
            if member.decode() not in self._deleted:
                firsts.append(
                    (
                        score,
                        float(self.pipe.hget(keys.frame(self.t, member.decode()), "pts_s")),
                    )
                )
                break
        event = self._open_event()
        if event is not None:
            firsts.append((event.start_wallclock, event.start_pts))
        if not firsts:
            return {}
        wallclock, pts = min(firsts)
        return {"first_wallclock": wallclock, "first_media_s": pts}

    def has_open_event(self) -> bool:
        return self._open_event() is not None

    # -- shared steps ----------------------------------------------------------------------

    def _index(
        self,
        key: str,
        entry_id: int,
        wallclock: float,
        vector: np.ndarray,
        n_bytes: int,
    ) -> None:
        self.writes.append(lambda p: p.zadd(keys.ids(self.t), {key: entry_id}))
        self.writes.append(lambda p: p.zadd(keys.long_tier(self.t, self.s), {key: wallclock}))
        self.added.append(IndexEntry(entry_id, key, self.s, wallclock, np.asarray(vector, np.float32)))
        self.long_count += 1
        self.counters["long_bytes"] += n_bytes

    def _delete(self, entries: Sequence[_Entry]) -> None:
        """Queue the deletion of entries from every tier and index."""
        t, s = self.t, self.s
        members = [e.key for e in entries]
        for entry in entries:
            self._uncount(entry)
            self.removed.append(entry.id)
        doomed_keys = (
            [keys.frame(t, k) for k in members]
            + [keys.thumbnail(t, k) for k in members]
            + [keys.event_tokens(t, e.key) for e in entries if e.kind == "event"]
        )
        self.writes.append(lambda p: p.delete(*doomed_keys))
        for zset in (
            keys.ids(t),
            keys.text_ids(t),
            keys.long_tier(t, s),
            keys.timeline(t, s),
            keys.short_tier(t, s),
            keys.mid_tier(t, s),
        ):
            self.writes.append(lambda p, z=zset: p.zrem(z, *members))

    def _uncount(self, entry: _Entry) -> None:
        self._deleted.add(entry.key)
        self.long_count -= 1
        self.counters["long_bytes"] -= int(entry.num("bytes"))
        if entry.in_short and entry.key not in self._left_short:
            self.counters["short_tokens"] -= int(entry.num("n_tokens"))
            self.counters["short_bytes"] -= int(entry.num("token_bytes"))
        if entry.key not in self._left_mid:
            self.counters["mid_tokens"] -= int(entry.num("blob_tokens"))
            self.counters["mid_bytes"] -= int(entry.num("blob_bytes"))

    def _read(self, entry_keys: Sequence[str]) -> list[_Entry]:
        found = self.pipe.pipeline(transaction=False)
        for key in entry_keys:
            found.hmget(keys.frame(self.t, key), _ENTRY_FIELDS)
        entries = []
        for key, values in zip(entry_keys, found.execute()):
            if values[0] is None:
                raise LookupError(f"entry {key} of {self.t}/{self.s} is in a tier but not stored")
            entries.append(_Entry(key, dict(zip(_ENTRY_FIELDS, values))))
        return entries

    # -- commit ----------------------------------------------------------------------------

    def queue_forget(self) -> None:
        """Queue the deletions and the removal of the stream's remaining bookkeeping (nothing of it is left)."""
        for write in self.writes:
            write(self.pipe)
        t, s = self.t, self.s
        self.pipe.delete(
            self.stats_key,
            keys.short_tier(t, s),
            keys.mid_tier(t, s),
            keys.long_tier(t, s),
            keys.boundaries(t, s),
            keys.segments(t, s),
            keys.timeline(t, s),
        )

    def queue(self, stats: dict[str, float | int | str]) -> None:
        """Queue everything (call after ``pipe.multi()``): frames first, then the steps in the order they ran."""
        event = self._open
        if event is not None:
            self._flush_event(event, still_open=True)
        for write in self.frame_writes + self.writes:
            write(self.pipe)
        self.pipe.set(keys.next_id(self.t), self.next_id)
        self.pipe.hset(
            self.stats_key,
            mapping={
                **stats,
                **self.counters,
                "open_event": event.key if event is not None else "",
            },
        )
