"""Moderation benchmark on this machine: the operators driven directly (no Ray, no Kafka). Prints a markdown
table; --write appends it to BENCHMARKS.md.

    python benchmarks/moderation.py [--rooms 1 50 200] [--seconds 10] [--write]

Rooms are rendered broadcast frames (640x360, a lower-third headline that changes every 15 s, rooms out of
step) at 1 frame/s; each room shows a banned term once, at a random second. Every frame goes through the
CPU detectors: OCR (with its change-skip, so a frame whose picture did not change costs a thumbnail
comparison) feeding the lexicon, and nudenet; then the risk engine.

- rooms per core: stream seconds screened per CPU second of this process (all its threads counted): how
  many 1 fps rooms one core keeps up with.
- event-to-decision latency: N rooms live at once, a frame of every room arriving each wall-clock second;
  seconds from the arrival of the first frame showing the term to the RED decision, p50 / p99 / max.
  When a second's frames take longer than a second to screen, the backlog shows up here.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from operators.config import OcrConfig
from operators.frames import FrameBatch, SegmentInfo
from operators.moderation.detectors import (
    LexiconDetector,
    NudityDetector,
    SafeDetector,
    screen,
)
from operators.moderation.policy import (
    LexiconPolicy,
    LexiconTerm,
    ModerationPolicy,
    PolicyBook,
)
from operators.moderation.risk import RiskEngine
from operators.ocr import ScreenTextReader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the rendered rooms of the tests: same pictures, same text
from tests.operators.moderation.rooms import BENIGN, frame  # noqa: E402

HEADLINE_S = 15
TERM = "BEST COCAINE IN TOWN"


class Screen:
    """The CPU detectors and the risk engine, as a moderation actor would hold them."""

    def __init__(self):
        policy = ModerationPolicy(version="bench", lexicon=LexiconPolicy(terms=(LexiconTerm(term="cocaine",
                                                                                              severity="RED"),)))
        self.reader = ScreenTextReader(OcrConfig())
        self.detectors = [SafeDetector(NudityDetector(policy.nudity), timeout_s=5.0),
                          SafeDetector(LexiconDetector(policy.lexicon), timeout_s=5.0)]
        self.engine = RiskEngine(PolicyBook(default=policy))

    def step(self, frames: FrameBatch):
        return self.engine.observe(frames.segment, screen(self.detectors, frames, self.reader.read(frames)))


class Room:
    def __init__(self, index: int, seconds: int, rng: random.Random):
        self.stream = f"room-{index}"
        self.offset = rng.randrange(HEADLINE_S)
        self.event_s = rng.randrange(1, seconds - 3)

    def frame_at(self, t: int, pictures: dict) -> FrameBatch:
        headline = TERM if self.event_s <= t < self.event_s + 3 else BENIGN[(t + self.offset) // HEADLINE_S % len(BENIGN)]
        info = SegmentInfo("bench", self.stream, t, time.time(), float(t), 1.0)
        return FrameBatch(info, np.array([float(t)]), pictures[headline][None])


def capacity(seconds: int, pictures: dict) -> float:
    """Stream seconds screened per CPU second."""
    screen_ = Screen()
    rooms = [Room(i, seconds, random.Random(i)) for i in range(4)]
    started = time.process_time()
    for t in range(seconds):
        for room in rooms:
            screen_.step(room.frame_at(t, pictures))
    return len(rooms) * seconds / (time.process_time() - started)


def latency(n: int, seconds: int, pictures: dict) -> list[float]:
    """Event-to-decision seconds of every room, N rooms live at once."""
    screen_ = Screen()
    rng = random.Random(n)
    rooms = [Room(i, seconds, rng) for i in range(n)]
    for room in rooms:  # warm: every reader has read its room once, as in a room that has been live a while
        screen_.step(room.frame_at(0, pictures))
    start = time.monotonic()
    arrived: dict[str, float] = {}
    out = []
    for t in range(1, seconds):
        tick = start + t - 1  # this second's frames arrive now, or were waiting if screening is behind
        time.sleep(max(0.0, tick - time.monotonic()))
        for room in rooms:
            if t == room.event_s:
                arrived[room.stream] = tick
            for decision in screen_.step(room.frame_at(t, pictures)):
                if decision.event == "alert" and decision.state == "RED":
                    out.append(time.monotonic() - arrived[room.stream])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, nargs="+", default=[1, 50, 200])
    parser.add_argument("--seconds", type=int, default=10, help="Stream seconds per latency run (>= 5).")
    parser.add_argument("--write", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = parser.parse_args()
    pictures = {h: frame(h) for h in [*BENIGN, TERM]}
    per_core = capacity(30, pictures)
    rows = []
    for n in args.rooms:
        values = latency(n, args.seconds, pictures)
        rows.append((n, len(values), np.percentile(values, 50), np.percentile(values, 99), max(values)))
    lines = [
        "| rooms | RED alerts | event-to-decision p50 s | p99 s | max s |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {n} | {k}/{n} | {p50:.3f} | {p99:.3f} | {mx:.3f} |" for n, k, p50, p99, mx in rows],
    ]
    header = (f"Rooms per CPU core at 1 frame/s (OCR with change-skip + lexicon + nudenet + risk): "
              f"**{per_core:.1f}** ({os.cpu_count()} cores here).")
    print(header + "\n\n" + "\n".join(lines))
    if args.write:
        command = f"python benchmarks/moderation.py --rooms {' '.join(map(str, args.rooms))} --seconds {args.seconds} --write"
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write(f"\n## Moderation ({time.strftime('%Y-%m-%d')})\n\n`{command}`\n\n{header}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
