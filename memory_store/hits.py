"""What a search returns: frames (`Hit`), and episodes of on-screen text (`TextHit`).

A headline stays on screen for many seconds, so a text search matches a run of
consecutive frames with the same text. `merge_episodes` turns each such run into
one hit spanning the whole run, so evidence shows when the text was on, not one
frame of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

# Two frames of a stream are consecutive when the second starts at most this many sampling steps
# after the first: the next sample starts one step later, give or take timestamp jitter and segment
# boundaries, while a sample missing between them (other text, or none) puts them two steps apart.
_CONSECUTIVE_STEPS = 1.5


@dataclass(frozen=True)
class Hit:
    """One retrieved frame. Times: ``t_*`` seconds from the stream's start, ``wallclock_*`` epoch seconds."""

    frame_key: str
    stream_id: str
    seq: int
    t_start: float
    t_end: float
    wallclock_start: float
    wallclock_end: float
    score: float
    thumbnail: str | None


@dataclass(frozen=True)
class TextHit(Hit):
    """A run of consecutive frames of one stream showing the same text, matched by that text.

    Times span the whole run; score is its best frame's; frame_key, seq, thumbnail and lines are
    those of that frame (the earliest of equals). lines: one dict per line (text, confidence, box).
    """

    text: str
    lines: list[dict]


def merge_episodes(hits: Sequence[TextHit]) -> list[TextHit]:
    """Merge hits of one stream with identical text on consecutive frames; best first (then oldest)."""
    # Per (stream, text): the runs so far, each with its last frame (whose duration gives the step).
    runs: dict[tuple[str, str], list[tuple[TextHit, TextHit]]] = {}
    for hit in sorted(hits, key=lambda h: (h.stream_id, h.text, h.t_start)):
        group = runs.setdefault((hit.stream_id, hit.text), [])
        if group and _consecutive(group[-1][1], hit):
            group[-1] = (_joined(group[-1][0], hit), hit)
        else:
            group.append((hit, hit))
    merged = [run for group in runs.values() for run, _ in group]
    return sorted(merged, key=lambda h: (-h.score, h.wallclock_start, h.stream_id))


def _consecutive(last: TextHit, hit: TextHit) -> bool:
    """Whether frame ``hit`` is the sample after frame ``last`` (an earlier one of the same stream)."""
    # A frame lasts until the next sample starts (RedisTier), so its duration is the step. The larger
    # of the two, because a stream's last frame may have no known duration (it then lasts 0 s).
    step = max(last.t_end - last.t_start, hit.t_end - hit.t_start)
    return hit.t_start - last.t_start <= _CONSECUTIVE_STEPS * step


def _joined(run: TextHit, hit: TextHit) -> TextHit:
    """``run`` extended by the later frame ``hit``: up to its end, and showing it if it scores strictly better."""
    best = hit if hit.score > run.score else run
    return replace(best, t_start=run.t_start, wallclock_start=run.wallclock_start, t_end=hit.t_end,
                   wallclock_end=hit.wallclock_end)
