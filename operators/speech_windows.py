"""Speech windows: each stream's audio gathered across segments and handed to the recogniser in windows that
end in a pause, so an utterance is never cut where a segment happens to end.

A segment is ~2 s; an utterance runs across its edges. Recognised piece by piece, the words at each cut are
lost (pocketsphinx on the sample broadcast: word error rate 0.39 on the whole soundtrack, 0.58 in 2 s pieces:
BENCHMARKS.md). So the transcript stage appends each segment's audio to its stream's buffer, and the
recogniser's voice activity detector reads the stream on from where it stopped (its LSTM state and frame
grid carried across segments: the probabilities are those of one long read). A speech region followed by at
least ``speech.min_silence_s`` of non-speech has ended for good (the VAD merges only across shorter pauses):
everything up to the start of the speech still going on (or all of it, if nobody speaks at the end) is one
window, whose regions are recognised now; the rest waits for the next segment. Buffered audio without speech
is dropped (but for a short tail that may hold an onset). A stretch longer than
``transcript.asr_max_window_s`` without such a pause is recognised whole (the VAD cuts its regions at their
quietest frames past ``speech.max_region_s``), which bounds the buffer to about that plus one segment. With
``speech.vad`` off there are no pauses to find: windows are ``asr_max_window_s`` long.

Latency: a line comes out with the segment in which its window closes, so it is stored at most one window
(one pause-free stretch of speech, at most ``asr_max_window_s``) after its words were said, and with that
segment rather than the one its words started in (its own times stay where the words were said).

Times stay on the stream's media clock: a window starts where its first buffered sample is. Audio that does
not continue the buffer (a gap or overlap over ``GAP_S``: a stream restarted, segments lost) closes the
buffer as a window first. The state is per (tenant, stream) and explicit (`operators.state.Stateful`): a
snapshot holds the buffered samples, so a resumed backfill hears the utterance it stopped in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from operators.config import SpeechConfig
from operators.speech.audio import SAMPLE_RATE, SpeechRegion, checked_audio
from operators.speech.vad import FRAME, VadState, VoiceActivityDetector
from operators.state import PerStreamState, StreamKey

GAP_S = 0.1  # audio starting further than this from where the buffer ends does not continue it


@dataclass
class Window:
    """A stretch of one stream's audio to recognise in one call, and its speech (None: the recogniser's to
    find, with the VAD off)."""

    samples: np.ndarray
    start_s: float
    channel: str
    covered: list[tuple[float, float]]  # spans of captions and subtitles seen meanwhile: their words win
    regions: list[SpeechRegion] | None


@dataclass
class _Buffer:
    start_s: float
    channel: str
    vad: VadState | None
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # of each whole frame buffered
    covered: list[tuple[float, float]] = field(default_factory=list)

    @property
    def end_s(self) -> float:
        return self.start_s + self.samples.size / SAMPLE_RATE


class SpeechWindows(PerStreamState["_Buffer"]):
    """Each stream's buffered audio; ``add`` answers the windows that closed. State per stream, explicit."""

    SNAPSHOT_NAME = "speech window"
    SNAPSHOT_VERSION = 1
    EMPTY = {"version": SNAPSHOT_VERSION, "streams": []}  # the snapshot of nothing buffered

    def __init__(self, vad: VoiceActivityDetector | None, speech: SpeechConfig, max_window_s: float):
        """``vad``: the recogniser's (None: ``speech.vad`` off); ``speech``: its config (pauses, onsets)."""
        self.vad = vad
        self.min_silence_s = speech.min_silence_s
        # Kept back from a cut in silence: an onset too short yet to be a region (min_speech_s), and its pad.
        self.tail_s = speech.min_speech_s + speech.speech_pad_s
        self.max_window_s = max_window_s
        self._streams: dict[StreamKey, _Buffer] = {}

    def add(self, key: StreamKey, samples: np.ndarray, start_s: float, channel: str,
            covered: list[tuple[float, float]] = ()) -> list[Window]:
        """Append a segment's audio (float32 mono 16 kHz from ``start_s``) and the spans its captions and subtitles
        cover to the stream's buffer; the windows that end in a pause (or reached ``max_window_s``), oldest
        first."""
        samples = checked_audio(samples, "transcript")  # bad audio is the segment's dead letter, not the buffer's
        windows = []
        buffer = self._streams.get(key)
        if buffer is not None and (abs(start_s - buffer.end_s) > GAP_S or channel != buffer.channel):
            windows += self._whole(self._streams.pop(key))  # not a continuation: what came before is complete
            buffer = None
        if buffer is None:
            buffer = self._streams[key] = _Buffer(start_s, channel, self.vad.start() if self.vad else None)
        buffer.samples = np.concatenate((buffer.samples, samples))
        buffer.covered += covered
        if self.vad is None:
            if buffer.samples.size >= self.max_window_s * SAMPLE_RATE:
                windows.append(self._take(buffer, buffer.samples.size, None))
            return windows
        framed = buffer.probs.size * FRAME
        whole = framed + (buffer.samples.size - framed) // FRAME * FRAME
        probs, buffer.vad = self.vad.stream(buffer.samples[framed:whole], buffer.vad)
        buffer.probs = np.concatenate((buffer.probs, probs))
        closed = self._closed(buffer)
        return windows + ([closed] if closed is not None else [])

    def _closed(self, buffer: _Buffer) -> Window | None:
        duration = buffer.probs.size * FRAME / SAMPLE_RATE  # what the VAD has read
        regions = self.vad.regions_from(buffer.probs, duration)
        quiet_from = _frame_edge(max(0.0, duration - self.tail_s), up=False)
        if not regions:  # nobody spoke in what is buffered: nothing to recognise, only the tail is kept
            self._take(buffer, quiet_from, [])
            return None
        last = regions[-1]
        if last.end_s + self.min_silence_s <= duration:  # ended: the VAD will not merge it with what follows
            cut = max(_frame_edge(last.end_s, up=True), quiet_from)
        elif len(regions) > 1:  # the ended regions go now, the one still spoken waits
            cut, regions = _frame_edge(last.start_s, up=False), regions[:-1]
        elif duration >= self.max_window_s:  # no pause within max_window_s: recognised whole
            cut = buffer.probs.size * FRAME
        else:
            return None
        return self._take(buffer, cut, regions)

    def _take(self, buffer: _Buffer, cut: int, regions: list[SpeechRegion] | None) -> Window:
        """The first ``cut`` samples as a window; the buffer keeps the rest (``cut`` is on a frame edge)."""
        window = Window(buffer.samples[:cut], buffer.start_s, buffer.channel, list(buffer.covered), regions)
        buffer.start_s += cut / SAMPLE_RATE
        buffer.samples = buffer.samples[cut:].copy()
        buffer.probs = buffer.probs[cut // FRAME:].copy()
        buffer.covered = [(start, end) for start, end in buffer.covered if end > buffer.start_s]
        return window

    def _whole(self, buffer: _Buffer) -> list[Window]:
        """All the buffer holds: its speech as the VAD reads it with what is unframed as silence after it."""
        if not buffer.samples.size:
            return []
        regions = None
        if self.vad is not None:
            framed = buffer.probs.size * FRAME
            rest = np.zeros(-(-(buffer.samples.size - framed) // FRAME) * FRAME, np.float32)
            rest[: buffer.samples.size - framed] = buffer.samples[framed:]
            probs = np.concatenate((buffer.probs, self.vad.stream(rest, buffer.vad)[0]))
            regions = self.vad.regions_from(probs, buffer.samples.size / SAMPLE_RATE)
        return [Window(buffer.samples, buffer.start_s, buffer.channel, buffer.covered, regions)]

    def buffered_s(self, key: StreamKey) -> float:
        """Seconds of the stream's audio waiting for a pause."""
        buffer = self._streams.get(key)
        return buffer.samples.size / SAMPLE_RATE if buffer is not None else 0.0

    def flush(self, tenant_id: str, stream_id: str) -> list[Window]:
        """What the stream's buffer holds, as one last window (the stream ended); its state is dropped."""
        buffer = self._streams.pop((tenant_id, stream_id), None)
        return self._whole(buffer) if buffer is not None else []

    # Snapshots (operators.state.PerStreamState): plain values and numpy arrays, the buffered samples, their VAD
    # probabilities and the VAD's state; a restored stream's utterance goes on.
    def _dump(self, b: _Buffer) -> dict:
        return {"start_s": b.start_s, "channel": b.channel, "samples": b.samples.copy(), "probs": b.probs.copy(),
                "covered": [list(span) for span in b.covered],
                "vad": None if b.vad is None else [b.vad.context.copy(), b.vad.h.copy(), b.vad.c.copy()]}

    def _load(self, s: dict) -> _Buffer:
        vad = None if s["vad"] is None else VadState(*(np.asarray(a, np.float32) for a in s["vad"]))
        return _Buffer(float(s["start_s"]), s["channel"], vad, np.asarray(s["samples"], np.float32),
                       np.asarray(s["probs"], np.float32), [(float(start), float(end)) for start, end in s["covered"]])


def _frame_edge(seconds: float, up: bool) -> int:
    """``seconds`` from a buffer's start as a sample count on a VAD frame edge (what stays is framed as before)."""
    frames = seconds * SAMPLE_RATE / FRAME
    return int(np.ceil(frames) if up else np.floor(frames)) * FRAME
