"""On-screen text of stored frames: what the OCR stage read, checked and encoded for the frame hash.

A frame with text keeps two more fields in its hash (``keys.frame``):

    text_lines      compact JSON, one object per line: {"text", "confidence", "box"}
    text_embedding  float32 bytes of the text's embedding (absent when the OCR stage gave none)

and, when it has an embedding, a member in ``ll:{t}:text_ids`` (the text index's id set).
A frame without text stores neither. The frame's text is its lines joined by newlines,
as ``FrameText.text`` defines it, so it is not stored twice.

A frame the live reader did not read (``FrameText.unread``: it was behind, ``ocr.max_lag_s``) stores

    text_unread     1

and no text: its text is unknown, which readers must be able to tell from "no text" (``FrameRecord.text_read``).

Bad input raises StageError with stage "memory":
    text_mismatch                 not one FrameText per frame, in the frames' pts order
    bad_text                      a line that cannot be stored (a non-finite confidence or corner), or an
                                  unread frame with lines or an embedding
    bad_text_embedding            not a finite, non-zero vector, or an embedding without lines
    text_embedding_dim_mismatch   text embeddings of different sizes in one segment
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from operators.frames import CompressedBatch, FrameText, StageError

# Boxes are fractions of the frame's width and height: 4 decimals is under half a pixel even at
# 3840 px, and keeps a line's JSON at about a third of its full-precision size.
_DECIMALS = 4


@dataclass(frozen=True)
class StoredText:
    """The text of one frame as the frame hash keeps it. embedding: float32 [E], or None (lines only).
    unread: the frame was not read (no lines, no embedding): stored as ``text_unread``."""

    lines_json: bytes
    embedding: np.ndarray | None
    unread: bool = False


_UNREAD = StoredText(b"", None, unread=True)


def check_texts(batch: CompressedBatch, texts: Sequence[FrameText] | None) -> list[StoredText | None]:
    """One entry per frame of ``batch``: its text to store (or that it was not read), or None when it has none
    (or ``texts`` is None).

    Everything is validated before anything is returned, so a bad text never becomes durable.
    """
    if texts is None:
        return [None] * len(batch)
    seg = batch.segment
    if len(texts) != len(batch):
        raise StageError("text_mismatch", f"{len(texts)} texts for the {len(batch)} frames of segment {seg.seq} "
                         f"of {seg.stream_id}", stage="memory")
    stored: list[StoredText | None] = []
    for i, (pts, text) in enumerate(zip(batch.pts_s, texts)):
        # Frame keys are the identity of a frame, so "the same frame" means the same key.
        if seg.frame_key(float(text.pts_s)) != seg.frame_key(float(pts)):
            raise StageError("text_mismatch", f"text {i} is for pts {text.pts_s}, frame {i} is at {float(pts)}",
                             stage="memory")
        stored.append(_stored(text, i))
    dims = {s.embedding.shape[0] for s in stored if s is not None and s.embedding is not None}
    if len(dims) > 1:
        raise StageError("text_embedding_dim_mismatch", f"text embeddings of sizes {sorted(dims)} in segment "
                         f"{seg.seq} of {seg.stream_id}", stage="memory")
    return stored


def _stored(text: FrameText, i: int) -> StoredText | None:
    if text.unread:
        if text.lines or text.embedding is not None:
            raise StageError("bad_text", f"frame {i} was not read but has lines or an embedding", stage="memory")
        return _UNREAD
    embedding = None
    if text.embedding is not None:
        embedding = np.ascontiguousarray(text.embedding, dtype=np.float32)
        if embedding.ndim != 1 or not np.isfinite(embedding).all() or not np.linalg.norm(embedding):
            raise StageError("bad_text_embedding", f"text embedding of frame {i} must be a finite, non-zero "
                             f"vector, got shape {embedding.shape}", stage="memory")
        if not text.lines:
            # It would be an index entry with no text to show for it.
            raise StageError("bad_text_embedding", f"frame {i} has a text embedding but no lines", stage="memory")
    if not text.lines:
        return None
    lines = [{"text": line.text, "confidence": round(float(line.confidence), _DECIMALS),
              "box": [[round(float(x), _DECIMALS), round(float(y), _DECIMALS)] for x, y in line.box]}
             for line in text.lines]
    try:
        lines_json = json.dumps(lines, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError as exc:
        raise StageError("bad_text", f"a line of frame {i} cannot be stored: {exc}", stage="memory") from exc
    return StoredText(lines_json, embedding)


def parse_lines(raw: bytes | None) -> list[dict]:
    """The lines of a frame hash's ``text_lines`` field; empty for a frame without text."""
    return json.loads(raw) if raw is not None else []


def joined(lines: Sequence[dict]) -> str:
    """A frame's text: its lines in reading order, one per line (as ``FrameText.text``)."""
    return "\n".join(line["text"] for line in lines)
