"""Recognition on real recorded speech: LibriVox read speech from Debian's pocketsphinx-testdata package.

Five utterances (24.7 s) of "Sense and Sensibility" read by a LibriVox volunteer, with their reference
transcripts. The package is installed by deploy/install_system_packages.sh (`make setup`); nothing of it is
committed here. Word error rate measured: 0.30, and the same as one stream cut into 2 s segments and read in
windows that end in pauses, against 0.52 recognising each segment on its own (BENCHMARKS.md).
"""

from __future__ import annotations

import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest

from operators.speech import SAMPLE_RATE, SpeechRecognizer, hits_in_lines
from operators.speech_windows import SpeechWindows
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


def test_a_stream_cut_into_segments_is_heard_as_one_read(pocketsphinx: SpeechRecognizer, transcribed) -> None:
    """The utterances as one stream in 2 s segments, windowed as the transcript stage does: the words of one
    read, where recognising each segment on its own loses those at its edges."""
    utterances = librivox()
    stream, said = np.concatenate([audio for audio, _ in utterances]), " ".join(ref for _, ref in utterances)
    n = 2 * SAMPLE_RATE
    windows = SpeechWindows(pocketsphinx.vad, pocketsphinx.config, max_window_s=20.0)
    closed = [w for i in range(0, stream.size, n)
              for w in windows.add(("t", "s"), stream[i: i + n], i / SAMPLE_RATE, "")]
    closed += windows.flush("t", "s")
    windowed = " ".join(line.text for w in closed for line in pocketsphinx.read(w.samples, w.regions, w.start_s))
    per_segment = " ".join(line.text for i in range(0, stream.size, n)
                           for line in pocketsphinx.transcribe(stream[i: i + n], 0.0))
    whole = " ".join(line.text for _, lines in transcribed for line in lines)
    print(f"LibriVox in 2 s segments: WER {jiwer.wer(said, per_segment):.3f} per segment, "
          f"{jiwer.wer(said, windowed):.3f} windowed, {jiwer.wer(said, whole):.3f} whole")
    assert jiwer.wer(said, windowed) <= jiwer.wer(said, whole) + 0.02  # 0.296 both measured
    assert jiwer.wer(said, per_segment) > jiwer.wer(said, windowed) + 0.1  # 0.521 measured
