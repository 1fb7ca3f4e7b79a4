"""Synthetic rooms: broadcast frames rendered with Pillow, and on-screen text given directly as FrameText
where the OCR itself is not under test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from operators.frames import FrameBatch, FrameText, SegmentInfo, TextLine
from operators.moderation.policy import (
    LexiconPolicy,
    LexiconTerm,
    ModerationPolicy,
    PolicyBook,
    RiskPolicy,
)

WIDTH, HEIGHT = 640, 360
EPOCH = 1_700_000_000.0
BENIGN = ["EVENING NEWS WITH DANA", "MARKETS RALLY AS RATES FALL", "DOW 38,123.45 UP 2%", "$AAPL CLOSES AT 191.20",
          "SCORE 3-1 AFTER 90 MIN", "WEATHER AT 9:30 TONIGHT", "MONEY MARKETS CLOSE HIGHER", "ELECTION 2024 RESULTS",
          "STORM WARNING FOR COASTAL TOWNS", "MEET THE CANDIDATES TONIGHT"]


def policy_book(**risk) -> PolicyBook:
    """The test policy: one RED and one YELLOW term, one semantic phrase, phone numbers YELLOW, payments RED."""
    lexicon = LexiconPolicy(terms=(LexiconTerm(term="cocaine", severity="RED"),
                                   LexiconTerm(term="onlyfans", severity="YELLOW"),
                                   LexiconTerm(term="send me money", severity="RED", semantic=True)))
    return PolicyBook(default=ModerationPolicy(version="test-7", lexicon=lexicon, risk=RiskPolicy(**risk)))


def frame(headline: str | None) -> np.ndarray:
    """A 640x360 broadcast frame: a sky gradient and a dark headline on a light lower-third banner."""
    y = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]
    sky = np.array([30, 60, 110]) * (1 - y) + np.array([70, 110, 160]) * y
    image = Image.fromarray(np.broadcast_to(sky, (HEIGHT, WIDTH, 3)).astype(np.uint8))
    if headline is not None:
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, 252, WIDTH, 324], fill=(236, 236, 228))
        draw.text((20, 270), headline, fill=(20, 20, 30), font=ImageFont.load_default(size=34))
    return np.asarray(image)


def segment(start_s: float, n: int, stream: str = "room-1", tenant: str = "t1") -> SegmentInfo:
    return SegmentInfo(tenant, stream, int(start_s), EPOCH + start_s, start_s, float(n))


def batch(images: list[np.ndarray], start_s: float, stream: str = "room-1") -> FrameBatch:
    return FrameBatch(segment(start_s, len(images), stream), start_s + np.arange(len(images), dtype=np.float64),
                      np.stack(images))


@dataclass(frozen=True)
class Inserted:
    """Risky text on screen from ``start_s`` for ``seconds``."""

    text: str
    start_s: int
    seconds: int


def texts(duration_s: int, events: list[Inserted], rotate_s: int = 45) -> list[FrameText]:
    """One FrameText per second: a benign headline that changes every ``rotate_s`` (frames in between reuse
    it, as the OCR reader would), with each event's text shown below it while the event lasts."""
    out = []
    for t in range(duration_s):
        lines = [BENIGN[(t // rotate_s) % len(BENIGN)]]
        lines += [e.text for e in events if e.start_s <= t < e.start_s + e.seconds]
        reused = t > 0 and t % rotate_s != 0 and not any(e.start_s == t or e.start_s + e.seconds == t for e in events)
        box = ((0.0, 0.7), (1.0, 0.7), (1.0, 0.9), (0.0, 0.9))
        out.append(FrameText(float(t), [TextLine(line, 0.95, box) for line in lines], None, reused))
    return out


_TINY = np.zeros((1, 8, 8, 3), np.uint8)


def text_batches(frame_texts: list[FrameText], per_segment: int = 2, stream: str = "room-1"):
    """(FrameBatch, texts) per segment; the pictures are tiny blanks: only the text is screened."""
    for start in range(0, len(frame_texts), per_segment):
        chunk = frame_texts[start : start + per_segment]
        info = segment(chunk[0].pts_s, len(chunk), stream)
        yield FrameBatch(info, [t.pts_s for t in chunk], np.repeat(_TINY, len(chunk), axis=0)), chunk
