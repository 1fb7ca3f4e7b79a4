"""Recognition on real recorded speech: LibriVox read speech from Debian's pocketsphinx-testdata package.

Five utterances (24.7 s) of "Sense and Sensibility" read by a LibriVox volunteer, with their reference
transcripts. The package is installed by deploy/install_system_packages.sh (`make setup`); nothing of it is
committed here. Word error rate measured: 0.30 (BENCHMARKS.md).
"""

from __future__ import annotations

import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest

from operators.speech import SpeechRecognizer, hits_in_lines
from operators.transcript import TranscriptLine

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def librivox() -> list[tuple[np.ndarray, str]]:
    """(audio, reference transcript) of each utterance."""
    if not (LIBRIVOX / "transcription").exists():
        pytest.fail(f"{LIBRIVOX} is missing: install Debian's pocketsphinx-testdata (deploy/install_system_packages.sh)")
    out = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, _, utterance = line.rpartition("(")
        with wave.open(str(LIBRIVOX / f"{utterance.strip(') ')}.wav")) as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        out.append((audio, " ".join(text.replace("<s>", "").replace("</s>", "").split())))
    return out


@pytest.fixture(scope="module")
def transcribed(pocketsphinx: SpeechRecognizer) -> list[tuple[str, list[TranscriptLine]]]:
    """(reference, recognised lines) of each utterance."""
    return [(reference, pocketsphinx.transcribe(audio, 0.0)) for audio, reference in librivox()]


def test_word_error_rate_on_read_speech(transcribed) -> None:
    assert len(transcribed) == 5
    hypotheses = [" ".join(line.text for line in lines) for _, lines in transcribed]
    wer = jiwer.wer([ref for ref, _ in transcribed], hypotheses)
    print(f"pocketsphinx en-us on LibriVox (pocketsphinx-testdata): WER {wer:.3f}")
    assert wer < 0.35, hypotheses  # 0.296 measured (0.282 decoding each whole file, without VAD)


def test_lexicon_spotting_on_read_speech(transcribed) -> None:
    """The words of a lexicon said in real speech are mostly found, risky words not said are never found."""
    said = ["amiable", "selfish", "respectable", "married", "leisure", "young"]
    unsaid = ["bomb", "gun", "kill", "money", "murder", "police", "attack"]
    found = set()
    for reference, lines in transcribed:
        for hit in hits_in_lines(lines, said + unsaid):
            assert hit.term in reference.split()  # no false alarm
            found.add(hit.term)
    assert len(found) >= 4, found
