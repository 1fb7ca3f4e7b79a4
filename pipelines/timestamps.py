"""Repairing the timestamps of live video packets into one monotonic clock.

Files carry clean timestamps; live sources often do not. What this repairs, and how:

- ``missing``: a packet with neither PTS nor DTS (RTSP before its first RTCP sender report, some RTP
  depacketizers, raw elementary streams): it comes one frame period after the packet before it (from
  the frame rate, else from how long after it the packet arrived); the first packets of a source are
  placed by their arrival time.
- ``pts_from_dts``: a DTS-only packet; without B-frames presentation order is decode order.
- ``dts_from_pts``: a PTS-only packet (AVI, RTP without B-frames): decode order is presentation order.
- ``wrap``: the 33-bit MPEG-TS / RTP 90 kHz clock rolling over (every 26.5 h): unwrapped, the timeline
  goes on.
- ``reset`` / ``jump``: the clock went backwards (an encoder restarted, a playlist was rewound) or forward
  by more than ``max_jump_s`` (an encoder restarted with a new base, a splice): the timeline continues
  where it was, after as long as the packets took to arrive (at least one frame period). The caller
  starts a new segment at the next keyframe: frames on either side of a reset do not belong together.
- ``non_monotonic``: a DTS at or a little before the previous one (a muxer's rounding, a duplicated
  packet): moved one tick after it, since no muxer takes decode times that go backwards.
- ``pts_before_dts``: a frame presented before it is decoded, impossible; its PTS is set to its DTS.

Everything is in integer ticks of the 90 kHz MPEG-TS clock (``CLOCK_HZ``), so nothing drifts. The
repair is pure bookkeeping (no I/O, no clock of its own: the caller passes each packet's arrival time),
so it is unit-tested on made-up packet sequences.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

CLOCK_HZ = 90_000
# The 90 kHz clocks of MPEG-TS and RTP are 33 / 32 bits wide; FFmpeg hands RTP timestamps out already
# unwrapped, MPEG-TS (UDP, SRT, HLS) ones as read.
WRAP_TICKS = 1 << 33

REPAIR_KINDS = ("missing", "pts_from_dts", "dts_from_pts", "wrap", "reset", "jump", "non_monotonic",
                "pts_before_dts")


@dataclass(frozen=True)
class Stamp:
    """A packet's repaired times, in ticks on the source's continuous timeline. ``discontinuity``: the
    source's clock broke before this packet (``reset`` / ``jump``): what came before is another timeline."""

    pts: int
    dts: int
    duration: int
    discontinuity: bool = False


