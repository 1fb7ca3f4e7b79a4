"""The sample broadcast's sound and subtitles: an anchor reading known phrases at known times, and subtitle
cues, for the speech and subtitle paths of issue 19.

The voice is Debian's espeak-ng (a formant synthesiser: intelligible, clean, nothing like a real recording;
recognition on real speech is measured elsewhere), over a faint noise floor. Phrases and subtitle cues take
turns from the first second on: a phrase about the headline on screen when it starts (each phrase once before
any repeats), a pause, a cue, a pause. A phrase's span in the ground truth is where the synthesised sound
starts and stops (leading and trailing silence trimmed), to a millisecond.

Subtitle cues are lines that are neither said nor shown on the banner, shown while nobody speaks, so a
question answered from them can only be answered from the subtitle track (its source is checkable). They
go in a WebVTT sidecar next to the video (what HLS and backfill of files carry) and, where the container
takes WebVTT (Matroska, WebM), into the video as a subtitle track too; MP4 gets the sidecar only (its
subtitle codec, mov_text, has no encoder PyAV can drive).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np

AUDIO_RATE = 48_000
VOICE = ("en-us", 160)  # espeak-ng voice and words per minute
NOISE_FLOOR = 0.002  # RMS of the background hiss (-54 dBFS): silence that is not digital zero
# One phrase per headline, on the same story in other words, so a question about what was said differs
# from one about what was shown. Worded so the offline recogniser (pocketsphinx en-us) reads this voice well
# enough to find each phrase by its words: "investors cheered when the central bank lowered the cost of borrowing" came out
# as "you're implying that the central bank don't interest rates", below the query's match threshold.
PHRASES = {
    "STORM WARNING FOR COASTAL TOWNS": "heavy rain and strong wind will reach the coast tonight",
    "MARKETS RALLY AS RATES FALL": "investors cheered when the central bank lowered the cost of borrowing",
    "CITY COUNCIL APPROVES NEW BRIDGE": "the council voted to build a second bridge over the river",
    "LOCAL TEAM WINS CHAMPIONSHIP": "thousands of fans celebrated the final victory downtown",
    "HEATWAVE EXPECTED THIS WEEKEND": "temperatures will climb above thirty degrees on saturday",
    "AIRPORT REOPENS AFTER SNOW": "the first flights took off this morning after the snow was cleared",
}
SUBTITLES = (
    "Reporting from the harbour office",
    "Pictures sent in by our viewers",
    "More on this story after the break",
    "Our weather desk will be back shortly",
)
SUBTITLE_S = 2.0
PAUSE_S = 1.0  # between a phrase and a cue: longer than the VAD's min_silence, so phrases are found one by one
TAKES_WEBVTT = {".mkv", ".mka", ".webm"}


def synthesise(text: str, rate: int = AUDIO_RATE) -> np.ndarray:
    """``text`` read by espeak-ng as float32 mono at ``rate``, leading and trailing silence trimmed."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("the sample broadcast's voice needs espeak-ng: apt-get install espeak-ng "
                           "(deploy/install_system_packages.sh installs it), or make a silent sample "
                           "(`livelens sample-video --silent`, write_sample_video(speech=False))")
    voice, wpm = VOICE
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "--stdout", text],
                         check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        source_rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    samples = samples[loud[0]: loud[-1] + 1]
    t = np.arange(round(samples.size * rate / source_rate)) / rate
    return np.interp(t, np.arange(samples.size) / source_rate, samples).astype(np.float32)


def plan_soundtrack(truth: dict[str, Any], seed: int) -> tuple[np.ndarray, list[dict], list[dict]]:
    """(audio at AUDIO_RATE for the whole video, spoken phrases, subtitle cues), times in seconds."""
    duration = truth["duration_s"]
    rng = np.random.default_rng(seed)
    audio = (rng.normal(0.0, NOISE_FLOOR, round(duration * AUDIO_RATE))).astype(np.float32)
    speech, subtitles = [], []
    unsaid = list(PHRASES.values())
    t = 1.0
    while True:
        # The headline on screen now; none past the last one (a short sample) or between two.
        headline = next((h["text"] for h in truth["headlines"] if h["start"] <= t < h["end"]), None)
        text = PHRASES.get(headline) if headline is not None else None
        if text not in unsaid:  # an inserted headline (moderation tests) or one already read
            unsaid = unsaid or list(PHRASES.values())
            text = unsaid[0]
        voice = synthesise(text)
        end = round(t + voice.size / AUDIO_RATE, 3)
        if end + PAUSE_S > duration:
            break
        first = round(t * AUDIO_RATE)
        audio[first: first + voice.size] += 0.8 * voice
        speech.append({"start": t, "end": end, "text": text})
        unsaid.remove(text)
        cue_start = round(end + PAUSE_S, 3)
        if cue_start + SUBTITLE_S > duration:
            break
        subtitles.append({"start": cue_start, "end": round(cue_start + SUBTITLE_S, 3),
                          "text": SUBTITLES[len(subtitles) % len(SUBTITLES)]})
        t = round(cue_start + SUBTITLE_S + PAUSE_S, 3)
    return np.clip(audio, -1.0, 1.0), speech, subtitles


def webvtt(cues: list[dict]) -> str:
    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"

    return "WEBVTT\n\n" + "\n".join(f"{stamp(c['start'])} --> {stamp(c['end'])}\n{c['text']}\n" for c in cues)


def subtitle_path(video: Path) -> Path:
    """The WebVTT sidecar of a sample video: next to it, ``.vtt`` for its suffix."""
    return Path(video).with_suffix(".vtt")
