"""The protocol of a stateful operator: per-stream state it can hand over and take back.

The compressor (with its pruner), the boundary detector, the frame skipper, the text reader, the caption
reader and the speech windows keep state per (tenant, stream). A runtime that stores or moves that state (the backfill manifest, a
live actor evicting a quiet stream) sees only this protocol, never an operator's fields; what `snapshot`
returns is plain data (dicts, lists, numbers, strings, numpy arrays) that the caller serialises as it likes.

`snapshot_stream` is `snapshot` limited to one stream, in the same format, and `restore_stream` takes it back
for that stream alone, leaving the others as they are: a live actor stores an evicted stream's state and
restores it when the stream returns (pipelines/ingest/idle.py).

`RecentAnswers` lets such an operator answer a segment read again as it did the first time (a live source
retries a segment after its successors; see there).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from operators.frames import SegmentInfo

StreamKey = tuple[str, str]  # (tenant_id, stream_id)
_State = TypeVar("_State")
_Answer = TypeVar("_Answer")


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


class PerStreamState(Generic[_State]):
    """The snapshot plumbing of an operator whose state is one ``_State`` per stream in ``self._streams``
    (`Stateful` and `StreamStateful`): a subclass says how one stream's state becomes plain data (`_dump`) and
    back (`_load`), and names its snapshot format (``SNAPSHOT_NAME``, ``SNAPSHOT_VERSION``)."""

    SNAPSHOT_NAME: ClassVar[str]
    SNAPSHOT_VERSION: ClassVar[int]
    _streams: dict[StreamKey, _State]
    _recent: RecentAnswers[Any] | None = None  # an operator that answers segments read again sets one

    def _dump(self, state: _State) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, entry: dict[str, Any]) -> _State:
        raise NotImplementedError

    def forget(self, tenant_id: str, stream_id: str) -> None:
        self._streams.pop((tenant_id, stream_id), None)
        if self._recent is not None:
            self._recent.forget(tenant_id, stream_id)

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot(list(self._streams))

    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict[str, Any] | None:
        key = (tenant_id, stream_id)
        return self._snapshot([key]) if key in self._streams else None

    def restore(self, state: dict[str, Any]) -> None:
        """Replace all state with a snapshot's."""
        self._streams = self._parse(state)

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict[str, Any]) -> None:
        replace_stream(self._streams, tenant_id, stream_id, self._parse(state))

    def _snapshot(self, keys: list[StreamKey]) -> dict[str, Any]:
        return {"version": self.SNAPSHOT_VERSION,
                "streams": [{"tenant_id": tenant, "stream_id": stream, **self._dump(self._streams[(tenant, stream)])}
                            for tenant, stream in keys]}

    def _parse(self, state: dict[str, Any]) -> dict[StreamKey, _State]:
        if state.get("version") != self.SNAPSHOT_VERSION:
            raise ValueError(f"{self.SNAPSHOT_NAME} snapshot version {state.get('version')!r}, "
                             f"expected {self.SNAPSHOT_VERSION}")
        return {(entry["tenant_id"], entry["stream_id"]): self._load(entry) for entry in state["streams"]}


def snapshot_steps(steps: dict[str, StreamStateful | None], tenant_id: str, stream_id: str) -> dict[str, Any] | None:
    """One stream's state in each of ``steps`` (None: a step switched off), by step name; None when none has any."""
    held = {name: step.snapshot_stream(tenant_id, stream_id) for name, step in steps.items() if step is not None}
    return {name: state for name, state in held.items() if state is not None} or None


def restore_steps(steps: dict[str, StreamStateful | None], tenant_id: str, stream_id: str,
                  state: dict[str, Any]) -> None:
    """Take back `snapshot_steps`' result; a step it holds nothing of starts the stream afresh. ValueError when
    it holds the state of a step not here (taken with another configuration: frame skip switched off since)."""
    present = {name: step for name, step in steps.items() if step is not None}
    if set(state) - set(present):
        raise ValueError(f"the stream's state holds {sorted(state)}, but the steps here are {sorted(present)}")
    for name, step in present.items():
        if name in state:
            step.restore_stream(tenant_id, stream_id, state[name])
        else:
            step.forget(tenant_id, stream_id)


class RecentAnswers(Generic[_Answer]):
    """What a stateful operator answered for each stream's latest ``keep`` segments.

    A live source retries a segment whose memory write gave up waiting for its predecessor
    (pipelines/ray/supervision.py) after the segment's successors went through the operators. Read again, the
    segment must get the answer it got the first time, which was never stored, and leave the stream's state
    where its successors left it: restarting the state from an old segment loses what it was tracking (an
    event's statistics, caption rows on screen), and skipping the segment loses its answer. A segment is known
    by its session, sequence number and start, so a stream published again from the start is not mistaken
    for a retry.
    """

    def __init__(self, keep: int = 16):
        self.keep = keep
        self._by_stream: dict[StreamKey, OrderedDict[tuple[str, int, float], _Answer]] = {}

    def get(self, segment: SegmentInfo) -> _Answer | None:
        return self._by_stream.get((segment.tenant_id, segment.stream_id), {}).get(_segment_key(segment))

    def put(self, segment: SegmentInfo, answer: _Answer) -> None:
        answers = self._by_stream.setdefault((segment.tenant_id, segment.stream_id), OrderedDict())
        answers[_segment_key(segment)] = answer
        while len(answers) > self.keep:
            answers.popitem(last=False)

    def forget(self, tenant_id: str, stream_id: str) -> None:
        self._by_stream.pop((tenant_id, stream_id), None)


def _segment_key(segment: SegmentInfo) -> tuple[str, int, float]:
    return segment.session, segment.seq, segment.media_start_s
