"""The short and mid tiers' budgets: the oldest frames lose their tokens, the oldest closed events their blobs."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from memory_store import keys
from memory_store.records import TOKEN_FIELDS, EncodedFrame
from memory_store.tiers.entries import PAGE


class BudgetSteps:
    """StreamTxn's budget steps (transaction.py holds the state and the shared steps they use)."""

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
        # Once the tier is full every write evicts about as many frames as it adds: read that many of the oldest
        # first (and, should the token or byte budgets want more, pages twice as large each time), not a page of
        # 512 and their token counts on every write.
        first_page = min(max(count - self.config.recent_frames, 0) + len(gone) + 8, PAGE)
        oldest_first = heapq.merge(self._short_oldest(short, gone, first_page), mine)
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

    def _short_oldest(self, short: str, gone: set[str], page_size: int):
        start = 0
        while True:
            page = self.pipe.zrange(short, start, start + page_size - 1, withscores=True)
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
            start += page_size
            page_size = min(2 * page_size, PAGE)

    def evict_mid(self) -> None:
        """Closed events past the mid tier's budgets lose their token blob, oldest first (they stay searchable)."""
        mid = keys.mid_tier(self.t, self.s)
        open_key = self._open.key if self._open is not None else self._open_key
        evicted: list[str] = []
        start = 0
        while self._mid_over():
            page = [m.decode() for m in self.pipe.zrange(mid, start, start + PAGE - 1)]
            if not page:
                break
            start += PAGE
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
