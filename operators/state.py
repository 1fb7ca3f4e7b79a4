"""The protocol of a stateful operator: per-stream state it can hand over and take back.

The compressor (with its pruner), the boundary detector, the frame skipper, the text reader, the caption
reader and the speech windows keep state per (tenant, stream). A runtime that stores or moves that state (the backfill manifest, a
live actor evicting a quiet stream) sees only this protocol, never an operator's fields; what `snapshot`
returns is plain data (dicts, lists, numbers, strings, numpy arrays) that the caller serialises as it likes.

`snapshot_stream` is `snapshot` limited to one stream, in the same format, and `restore_stream` takes it back
for that stream alone, leaving the others as they are: a live actor stores an evicted stream's state and
restores it when the stream returns (pipelines/ingest/idle.py).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

StreamKey = tuple[str, str]  # (tenant_id, stream_id)
_State = TypeVar("_State")


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


class StreamStateful(Protocol):
    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict[str, Any] | None:
        """One stream's state as plain data; None when the operator holds none for it."""
        ...

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict[str, Any]) -> None:
        """Take back what `snapshot_stream` returned for this stream; other streams keep their state."""
        ...

    def forget(self, tenant_id: str, stream_id: str) -> None:
        ...


def replace_stream(held: dict[StreamKey, _State], tenant_id: str, stream_id: str,
                   restored: dict[StreamKey, _State]) -> None:
    """Put a one-stream snapshot's parsed state into ``held``: the stream's old state goes, others stay.
    ValueError when the snapshot holds another stream's state (a caller mixed up keys)."""
    key = (tenant_id, stream_id)
    if set(restored) - {key}:
        raise ValueError(f"a snapshot of {sorted(restored)} given to restore stream {key}")
    held.pop(key, None)
    held.update(restored)
