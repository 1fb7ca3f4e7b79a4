"""Speech recognition: VAD finds the speech, pocketsphinx and Whisper turn it into transcript lines."""

from __future__ import annotations

from pathlib import Path

import jiwer
import numpy as np
import pytest

from operators.config import SpeechConfig
from operators.frames import StageError
from operators.speech import SAMPLE_RATE, KeywordSpotter, SpeechRecognizer, build_engine, hits_in_lines
from operators.speech.pocketsphinx_engine import PocketsphinxEngine
from operators.speech.tiny_whisper import build_random_whisper
from operators.speech.whisper_engine import WhisperEngine
from operators.transcript import TranscriptLine


def test_vad_finds_each_spoken_phrase(pocketsphinx: SpeechRecognizer, sample_speech) -> None:
    audio, truth = sample_speech
    regions = pocketsphinx.vad.regions(audio)
    assert len(truth["speech"]) == 3
    assert len(regions) == len(truth["speech"])  # the subtitle cues' silences split them; nothing else found
    for region, spoken in zip(regions, truth["speech"], strict=True):
        assert region.start_s == pytest.approx(spoken["start"], abs=0.25)
        assert region.end_s == pytest.approx(spoken["end"], abs=0.35)  # pad + the hysteresis' slower release


@pytest.mark.parametrize("kind", ["silence", "hiss", "rumble"])
def test_vad_finds_nothing_without_speech(pocketsphinx: SpeechRecognizer, kind: str) -> None:
    rng = np.random.default_rng(0)
    n = 10 * SAMPLE_RATE
    audio = {
        "silence": np.zeros(n),
        "hiss": rng.normal(0, 0.05, n),  # white noise at -26 dBFS
        "rumble": np.cumsum(rng.normal(0, 0.01, n)) * 0.02,  # brown noise: traffic-like low rumble
    }[kind].astype(np.float32)
    assert pocketsphinx.vad.regions(audio) == []
    assert pocketsphinx.transcribe(audio, 0.0) == []  # so pocketsphinx never gets to invent words there


def test_pocketsphinx_transcribes_the_sample(pocketsphinx: SpeechRecognizer, sample_speech) -> None:
    audio, truth = sample_speech
    lines = pocketsphinx.transcribe(audio, 100.0, channel="1")
    assert len(lines) == len(truth["speech"])
    for line, spoken in zip(lines, truth["speech"], strict=True):
        assert (line.source, line.channel, line.language) == ("asr", "1", "en")
        assert line.start_s == pytest.approx(100.0 + spoken["start"], abs=0.3)  # on the caller's clock
        assert line.words and 0.0 <= line.confidence <= 1.0
        assert all(line.start_s <= w.start_s < w.end_s <= line.end_s + 1e-6 for w in line.words)
        assert line.text == " ".join(w.text for w in line.words)
    reference = " ".join(s["text"] for s in truth["speech"])
    hypothesis = " ".join(line.text for line in lines)
    assert jiwer.wer(reference, hypothesis) < 0.4, hypothesis  # 0.27 measured (espeak-ng voice, en-us models)


def test_keyword_spotting_finds_lexicon_words(pocketsphinx: SpeechRecognizer, sample_speech) -> None:
    audio, truth = sample_speech
    said = ["victory", "saturday", "thirty degrees", "coast"]
    unsaid = ["bomb", "gun", "kill", "money", "bridge"]
    hits = KeywordSpotter(pocketsphinx.config, pocketsphinx).spot(audio, 0.0, said + unsaid)
    found = {h.term for h in hits}
    assert not found & set(unsaid)
    assert len(found & set(said)) >= 3, hits
    for hit in hits:  # each inside the phrase that says it
        phrase = next(s for s in truth["speech"] if hit.term in s["text"])
        assert phrase["start"] - 0.3 <= hit.start_s < hit.end_s <= phrase["end"] + 0.3


