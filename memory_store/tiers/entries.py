"""What the tier steps share: an entry read back from Redis, the fields they read, the counters they keep."""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

Pipeline = redis.client.Pipeline
COUNTERS = ("short_tokens", "short_bytes", "mid_tokens", "mid_bytes", "long_bytes")
# What a merge or a deletion needs of an entry.
ENTRY_FIELDS = (
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
PAGE = 512


@dataclass
class Entry:
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
