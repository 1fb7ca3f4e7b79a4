"""The long tier's budget: the oldest entries merged by time-ordered k-means into centroids."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from memory_store import keys
from memory_store.merge import centroid, contiguous_kmeans
from memory_store.records import EncodedFrame, IndexEntry, entry_bytes
from memory_store.tiers.entries import PAGE, Entry


class MergeSteps:
    """StreamTxn's merge steps (transaction.py holds the state and the shared steps they use)."""

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

    def _merge_candidates(self, wanted: int, new: Sequence[EncodedFrame]) -> list[Entry]:
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

    def _eligible(self, cutoff: str, wanted: int, *, merged: bool) -> list[Entry]:
        """The ``wanted`` oldest entries before ``cutoff`` that may merge (merged ones too if ``merged``)."""
        found: list[Entry] = []
        start = 0
        while len(found) < wanted:
            page = [
                m.decode()
                for m in self.pipe.zrangebyscore(
                    keys.long_tier(self.t, self.s),
                    "-inf",
                    cutoff,
                    start=start,
                    num=PAGE,
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

    def _merge(self, members: list[Entry], vectors: np.ndarray, weights: np.ndarray) -> None:
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
