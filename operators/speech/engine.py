"""What a speech engine is: it reads clips of speech and says what it heard in each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from operators.transcript import Word


@dataclass(frozen=True)
class Recognised:
    """What an engine heard in one clip: its words, times in seconds from the clip's start."""

    text: str
    confidence: float
    words: tuple[Word, ...] = ()


class SpeechEngine(Protocol):
    def recognise(self, clips: list[np.ndarray]) -> list[Recognised | None]:
        """One result per clip of float32 mono 16 kHz speech (None: no words), in one batch where it can."""
