"""The protocol of a stateful operator: per-stream state it can hand over and take back.

The compressor (with its pruner), the boundary detector, the frame skipper and the text reader keep state per
(tenant, stream). A runtime that stores or moves that state (the backfill manifest, a restarted actor) sees
only this protocol, never an operator's fields; what `snapshot` returns is plain data (dicts, lists, numbers,
strings, numpy arrays) that the caller serialises as it likes.
"""

from __future__ import annotations

from typing import Any, Protocol


class Stateful(Protocol):
    def snapshot(self) -> dict[str, Any]:
        """All per-stream state, as plain data."""
        ...

    def restore(self, state: dict[str, Any]) -> None:
        """Take back what `snapshot` returned: the operator continues exactly as the one that took it."""
        ...

    def forget(self, tenant_id: str, stream_id: str) -> None:
        """Drop one stream's state: its next frame starts from nothing."""
        ...
