"""Speech windows: a stream's audio read on across segments by the VAD and recognised in windows that end in
a pause, so the transcript of a stream cut into segments is the transcript of one read."""

from __future__ import annotations

import numpy as np
import pytest

from operators.frames import StageError
from operators.speech import SAMPLE_RATE, SpeechRecognizer
from operators.speech_windows import SpeechWindows, Window

KEY = ("t", "news")


def segments(audio: np.ndarray, segment_s: float, start_s: float = 0.0):
    """(samples, start) of each segment, as decode hands them over (an odd size: not on a VAD frame)."""
    n = round(segment_s * SAMPLE_RATE)
    return [(audio[i: i + n], start_s + i / SAMPLE_RATE) for i in range(0, audio.size, n)]


def windows_of(windows: SpeechWindows, pieces, key=KEY) -> list[Window]:
    closed = [w for samples, start in pieces for w in windows.add(key, samples, start, "audio")]
    return closed + windows.flush(*key)


def shifted(window: Window) -> list[tuple[float, float]]:
    return [(round(window.start_s + r.start_s, 3), round(window.start_s + r.end_s, 3)) for r in window.regions]


def test_the_vad_read_on_across_pieces_is_the_vad_of_one_read(pocketsphinx: SpeechRecognizer, sample_speech) -> None:
    audio, _ = sample_speech
    vad = pocketsphinx.vad
    framed = audio[: audio.size // 512 * 512]
    state, probs = vad.start(), []
    for first in range(0, framed.size, 512 * 37):
        p, state = vad.stream(framed[first: first + 512 * 37], state)
        probs.append(p)
    assert np.allclose(np.concatenate(probs), vad.probabilities(framed), atol=1e-6)


def test_windows_end_in_pauses_and_hear_what_one_read_hears(pocketsphinx: SpeechRecognizer, sample_speech) -> None:
    audio, truth = sample_speech
    stage = SpeechWindows(pocketsphinx.vad, pocketsphinx.config, max_window_s=20.0)
    windows = windows_of(stage, segments(audio, 2.0 + 7 / SAMPLE_RATE, 100.0))
    # Each phrase in one window, the windows in order and without overlap, on the stream's clock.
    for spoken in truth["speech"]:
        [holder] = [w for w in windows if w.start_s <= 100 + spoken["start"] < w.start_s + w.samples.size / SAMPLE_RATE]
        assert holder.start_s + holder.samples.size / SAMPLE_RATE >= 100 + spoken["end"]
    ends = [w.start_s + w.samples.size / SAMPLE_RATE for w in windows]
    assert all(end <= nxt.start_s + 1e-6 for end, nxt in zip(ends, windows[1:]))
    whole = [(round(100 + r.start_s, 3), round(100 + r.end_s, 3)) for r in pocketsphinx.vad.regions(audio)]
    assert [span for w in windows for span in shifted(w)] == whole  # the regions of one read, to the ms
    heard = [line for w in windows for line in pocketsphinx.read(w.samples, w.regions, w.start_s, w.channel)]
    once = pocketsphinx.transcribe(audio, 100.0, "audio")
    assert [(round(line.start_s, 3), line.text) for line in heard] == [(round(line.start_s, 3), line.text)
                                                                       for line in once]


def test_speech_without_a_pause_is_cut_at_the_max_window(pocketsphinx: SpeechRecognizer, sample_speech) -> None:
    audio, truth = sample_speech
    spoken = truth["speech"][0]
    phrase = audio[round(spoken["start"] * SAMPLE_RATE): round(spoken["end"] * SAMPLE_RATE)]
    talk = np.tile(phrase, 6)  # ~20 s of speech with no pause
    windows = SpeechWindows(pocketsphinx.vad, pocketsphinx.config, max_window_s=6.0)
    closed, most = [], 0.0
    for samples, start in segments(talk, 2.0):
        closed += windows.add(KEY, samples, start, "audio")
        most = max(most, windows.buffered_s(KEY))
    assert most < 6.0 + 2.0  # bounded: the max window and one segment
    assert len(closed) >= 2 and all(w.samples.size / SAMPLE_RATE <= 8.0 for w in closed)
    closed += windows.flush(*KEY)
    assert sum(w.samples.size for w in closed) <= talk.size and windows.buffered_s(KEY) == 0.0


def test_audio_that_does_not_continue_the_stream_closes_its_window(pocketsphinx: SpeechRecognizer,
                                                                  sample_speech) -> None:
    audio, truth = sample_speech
    spoken = truth["speech"][0]
    windows = SpeechWindows(pocketsphinx.vad, pocketsphinx.config, max_window_s=20.0)
    cut = round((spoken["start"] + 1.0) * SAMPLE_RATE)  # mid-phrase
    assert windows.add(KEY, audio[:cut], 0.0, "audio") == []  # still speaking: it waits
    # The stream jumped (segments lost, a restart): what was buffered is complete.
    [before] = windows.add(KEY, audio[cut: cut + SAMPLE_RATE], 60.0, "audio")
    assert (before.start_s, before.samples.size) == (0.0, cut) and before.regions
    assert windows.buffered_s(KEY) > 0 and windows_of(windows, [])[0].start_s == 60.0
    # Streams do not mix.
    windows.add(("t", "other"), audio[:cut], 0.0, "audio")
    assert windows.buffered_s(KEY) == 0.0 and windows.buffered_s(("t", "other")) > 0


def test_a_restored_snapshot_continues_the_utterance(pocketsphinx: SpeechRecognizer, sample_speech) -> None:
    audio, truth = sample_speech
    pieces = segments(audio, 1.5)
    first = SpeechWindows(pocketsphinx.vad, pocketsphinx.config, max_window_s=20.0)
    for middle, (samples, start) in enumerate(pieces):
        first.add(KEY, samples, start, "audio")
        if first.buffered_s(KEY) > 1.0:  # a segment that ended mid-phrase
            break
    second = SpeechWindows(pocketsphinx.vad, pocketsphinx.config, max_window_s=20.0)
    second.restore(first.snapshot())
    rest = pieces[middle + 1:]
    a, b = windows_of(first, rest), windows_of(second, rest)
    assert [shifted(w) for w in a] == [shifted(w) for w in b] and a and a[0].regions
    assert all(np.array_equal(x.samples, y.samples) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="version"):
        second.restore({"version": 0, "streams": []})



def test_bad_audio_is_the_segments_error_and_leaves_the_buffer_as_it_was(pocketsphinx: SpeechRecognizer,
                                                                         sample_speech) -> None:
    audio, _ = sample_speech
    windows = SpeechWindows(pocketsphinx.vad, pocketsphinx.config, max_window_s=20.0)
    windows.add(KEY, audio[: 2 * SAMPLE_RATE], 0.0, "audio")
    before = windows.buffered_s(KEY)
    with pytest.raises(StageError) as error:
        windows.add(KEY, np.full(SAMPLE_RATE, np.nan, np.float32), 2.0, "audio")
    assert error.value.code == "bad_audio" and windows.buffered_s(KEY) == before