def test_engine_is_chosen_by_config(tmp_path: Path) -> None:
    assert isinstance(build_engine(SpeechConfig(engine="pocketsphinx")), PocketsphinxEngine)
    with pytest.raises(ValueError, match="no recogniser"):
        build_engine(SpeechConfig(engine="none"))
    with pytest.raises(ValueError, match="needs speech.model"):
        build_engine(SpeechConfig(engine="whisper"))
    with pytest.raises(ValueError, match="en-us only"):
        build_engine(SpeechConfig(engine="pocketsphinx", language="de"))
    with pytest.raises(ValueError):
        SpeechConfig(engine="kaldi")


def test_bad_audio_is_a_stage_error(pocketsphinx: SpeechRecognizer) -> None:
    for bad in (np.zeros((2, 16000), np.float32), np.zeros(16000, np.int16), np.full(16000, np.nan, np.float32)):
        with pytest.raises(StageError) as error:
            pocketsphinx.transcribe(bad, 0.0)
        assert error.value.code == "bad_audio"


def test_random_whisper_loads_through_from_pretrained(tmp_path: Path, sample_speech) -> None:
    audio, truth = sample_speech
    model = build_random_whisper(tmp_path / "whisper")
    recognizer = SpeechRecognizer(SpeechConfig(engine="whisper", model=str(model), batch_regions=2))
    assert isinstance(recognizer.engine, WhisperEngine)
    regions = recognizer.vad.regions(audio)
    lines = recognizer.transcribe(audio, 50.0, channel="a")
    assert lines  # random weights still emit tokens; what they say means nothing
    spans = {(50.0 + r.start_s, 50.0 + r.end_s) for r in regions}
    for line in lines:
        assert (line.start_s, line.end_s) in spans  # one line per speech region, on the caller's clock
        assert line.source == "asr" and line.channel == "a" and 0.0 <= line.confidence <= 1.0
        assert line.text.strip() and line.words == ()


def test_vad_regions_merge_pauses_drop_blips_and_cut_long_speech(pocketsphinx: SpeechRecognizer) -> None:
    frame_s = 512 / SAMPLE_RATE
    probs = np.zeros(round(80 / frame_s), np.float32)
    at = lambda t: round(t / frame_s)  # noqa: E731
    probs[at(1.0): at(3.0)] = 0.9
    probs[at(3.1): at(5.0)] = 0.9  # a 0.1 s pause: the same region
    probs[at(8.0): at(8.1)] = 0.9  # a 0.1 s click: no region
    probs[at(10.0): at(75.0)] = 0.9  # 65 s without a pause: cut below max_region_s
    probs[at(10.0) + 700] = 0.1  # the least speech-like frame in the first piece's last third: cut there
    regions = pocketsphinx.vad.regions_from(probs, 80.0)
    cfg = pocketsphinx.config
    assert regions[0].start_s == pytest.approx(1.0 - cfg.speech_pad_s, abs=0.04)
    assert regions[0].end_s == pytest.approx(5.0 + cfg.speech_pad_s, abs=0.04)
    long = regions[1:]
    assert len(long) == 3 and all(r.duration_s <= cfg.max_region_s + 2 * cfg.speech_pad_s for r in long)
    assert long[0].end_s == pytest.approx(10.0 + 700 * frame_s + cfg.speech_pad_s, abs=0.04)
    assert long[-1].end_s == pytest.approx(75.0 + cfg.speech_pad_s, abs=0.04)


def test_lexicon_hits_in_lines_without_word_timings() -> None:
    line = TranscriptLine(12.0, 15.0, "The storm, they said, would reach the Coast tonight.", "asr", confidence=0.8)
    hits = hits_in_lines([line], ["coast", "STORM", "reach the coast", "bomb"])
    assert {(h.term, h.start_s, h.end_s) for h in hits} == {
        ("STORM", 12.0, 15.0), ("coast", 12.0, 15.0), ("reach the coast", 12.0, 15.0)}  # the line's span
    assert all(h.confidence == pytest.approx(0.8) for h in hits)
