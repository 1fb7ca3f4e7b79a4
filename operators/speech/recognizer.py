"""``SpeechRecognizer``: voice activity detection, then ASR on the speech regions only, as transcript lines."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from operators.config import SpeechConfig
from operators.speech.audio import SAMPLE_RATE, SpeechRegion, checked_audio
from operators.speech.engine import SpeechEngine
from operators.speech.vad import VoiceActivityDetector
from operators.transcript import TranscriptLine

log = logging.getLogger(__name__)
STAGE = "speech"


def build_engine(config: SpeechConfig) -> SpeechEngine:
    if config.engine == "pocketsphinx":
        from operators.speech.pocketsphinx_engine import PocketsphinxEngine

        return PocketsphinxEngine(config)
    if config.engine == "whisper":
        from operators.speech.whisper_engine import WhisperEngine

        return WhisperEngine(config)
    raise ValueError(f"speech.engine is {config.engine!r}: no recogniser to build (set pocketsphinx or whisper)")


class SpeechRecognizer:
    """Transcribes audio: VAD finds the speech, the configured engine reads each region (batched).

    Stateless between calls: a call's audio is read on its own, so an utterance cut by the end of one call's
    audio is read as two pieces. The transcript stage hands it windows that end in a pause, with the regions
    its own streaming VAD found (`read`; operators/speech_windows.py).
    """

    def __init__(self, config: SpeechConfig, *, engine: SpeechEngine | None = None,
                 vad: VoiceActivityDetector | None = None):
        self.config = config
        self.engine = engine or build_engine(config)
        self.vad = vad or (VoiceActivityDetector(config) if config.vad else None)

    def regions(self, audio: np.ndarray) -> list[SpeechRegion]:
        """Where ``audio`` is read: its speech regions, or (vad off) all of it in pieces of ``max_region_s``."""
        if self.vad is not None:
            return self.vad.regions(audio)
        duration = audio.size / SAMPLE_RATE
        step = self.config.max_region_s
        return [SpeechRegion(float(t), float(min(duration, t + step))) for t in np.arange(0.0, duration, step)]

    def transcribe(self, audio: np.ndarray, start_s: float, channel: str = "") -> list[TranscriptLine]:
        """Transcript lines of ``audio`` (float32 mono 16 kHz) starting at ``start_s`` on the stream's media clock,
        one per speech region that held words, with word timings where the engine gives them."""
        audio = checked_audio(audio, STAGE)
        return self.read(audio, self.regions(audio), start_s, channel)

    def read(self, audio: np.ndarray, regions: list[SpeechRegion], start_s: float,
             channel: str = "") -> list[TranscriptLine]:
        """Transcript lines of the given speech ``regions`` of ``audio`` (a caller that ran the VAD itself, on a
        stream read in pieces: operators/speech_windows.py), on the media clock from ``start_s``."""
        audio = checked_audio(audio, STAGE)
        if not regions:
            return []
        heard = self.engine.recognise([r.samples(audio) for r in regions])
        lines = []
        for region, result in zip(regions, heard, strict=True):
            if result is None or not result.text.strip():
                continue
            offset = start_s + region.start_s
            words = tuple(dataclasses.replace(w, start_s=offset + w.start_s, end_s=offset + w.end_s) for w in result.words)
            lines.append(TranscriptLine(
                start_s=offset, end_s=start_s + region.end_s, text=result.text.strip(), source="asr",
                language=self.config.language, confidence=result.confidence, channel=channel, words=words))
        log.debug("speech: %d regions, %d lines in %.1f s of audio", len(regions), len(lines),
                  audio.size / SAMPLE_RATE)
        return lines