class TimestampRepair:
    """One source connection's packet times, repaired into a timeline whose decode times only go up.

    ``time_base``: the stream's time base; ``frame_ticks``: one frame period (0 when the stream does not
    say: arrival times stand in); ``max_jump_s``: a forward step of DTS larger than this is a clock jump.
    ``repairs`` counts what was repaired, by kind (`REPAIR_KINDS`); `take_repairs` hands the counts out and
    starts over (the segmenter records them per segment).
    """

    def __init__(self, time_base: Fraction, frame_ticks: int = 0, *, max_jump_s: float = 10.0):
        self._to_ticks = Fraction(time_base) * CLOCK_HZ
        # Only a 90 kHz time base can carry a 33-bit 90 kHz clock that wraps.
        self._wrap = WRAP_TICKS if self._to_ticks == 1 else 0
        self._frame_ticks = frame_ticks
        self._max_jump = round(max_jump_s * CLOCK_HZ)
        self._shift = 0  # added to unwrapped source ticks to land on the continuous timeline
        self._unwrap = 0  # whole wraps seen so far, in ticks
        self._last_raw_dts: int | None = None  # source ticks (before unwrap) of the last stamped packet
        self._last_dts: int | None = None  # timeline ticks of the last packet
        self._last_arrival = 0.0
        self._end = 0  # presentation end (pts + duration) of the latest frame, on the timeline
        self._last_synthesized = False  # the last packet's times were made up (no timestamps)
        self.repairs: Counter[str] = Counter()

    def take_repairs(self) -> dict[str, int]:
        out, self.repairs = dict(self.repairs), Counter()
        return out

    def stamp(self, pts: int | None, dts: int | None, duration: int | None, arrival: float) -> Stamp:
        """The repaired times of one packet (its fields in the stream's time base; ``arrival``: monotonic
        seconds when it was read)."""
        ticks = round(duration * self._to_ticks) if duration else self._frame_ticks
        if pts is None and dts is None:
            return self._synthesize(ticks, arrival)
        if pts is None:
            self.repairs["pts_from_dts"] += 1
            pts = dts
        elif dts is None:
            self.repairs["dts_from_pts"] += 1
            dts = pts
        raw_pts, raw_dts = round(pts * self._to_ticks), round(dts * self._to_ticks)
        if self._wrap and self._last_raw_dts is not None and raw_dts < self._last_raw_dts - self._wrap // 2:
            self.repairs["wrap"] += 1
            self._unwrap += self._wrap
        unwrapped_dts = raw_dts + self._unwrap
        unwrapped_pts = raw_pts + self._unwrap
        if self._wrap and unwrapped_pts < unwrapped_dts - self._wrap // 2:  # PTS already wrapped, DTS not yet
            unwrapped_pts += self._wrap
        self._last_raw_dts = raw_dts
        discontinuity = False
        dts_out = unwrapped_dts + self._shift
        if self._last_dts is not None:
            step = dts_out - self._last_dts
            if self._last_synthesized:
                # Real timestamps after made-up ones: carry on from the made-up timeline.
                self._rebase(unwrapped_pts, unwrapped_dts, arrival)
            elif step > self._max_jump or step < -min(self._max_jump, CLOCK_HZ):
                self.repairs["jump" if step > 0 else "reset"] += 1
                self._rebase(unwrapped_pts, unwrapped_dts, arrival)
                discontinuity = True
            elif step <= 0:
                self.repairs["non_monotonic"] += 1
                self._shift += self._last_dts + 1 - dts_out
            dts_out = unwrapped_dts + self._shift
        pts_out = unwrapped_pts + self._shift
        if pts_out < dts_out:
            self.repairs["pts_before_dts"] += 1
            pts_out = dts_out
        self._advance(pts_out, dts_out, ticks, arrival, synthesized=False)
        return Stamp(pts_out, dts_out, ticks, discontinuity)

    def _rebase(self, pts: int, dts: int, arrival: float) -> None:
        """Shift the source's clock so this packet is presented where the frames before it ended, plus
        however long the source stalled (arrival time beyond a frame period or two)."""
        self._shift = self._end + self._stall(arrival) - pts
        if self._last_synthesized:  # the same segment goes on, so decode times must keep rising
            self._shift = max(self._shift, self._last_dts + 1 - dts)
        # After a reset or jump decode times may restart lower: the caller starts a new segment.

    def _synthesize(self, ticks: int, arrival: float) -> Stamp:
        self.repairs["missing"] += 1
        if self._last_dts is None:
            dts = 0
        else:  # one frame after the last one, later if the source stalled
            dts = self._last_dts + max(1, self._frame_ticks or round((arrival - self._last_arrival) * CLOCK_HZ))
            dts = max(dts, self._last_dts + self._stall(arrival))
        self._advance(dts, dts, ticks, arrival, synthesized=True)
        return Stamp(dts, dts, ticks)

    def _stall(self, arrival: float) -> int:
        """Ticks the source was silent beyond its normal spacing: none when packets came at most two frame
        periods apart (or in a burst), else the silence less one frame period."""
        waited = round((arrival - self._last_arrival) * CLOCK_HZ)
        return waited - self._frame_ticks if waited > 2 * self._frame_ticks else 0

    def _advance(self, pts: int, dts: int, ticks: int, arrival: float, *, synthesized: bool) -> None:
        self._last_dts, self._last_arrival, self._last_synthesized = dts, arrival, synthesized
        self._end = max(self._end, pts + ticks)
