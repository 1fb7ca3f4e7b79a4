"""Voice activity detection with Silero VAD, run through ONNX Runtime.

The model is the "sequence" export that ships inside the ``silero-vad`` wheel: the same network as the
streaming model, but one ONNX call takes a block of up to 512 frames of 32 ms (~16 s) with the LSTM state
carried between blocks, so a stream-hour costs ~225 calls instead of 112,500. The wheel's Python package is
not imported: its ``__init__`` imports torch and sets torch's thread count to 1 for the whole process (which
would slow the encoder sharing it); only its model file is read, located without running the package.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from operators.config import SpeechConfig
from operators.onnx_session import open_session
from operators.speech.audio import SAMPLE_RATE, SpeechRegion

FRAME = 512  # samples per VAD frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame each frame is given, as the streaming model keeps them
BLOCK_FRAMES = 512
HYSTERESIS = 0.15  # speech ends below threshold - this (silero's neg_threshold default)


@dataclass(frozen=True)
class VadState:
    """Where the VAD is in a stream: the last frame's tail (the next frame's context) and the LSTM's state."""

    context: np.ndarray
    h: np.ndarray
    c: np.ndarray


def silero_model_path(name: str = "silero_vad_16k_sequence.onnx") -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed: `pip install silero-vad` (its wheel holds the VAD model)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise RuntimeError(f"the installed silero-vad has no {name}; livelens needs silero-vad >= 6.2")
    return path


class VoiceActivityDetector:
    """Finds the spans of speech in mono 16 kHz audio. Stateless between calls; one per thread."""

    def __init__(self, config: SpeechConfig, model_path: Path | None = None):
        self.config = config
        # ~0.1 ms per frame on one core: threads would cost more than they save.
        self._session = open_session(model_path or silero_model_path(), threads=1)

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability of each 32 ms frame (the last one zero-padded)."""
        n_frames = -(-audio.size // FRAME)
        frames = np.zeros(n_frames * FRAME, dtype=np.float32)
        frames[: audio.size] = audio
        return self.stream(frames, self.start())[0]

    @staticmethod
    def start() -> VadState:
        """The state before a stream's first frame."""
        return VadState(np.zeros(CONTEXT, np.float32), np.zeros((1, 1, 128), np.float32),
                        np.zeros((1, 1, 128), np.float32))

    def stream(self, audio: np.ndarray, state: VadState) -> tuple[np.ndarray, VadState]:
        """Probabilities of whole frames of a stream's audio (``audio.size`` a multiple of FRAME) read on from
        ``state``, and the state after them: a stream read in pieces gets the probabilities of one long read."""
        frames = audio.reshape(-1, FRAME)
        if not len(frames):
            return np.zeros(0, np.float32), state
        contexts = np.empty((len(frames), CONTEXT), dtype=np.float32)
        contexts[0] = state.context
        contexts[1:] = frames[:-1, -CONTEXT:]
        blocks = np.concatenate((contexts, frames), axis=1)
        h, c = state.h, state.c
        out = []
        for first in range(0, len(frames), BLOCK_FRAMES):
            probs, h, c = self._session.run(
                ["speech_probs", "hn", "cn"], {"input": blocks[first: first + BLOCK_FRAMES], "h": h, "c": c})
            out.append(probs.reshape(-1))
        return np.concatenate(out), VadState(frames[-1, -CONTEXT:].copy(), h, c)

    def regions(self, audio: np.ndarray) -> list[SpeechRegion]:
        """Speech regions of ``audio``, padded, merged across short pauses, cut at ``max_region_s``."""
        return self.regions_from(self.probabilities(audio), audio.size / SAMPLE_RATE)

    def regions_from(self, probs: np.ndarray, duration_s: float) -> list[SpeechRegion]:
        cfg = self.config
        frame_s = FRAME / SAMPLE_RATE
        on, off = cfg.vad_threshold, max(cfg.vad_threshold - HYSTERESIS, 0.01)
        spans: list[list[int]] = []  # [first frame, end frame) of each speech run, pauses under min_silence merged
        start = None
        for i, p in enumerate(probs):
            if start is None and p >= on:
                start = i
            elif start is not None and p < off:
                spans.append([start, i])
                start = None
        if start is not None:
            spans.append([start, len(probs)])
        merged: list[list[int]] = []
        for span in spans:
            if merged and (span[0] - merged[-1][1]) * frame_s < cfg.min_silence_s:
                merged[-1][1] = span[1]
            else:
                merged.append(span)
        regions = []
        for first, end in merged:
            if (end - first) * frame_s < cfg.min_speech_s:
                continue
            for a, b in _cut(probs, first, end, round(cfg.max_region_s / frame_s)):
                regions.append(SpeechRegion(max(0.0, a * frame_s - cfg.speech_pad_s),
                                            min(duration_s, b * frame_s + cfg.speech_pad_s)))
        return regions


def _cut(probs: np.ndarray, first: int, end: int, max_frames: int) -> list[tuple[int, int]]:
    """Cut a run of frames longer than ``max_frames`` at the least speech-like frame of each piece's last third."""
    pieces = []
    while end - first > max_frames:
        lo = first + (2 * max_frames) // 3
        cut = lo + int(np.argmin(probs[lo: first + max_frames]))
        pieces.append((first, cut))
        first = cut
    pieces.append((first, end))
    return pieces
