"""Retention: entries that ended retention_s before the stream's newest frame leave every tier."""

from __future__ import annotations

from collections.abc import Sequence

from memory_store import keys
from memory_store.records import EncodedFrame
from memory_store.tiers.entries import PAGE, Entry


class RetentionSteps:
    """StreamTxn's retention steps (transaction.py holds the state and the shared steps they use)."""

    def retain(self, horizon: float) -> int:
        """Delete every entry (and the open event) that ended before ``horizon`` (epoch s); how many went."""
        long = keys.long_tier(self.t, self.s)
        doomed: list[Entry] = []
        start = 0
        while True:
            page = [m.decode() for m in self.pipe.zrangebyscore(long, "-inf", f"({horizon}", start=start, num=PAGE)]
            if not page:
                break
            start += PAGE
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
        for name in (keys.boundaries(self.t, self.s), keys.timeline(self.t, self.s), keys.gaps(self.t, self.s)):
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
