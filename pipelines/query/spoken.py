"""What was said, for queries: transcript lines as evidence, ranked with their confidence, and the words
said around any evidence for the answerer.

Transcript lines (captions, subtitles, recognised speech: memory_store/transcripts.py) are embedded with the
MiniLM model on-screen text is, so one query vector searches both; the engine merges the two by score.
A recognised line's score is its cosine scaled by ``0.5 + 0.5 * confidence``: a line the recogniser was
unsure of must match better to rank with an authored caption (confidence 1, score unchanged), and a line
of confidence 0 still counts at half weight rather than vanishing (pocketsphinx's scores run low on real
broadcast audio even where its words are right).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from memory_store.client import MemoryClient
from memory_store.hits import TextHit
from memory_store.transcripts import TranscriptHit

# Lines this many seconds either side of an evidence span are "what was said around it" for the answerer.
SAID_AROUND_S = 5.0
# The answerer gets at most this many words per evidence item of what was said around it.
_SAID_MAX_CHARS = 600


def confidence_weight(confidence: float) -> float:
    return 0.5 + 0.5 * min(max(confidence, 0.0), 1.0)


def spoken_hits(memory: MemoryClient, tenant_id: str, vector: np.ndarray, *, stream_ids, t_from, t_to, k: int,
                min_score: float) -> list[TranscriptHit]:
    """Transcript lines matching ``vector``, scored with their confidence, those at or above ``min_score``."""
    found = memory.search_transcript(tenant_id, vector, stream_ids=stream_ids, t_from=t_from, t_to=t_to, k=k)
    ranked = [replace(h, score=h.score * confidence_weight(h.confidence)) for h in found]
    return [h for h in ranked if h.score >= min_score]


def source_of(hit: Any) -> str | None:
    """Where a piece of evidence's words came from: on-screen text, a transcript source, or None (visual)."""
    if isinstance(hit, TranscriptHit):
        return hit.source
    if isinstance(hit, TextHit):
        return "ocr"
    return None


def said_around(memory: MemoryClient, tenant_id: str, hit: Any) -> str:
    """The transcript lines of the hit's stream overlapping its span (padded by SAID_AROUND_S), as one text."""
    start, end = hit.wallclock_start - SAID_AROUND_S, hit.wallclock_end + SAID_AROUND_S
    # Lines are listed by their start; one starting up to a caption's longest hold earlier may still overlap.
    lines = memory.transcript(tenant_id, hit.stream_id, start - 30.0, end)
    words = " ".join(line.text for line in lines if line.wallclock_end >= start)
    return words[:_SAID_MAX_CHARS]
