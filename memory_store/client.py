"""What the floors above ask of memory, as one typed interface.

Two implementations: `MemoryStore` itself (in-process: a backfill, a test, one shard) and the Ray client in
pipelines/ray/memory.py (the running pipeline's memory actors, each tenant on its shard). The query engine,
replay and the CLI take a `MemoryClient`, so they read the same in both, and their tests run without Ray.
Bad input raises here as it does in the store (`StageError`, `ValueError`), whichever side of a process
boundary the store is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from memory_store.hits import Hit, TextHit
    from memory_store.records import FrameRecord, StreamInfo, WriteResult
    from memory_store.transcripts import LineRecord, TranscriptHit
    from operators.frames import CompressedBatch, FrameText
    from operators.transcribe import Transcript


class MemoryClient(Protocol):
    def write(self, batch: CompressedBatch, texts: Sequence[FrameText] | None = None, *,
              replace: bool = False, transcript: Transcript | None = None) -> WriteResult | None: ...

    def search(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
               t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list[Hit]: ...

    def search_text(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
                    t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list[TextHit]: ...

    def search_transcript(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
                          t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list[TranscriptHit]: ...

    def transcript(self, tenant_id: str, stream_id: str, t_from: float | None = None, t_to: float | None = None,
                   limit: int = 1000) -> list[LineRecord]: ...

    def recent(self, tenant_id: str, stream_ids: Sequence[str] | None = None, n: int = 8, *,
               t_from: float | None = None, t_to: float | None = None) -> list[FrameRecord]: ...

    def timeline(self, tenant_id: str, stream_id: str, t_from: float | None = None, t_to: float | None = None,
                 limit: int = 1000) -> list[FrameRecord]: ...

    def streams(self, tenant_id: str) -> list[StreamInfo]: ...

    def frames(self, tenant_id: str, frame_keys: Sequence[str]) -> list[FrameRecord | None]: ...

    def thumbnail(self, key: str) -> bytes | None: ...

    def purge_stream(self, tenant_id: str, stream_id: str) -> int: ...

    def delete_stream(self, tenant_id: str, stream_id: str) -> bool: ...

    def erase_stream(self, tenant_id: str, stream_id: str) -> int: ...

    def set_retention(self, tenant_id: str, stream_id: str, seconds: float | None) -> int: ...

    def rebuild(self) -> None: ...
