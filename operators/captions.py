"""Closed captions: CEA-608 (CC1) from the cc_data the decoder found on each frame, as transcript lines.

The caption bytes are decoded by FFmpeg's ``cc_dec`` (its EIA-608 decoder, reached through PyAV), fed the
cc_data triplets of every frame in presentation order (`operators.frames.CaptionData`). Whenever the caption
screen changes (a pop-on caption flips, a roll-up row is completed), it answers with the screen as it was
up to then, stamped with when it was shown (packets carry stream time in microseconds, and ``pkt_timebase``
says so). A screen row becomes one line: it starts when the row first shows, keeps its start while it grows
(roll-up typing extends a row: the new text starts with the old), moves up without ending (roll-up scrolls
rows), and ends where the last screen showing it ended. So a line's span is when its words were on screen,
which for broadcast captions trails the speech by a second or two; it is stored once a screen without it has
been reported.

Caption state crosses segments (a pop-on caption is loaded in one and shown in the next; a row outlives many),
so the reader is stateful per stream (`operators.state.Stateful`). cc_dec's own buffers cannot be copied out,
so a snapshot keeps the open rows and the caption bytes fed since the screen last changed, and a restore
replays those bytes into a fresh decoder. That restores a caption being loaded or typed; a mode set before
the last screen change (roll-up depth, say) is not replayed, and broadcast encoders repeat it on every row.

Only field 1's first channel (CC1, what US broadcast carries its primary captions on) is read; CC2-CC4 and
CEA-708 services are not yet (cc_dec decodes CEA-608 only).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction

import av

from operators.config import TranscriptConfig
from operators.frames import CaptionData, FrameBatch
from operators.side_tracks import ass_words
from operators.state import PerStreamState, RecentAnswers, StreamKey
from operators.transcript import TranscriptLine

CHANNEL = "CC1"
# Caption bytes kept for a restore: a screen is rebuilt from at most this many frames' data (a pop-on caption
# loads in a second or two; 900 frames is 30 s at 30 fps).
_MAX_TAIL = 900


@dataclass
class _Row:
    text: str
    start_s: float
    end_s: float


@dataclass
class _Stream:
    decoder: av.codec.context.CodecContext
    rows: list[_Row] = field(default_factory=list)
    tail: deque[CaptionData] = field(default_factory=lambda: deque(maxlen=_MAX_TAIL))  # since the last report
    first_s: float | None = None  # the first caption data's time: nothing was shown before it
    last_words_s: float | None = None  # the end of the last reported screen with words
    # The newest caption data fed: a segment read again (a retry after later ones) must not feed the decoder old
    # bytes, which would rebuild a screen out of order.
    fed_s: float | None = None


_US = 1_000_000  # packets carry stream time in microseconds, cc_dec's own output unit


def _new_decoder() -> av.codec.context.CodecContext:
    decoder = av.CodecContext.create("cc_dec", "r")
    decoder.options = {"pkt_timebase": f"1/{_US}"}
    decoder.open()
    return decoder


def _packet(data: CaptionData) -> av.Packet:
    packet = av.Packet(data.data)
    packet.pts = packet.dts = round(data.pts_s * _US)
    packet.time_base = Fraction(1, _US)
    return packet


class CaptionReader(PerStreamState["_Stream"]):
    """CC1 caption lines of each stream, from its batches in stream order; state per stream, explicit."""

    SNAPSHOT_NAME = "caption"
    SNAPSHOT_VERSION = 1

    def __init__(self, config: TranscriptConfig, language: str = "en"):
        self.max_row_s = config.max_caption_s
        self.language = language
        self._streams: dict[StreamKey, _Stream] = {}
        self._recent: RecentAnswers[list[TranscriptLine]] = RecentAnswers()

    def read(self, batch: FrameBatch) -> list[TranscriptLine]:
        """The caption lines that ended in this batch (or ran past ``max_caption_s``), in time order. A segment
        read again while it is among the stream's latest (a live source's retry) gets the lines it got the first
        time (operators.state.RecentAnswers); memory stores a line once."""
        if not batch.captions:
            return []
        answered = self._recent.get(batch.segment)
        if answered is not None:
            return list(answered)
        key = (batch.segment.tenant_id, batch.segment.stream_id)
        state = self._streams.get(key)
        if state is None:
            state = self._streams[key] = _Stream(_new_decoder())
        lines: list[TranscriptLine] = []
        for data in batch.captions:
            if state.fed_s is not None and data.pts_s <= state.fed_s:
                continue  # already fed: a segment read before, and no longer among the latest
            state.fed_s = data.pts_s
            if state.first_s is None:
                state.first_s = data.pts_s
            shown = self._feed(state, data)
            if shown is not None:
                lines += self._show(state, *shown)
                state.tail.clear()
            else:
                state.tail.append(data)
        lines.sort(key=lambda line: line.start_s)
        self._recent.put(batch.segment, list(lines))
        return lines

    def _feed(self, state: _Stream, data: CaptionData) -> tuple[list[str], float, float] | None:
        """(rows, shown from, shown until) of the caption screen this frame's bytes ended, else None."""
        subtitle = state.decoder.decode2(_packet(data))
        if subtitle is None:
            return None
        rows: list[str] = []
        for rect in subtitle.rects:
            for row in rect.dialogue.decode("utf-8", errors="replace").split("\n"):
                words = ass_words(row)
                if words:
                    rows.append(words)
        # A screen up when the decoder started is stamped 0: it was shown from the first data seen at most.
        stamped = subtitle.pts / _US if subtitle.pts is not None and subtitle.pts >= 0 else data.pts_s
        start = max(stamped, state.first_s)
        return rows, start, max(stamped + subtitle.end_display_time / 1000, start)

    def _show(self, state: _Stream, screen: list[str], start: float, end: float) -> list[TranscriptLine]:
        """Match the screen's rows with the open ones: kept and grown rows keep their start, new ones start with
        the screen, and open rows it lacks have ended (where the last screen showing them did)."""
        still = []
        unmatched = list(state.rows)
        for text in screen:
            match = next((row for row in unmatched if text == row.text or text.startswith(row.text)), None)
            if match is not None:
                unmatched.remove(match)
                still.append(_Row(text, match.start_s, end))
            else:
                still.append(_Row(text, start, end))
        if screen:
            state.last_words_s = end
        ended = [self._line(row) for row in unmatched]
        # Rows that stayed up past max_caption_s are stored now and start again (roll-up rows that stay while
        # others scroll, a caption re-sent unchanged): a long-lived row is searchable before it leaves.
        for row in still:
            if row.end_s - row.start_s >= self.max_row_s:
                ended.append(self._line(row))
                row.start_s = row.end_s
        state.rows = still
        return ended

    def _line(self, row: _Row) -> TranscriptLine:
        return TranscriptLine(row.start_s, max(row.end_s, row.start_s), row.text, "caption", self.language, 1.0,
                              CHANNEL)

    def words_since(self, tenant_id: str, stream_id: str) -> float | None:
        """Until when the stream's captions last showed words (None: never, as far as reported); a row still
        up counts as showing now (+inf)."""
        state = self._streams.get((tenant_id, stream_id))
        if state is None:
            return None
        return float("inf") if state.rows else state.last_words_s

    def flush(self, tenant_id: str, stream_id: str) -> list[TranscriptLine]:
        """The rows of the last screen reported, as lines (the stream ended); the stream's state is dropped."""
        state = self._streams.pop((tenant_id, stream_id), None)
        self._recent.forget(tenant_id, stream_id)
        return [self._line(row) for row in state.rows] if state is not None else []

    # Snapshots (operators.state.PerStreamState): plain values only (the backfill manifest stores them as JSON),
    # caption bytes as hex; a restored stream's rows on screen stay open.
    def _dump(self, state: _Stream) -> dict:
        return {"rows": [(row.text, row.start_s, row.end_s) for row in state.rows],
                "tail": [(data.pts_s, data.data.hex()) for data in state.tail], "first_s": state.first_s,
                "last_words_s": state.last_words_s, "fed_s": state.fed_s}

    def _load(self, s: dict) -> _Stream:
        stream = _Stream(_new_decoder(), [_Row(text, float(start), float(end)) for text, start, end in s["rows"]],
                         deque((CaptionData(float(pts), bytes.fromhex(data)) for pts, data in s["tail"]),
                               maxlen=_MAX_TAIL), s["first_s"], s["last_words_s"], s.get("fed_s"))
        for data in stream.tail:  # back to the decoder's state: what it saw since the screen last changed
            stream.decoder.decode2(_packet(data))
        return stream
