"""The audio the speech operators take, and the spans of it they work on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.frames import StageError

SAMPLE_RATE = 16_000  # decode hands audio out as float32 mono at this rate; every speech model here reads it


@dataclass(frozen=True)
class SpeechRegion:
    """A span of speech, in seconds from the start of the audio it was found in."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def samples(self, audio: np.ndarray) -> np.ndarray:
        return audio[round(self.start_s * SAMPLE_RATE): round(self.end_s * SAMPLE_RATE)]


def checked_audio(audio: np.ndarray, stage: str) -> np.ndarray:
    """``audio`` as a contiguous float32 vector, or a StageError (bad_audio) saying what is wrong with it."""
    if not isinstance(audio, np.ndarray) or audio.ndim != 1:
        shape = getattr(audio, "shape", type(audio).__name__)
        raise StageError("bad_audio", f"audio must be a 1-D float32 array (mono {SAMPLE_RATE} Hz), got {shape}",
                         stage=stage)
    if audio.dtype != np.float32:
        raise StageError("bad_audio", f"audio must be float32 in [-1, 1], got {audio.dtype}", stage=stage)
    if not np.isfinite(audio).all():
        raise StageError("bad_audio", "audio has NaN or infinite samples", stage=stage)
    return np.ascontiguousarray(audio)


def pcm16(audio: np.ndarray) -> bytes:
    """16-bit little-endian PCM, what pocketsphinx reads."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def read_audio_file(path: str) -> np.ndarray:
    """The first audio track of a media file as float32 mono 16 kHz (for files: benchmarks, measurements and
    tests; live segments get theirs from decode)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"{path}: no audio track")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(container.streams.audio[0])
                  for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
