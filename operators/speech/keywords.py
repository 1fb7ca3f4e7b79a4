"""Keyword spotting: where in speech a moderation lexicon's words were said.

Two ways were measured on real read speech (BENCHMARKS.md, "Keyword spotting"): pocketsphinx's
keyword-spotting search (kws: a phone loop against each keyphrase, no language model) and looking the terms
up in free transcription. On the five LibriVox utterances of pocketsphinx's test data, with a lexicon of 20
words said there and 15 risky words that are not (bomb, gun, kill, money, murder...), transcription found 17
of the 24 occurrences with no false alarm; kws at its best threshold (1e-1) found 23 but raised 8 false
alarms, "kill", "gun", "murder" and "money" among them, in four of five innocent sentences of a novel. A
moderation lexicon is mostly such short, acoustically common words, and a false alarm there escalates a
room, so ``KeywordSpotter`` looks terms up in the transcription, which search needs anyway (no second pass).
Terms outside the recogniser's dictionary are never found; kws could not find them either.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from operators.config import SpeechConfig
from operators.speech.audio import checked_audio
from operators.speech.recognizer import STAGE, SpeechRecognizer
from operators.transcript import TranscriptLine, Word


@dataclass(frozen=True)
class KeywordHit:
    """A lexicon term heard in speech, its span on the stream's media clock."""

    term: str
    start_s: float
    end_s: float
    confidence: float


def normalise(term: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9']+", term.lower()))


def hits_in_lines(lines: Sequence[TranscriptLine], lexicon: Sequence[str]) -> list[KeywordHit]:
    """Every occurrence of a lexicon term (one or more words, case and punctuation ignored) in the lines' words."""
    terms = {normalise(t): t for t in lexicon if normalise(t)}
    hits = []
    for line in lines:
        words = line.words or _spread(line)
        spoken = [" ".join(normalise(w.text)) for w in words]
        for term, original in terms.items():
            n = len(term)
            for i in range(len(spoken) - n + 1):
                if tuple(spoken[i: i + n]) == term:  # a term of n words matches n consecutive words
                    span = words[i: i + n]
                    hits.append(KeywordHit(original, span[0].start_s, span[-1].end_s,
                                           float(np.mean([w.confidence for w in span]))))
    return sorted(hits, key=lambda h: h.start_s)


def _spread(line: TranscriptLine) -> tuple[Word, ...]:
    """The words of a line without word timings (Whisper), each given the line's span and confidence."""
    return tuple(Word(text, line.start_s, line.end_s, line.confidence) for text in line.text.split())


class KeywordSpotter:
    """Finds a lexicon's terms in speech: VAD, free transcription, then the terms among its words (with word
    timings from pocketsphinx; a Whisper line's hits carry the line's span)."""

    def __init__(self, config: SpeechConfig, recognizer: SpeechRecognizer | None = None):
        self.recognizer = recognizer or SpeechRecognizer(config)

    def spot(self, audio: np.ndarray, start_s: float, lexicon: Sequence[str],
             min_confidence: float = 0.0) -> list[KeywordHit]:
        audio = checked_audio(audio, STAGE)
        lines = self.recognizer.transcribe(audio, start_s)
        return [h for h in hits_in_lines(lines, lexicon) if h.confidence >= min_confidence]
