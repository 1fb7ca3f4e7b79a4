"""The query engine's two model collaborators, typed. Memory is the third (`memory_store.client.MemoryClient`).

In-process, `operators.encode.VisionEncoder` and `operators.answer.Answerer` are these themselves; in a
deployment, pipelines/ray/clients.py reaches the encode and answer actors. Bad input raises `StageError` in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from operators.answer import AnswerResult, EvidenceItem


class QueryEncoder(Protocol):
    def embed_text(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_images(self, images: np.ndarray) -> np.ndarray: ...

    def encode_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Answering(Protocol):
    def answer(self, question: str, evidence: Sequence[EvidenceItem]) -> AnswerResult: ...
