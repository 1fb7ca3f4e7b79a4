"""Closed captions: CEA-608 (CC1) from the cc_data the decoder found on each frame, as transcript lines.

The caption bytes are decoded by FFmpeg's ``cc_dec`` (its EIA-608 decoder, reached through PyAV), fed the
cc_data triplets of every frame in presentation order (`operators.frames.CaptionData`). It answers with the
caption screen whenever it changes: pop-on captions when they flip on, roll-up and paint-on as rows appear
and grow. A screen row becomes one line: it starts when the row first shows, keeps its start while it grows
(roll-up typing extends a row: the new text starts with the old), moves up without ending (roll-up scrolls
rows), and ends when it leaves the screen. So a line's span is when its words were on screen, which for
broadcast captions trails the speech by a second or two.

Caption state crosses segments (a pop-on caption is loaded in one and shown in the next; a row outlives many),
so the reader is stateful per stream (`operators.state.Stateful`). cc_dec's own buffers cannot be copied out,
so a snapshot keeps the open rows and the caption bytes fed since the screen last changed, and a restore
replays those bytes into a fresh decoder. That restores a caption being loaded or typed; a mode set before
the last screen change (roll-up depth, say) is not replayed, and broadcast encoders repeat it on every row.

Only field 1's first channel (CC1, what US broadcast carries its primary captions on) is read; CC2-CC4 and
CEA-708 services are not yet (cc_dec decodes CEA-608 only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av

from operators.config import TranscriptConfig
from operators.frames import CaptionData, FrameBatch
from operators.side_tracks import ass_words
from operators.transcript import TranscriptLine

StreamKey = tuple[str, str]
CHANNEL = "CC1"
_SNAPSHOT_VERSION = 1
# Caption bytes kept for a restore: a screen is rebuilt from at most this many frames' data (a pop-on caption
# loads in a second or two; 900 frames is 30 s at 30 fps).
_MAX_TAIL = 900


@dataclass
class _Row:
    text: str
    start_s: float


@dataclass
class _Stream:
    decoder: av.codec.context.CodecContext
    rows: list[_Row] = field(default_factory=list)
    tail: list[CaptionData] = field(default_factory=list)  # fed since the screen last changed


def _new_decoder() -> av.codec.context.CodecContext:
    decoder = av.CodecContext.create("cc_dec", "r")
    decoder.open()
    return decoder


class CaptionReader:
    """CC1 caption lines of each stream, from its batches in stream order; state per stream, explicit."""

    def __init__(self, config: TranscriptConfig, language: str = "en"):
        self.max_row_s = config.max_caption_s
        self.language = language
        self._streams: dict[StreamKey, _Stream] = {}

    def read(self, batch: FrameBatch) -> list[TranscriptLine]:
        """The caption lines that ended in this batch (or ran past ``max_caption_s``), in time order."""
        if not batch.captions:
            return []
        key = (batch.segment.tenant_id, batch.segment.stream_id)
        state = self._streams.get(key)
        if state is None:
            state = self._streams[key] = _Stream(_new_decoder())
        lines: list[TranscriptLine] = []
        for data in batch.captions:
            screen = self._feed(state, data)
            if screen is not None:
                lines += self._show(state, screen, data.pts_s)
                state.tail = []
            else:
                state.tail = (state.tail + [data])[-_MAX_TAIL:]
            lines += self._expire(state, data.pts_s)
        return sorted(lines, key=lambda line: line.start_s)

    def _feed(self, state: _Stream, data: CaptionData) -> list[str] | None:
        """The caption screen's rows when this frame's bytes changed it, else None."""
        packet = av.Packet(data.data)
        subtitle = state.decoder.decode2(packet)
        if subtitle is None:
            return None
        rows: list[str] = []
        for rect in subtitle.rects:
            for row in rect.dialogue.decode("utf-8", errors="replace").split("\n"):
                words = ass_words(row)
                if words:
                    rows.append(words)
        return rows

    def _show(self, state: _Stream, screen: list[str], t: float) -> list[TranscriptLine]:
        """Match the new screen's rows with the open ones: kept and grown rows keep their start, the rest end."""
        ended, still = [], []
        unmatched = list(state.rows)
        for text in screen:
            match = next((row for row in unmatched if text == row.text or text.startswith(row.text)), None)
            if match is not None:
                unmatched.remove(match)
                still.append(_Row(text, match.start_s))
            else:
                still.append(_Row(text, t))
        ended = [self._line(row, t) for row in unmatched]
        state.rows = still
        return ended

    def _expire(self, state: _Stream, t: float) -> list[TranscriptLine]:
        """Rows up longer than max_row_s: stored now, and start again (a caption left up stays findable)."""
        out = []
        for row in state.rows:
            if t - row.start_s >= self.max_row_s:
                out.append(self._line(row, t))
                row.start_s = t
        return out

    def _line(self, row: _Row, end_s: float) -> TranscriptLine:
        return TranscriptLine(row.start_s, max(end_s, row.start_s), row.text, "caption", self.language, 1.0, CHANNEL)

    def on_screen(self, tenant_id: str, stream_id: str) -> bool:
        """Whether the stream has a caption row showing (as of the last batch read)."""
        state = self._streams.get((tenant_id, stream_id))
        return state is not None and bool(state.rows)

    def flush(self, tenant_id: str, stream_id: str, end_s: float) -> list[TranscriptLine]:
        """The rows still on screen, ended at ``end_s`` (the stream ended); the stream's state is dropped."""
        state = self._streams.pop((tenant_id, stream_id), None)
        return [self._line(row, end_s) for row in state.rows] if state is not None else []

    def forget(self, tenant_id: str, stream_id: str) -> None:
        self._streams.pop((tenant_id, stream_id), None)

    def snapshot(self) -> dict:
        return {"version": _SNAPSHOT_VERSION, "streams": [
            {"tenant_id": tenant, "stream_id": stream, "rows": [(row.text, row.start_s) for row in state.rows],
             "tail": [(data.pts_s, data.data) for data in state.tail]}
            for (tenant, stream), state in self._streams.items()]}

    def restore(self, state: dict) -> None:
        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"caption snapshot version {state.get('version')!r}, expected {_SNAPSHOT_VERSION}")
        self._streams = {}
        for s in state["streams"]:
            stream = _Stream(_new_decoder(), [_Row(text, float(start)) for text, start in s["rows"]],
                             [CaptionData(float(pts), bytes(data)) for pts, data in s["tail"]])
            for data in stream.tail:  # back to the decoder's state: what it saw since the screen last changed
                stream.decoder.decode2(av.Packet(data.data))
            self._streams[(s["tenant_id"], s["stream_id"])] = stream
