"""Speech recognition on this CPU: VAD cost per stream-hour, pocketsphinx real-time factor, word error rates.

    python benchmarks/asr.py [--sample-seconds 120] [--write]

Time is the process's CPU time (``time.process_time``: every thread of this process, user + system), not wall
time: the machine is shared and loaded, and CPU seconds per audio second is what a core dedicated to the
stage would spend. VAD and pocketsphinx each run single-threaded.

Audio:
- the sample broadcast's soundtrack (espeak-ng voice, phrases and pauses: ~45% speech);
- real read speech: the five LibriVox utterances of Debian's pocketsphinx-testdata, with their transcripts,
  each whole and as one stream cut into segments (recognised per segment, and in windows ending in pauses as
  the transcript stage does);
- friday.mp4 (shared data): 6 s of 1940 film dialogue with its WebVTT transcript.
- keyword spotting: pocketsphinx's kws search against the lexicon's words looked up in free transcription,
  on the LibriVox utterances (a lexicon of 20 words said there and 15 risky words that are not).

--write appends the tables to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import jiwer
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "operators" / "speech"))

from operators.config import SpeechConfig, TranscriptConfig  # noqa: E402
from operators.speech import SAMPLE_RATE, SpeechRecognizer, hits_in_lines  # noqa: E402
from operators.speech.audio import pcm16, read_audio_file  # noqa: E402
from operators.speech.pocketsphinx_engine import model_paths, new_decoder  # noqa: E402
from operators.speech_windows import SpeechWindows  # noqa: E402
from pipelines.cli.sample_video import write_sample_video  # noqa: E402
from test_real_speech import librivox  # noqa: E402  (the reference transcripts' reader)

FRIDAY = Path(os.environ.get("LIVELENS_SHARED_DIR", "/work/shared")) / "data" / "real-video" / "friday.mp4"
SEGMENT_S = (2.0, 4.0)
RISKY = ["storm", "weapon", "money", "murder", "bridge", "police", "kill", "bomb", "drugs", "cash", "gun", "attack",
         "bitcoin", "payment", "phone"]


def cpu(fn, *args):
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def words_of(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def vtt_text(path: Path) -> str:
    cues = [line for line in path.read_text().splitlines()
            if line.strip() and "-->" not in line and line.strip() != "WEBVTT"]
    return words_of(re.sub(r"<[^>]+>", "", " ".join(cues)))


def transcribe_all(recognizer: SpeechRecognizer, clips: list[np.ndarray]) -> tuple[list[str], float]:
    texts, seconds = [], 0.0
    for clip in clips:
        lines, s = cpu(recognizer.transcribe, clip, 0.0)
        texts.append(" ".join(line.text for line in lines))
        seconds += s
    return texts, seconds


def in_pieces(recognizer: SpeechRecognizer, audio: np.ndarray, segment_s: float) -> str:
    """What a call per segment hears: each ``segment_s`` piece of ``audio`` recognised on its own."""
    n = round(segment_s * SAMPLE_RATE)
    return " ".join(line.text for i in range(0, audio.size, n) for line in recognizer.transcribe(audio[i: i + n], 0.0))


def in_windows(recognizer: SpeechRecognizer, audio: np.ndarray, segment_s: float) -> str:
    """What the transcript stage hears: ``segment_s`` pieces buffered per stream, recognised in windows that end
    in a pause (operators/speech_windows.py), the rest at the stream's end."""
    windows = SpeechWindows(recognizer.vad, recognizer.config, TranscriptConfig().asr_max_window_s)
    n = round(segment_s * SAMPLE_RATE)
    closed = [w for i in range(0, audio.size, n) for w in windows.add(("b", "s"), audio[i: i + n], i / SAMPLE_RATE, "")]
    closed += windows.flush("b", "s")
    return " ".join(line.text for w in closed for line in recognizer.read(w.samples, w.regions, w.start_s))


def bench_sample(seconds: float) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "news.mp4"
        truth = write_sample_video(video, duration_s=seconds, seed=0)
        audio = read_audio_file(video)
    recognizer = SpeechRecognizer(SpeechConfig(engine="pocketsphinx"))
    audio_s = audio.size / SAMPLE_RATE
    recognizer.vad.regions(audio[: SAMPLE_RATE])  # warm the ONNX session
    regions, vad_cpu = cpu(recognizer.vad.regions, audio)
    speech_s = sum(r.duration_s for r in regions)
    lines, total_cpu = cpu(recognizer.transcribe, audio, 0.0)
    asr_cpu = total_cpu - vad_cpu
    reference = " ".join(s["text"] for s in truth["speech"])
    wer = jiwer.wer(reference, " ".join(line.text for line in lines))
    by_segment = []  # each segment's audio on its own (utterances cut at the edges), and in windows
    for segment_s in SEGMENT_S:
        pieces = jiwer.wer(reference, in_pieces(recognizer, audio, segment_s))
        windowed = jiwer.wer(reference, in_windows(recognizer, audio, segment_s))
        by_segment.append(f"{segment_s:g} s segments: {pieces:.3f} per segment, {windowed:.3f} in windows ending "
                          "in pauses")
    return [
        f"Sample broadcast soundtrack ({audio_s:.0f} s, {len(truth['speech'])} phrases, VAD found {len(regions)} "
        f"regions = {speech_s:.1f} s of speech, {100 * speech_s / audio_s:.0f}%):",
        "",
        "| stage | CPU s | CPU s per audio s | CPU s per stream-hour | per second of speech |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| VAD (silero, ONNX, 1 thread) | {vad_cpu:.2f} | {vad_cpu / audio_s:.4f} | {3600 * vad_cpu / audio_s:.0f} | - |",
        f"| pocketsphinx on VAD's regions | {asr_cpu:.2f} | {asr_cpu / audio_s:.3f} | {3600 * asr_cpu / audio_s:.0f} | "
        f"RTF {asr_cpu / speech_s:.2f} |",
        "",
        f"Word error rate on the sample's phrases (espeak-ng voice): {wer:.3f} on the whole soundtrack; "
        f"{'; '.join(by_segment)}.",
    ]


def bench_real_speech() -> list[str]:
    utterances = librivox()
    refs = [ref for _, ref in utterances]
    audio_s = sum(a.size for a, _ in utterances) / SAMPLE_RATE
    rows = ["", f"Real read speech: LibriVox, 5 utterances, {audio_s:.1f} s (Debian pocketsphinx-testdata):", "",
            "| VAD | WER | pocketsphinx CPU s per audio s (RTF) |", "| --- | ---: | ---: |"]
    for vad in (True, False):
        recognizer = SpeechRecognizer(SpeechConfig(engine="pocketsphinx", vad=vad))
        hyps, seconds = transcribe_all(recognizer, [a for a, _ in utterances])
        rows.append(f"| {'on' if vad else 'off'} | {jiwer.wer(refs, hyps):.3f} | {seconds / audio_s:.2f} |")
    recognizer = SpeechRecognizer(SpeechConfig(engine="pocketsphinx"))
    stream, said = np.concatenate([a for a, _ in utterances]), " ".join(refs)  # one stream, read as a live one is
    rows += ["", "The five utterances as one stream, cut into segments (VAD on):", "",
             "| segments | WER, each segment on its own | WER, windows ending in pauses |", "| --- | ---: | ---: |"]
    for segment_s in SEGMENT_S:
        rows.append(f"| {segment_s:g} s | {jiwer.wer(said, in_pieces(recognizer, stream, segment_s)):.3f} | "
                    f"{jiwer.wer(said, in_windows(recognizer, stream, segment_s)):.3f} |")
    if FRIDAY.exists():
        audio = read_audio_file(FRIDAY)
        reference = vtt_text(FRIDAY.with_suffix(".vtt"))
        rows += ["", f"friday.mp4 ({audio.size / SAMPLE_RATE:.1f} s of 1940 film dialogue) against its WebVTT:", "",
                 "| VAD | WER | words recognised | CPU s per audio s |", "| --- | ---: | --- | ---: |"]
        for vad in (True, False):
            recognizer = SpeechRecognizer(SpeechConfig(engine="pocketsphinx", vad=vad))
            (hyp,), seconds = transcribe_all(recognizer, [audio])
            rows.append(f"| {'on' if vad else 'off'} | {jiwer.wer(reference, hyp):.3f} | {hyp!r} | "
                        f"{seconds * SAMPLE_RATE / audio.size:.2f} |")
        rows.append(f"\nReference: {reference!r}")
    return rows


def bench_keywords() -> list[str]:
    """pocketsphinx kws against terms looked up in free transcription, scored per (utterance, term)."""
    utterances = librivox()
    config = SpeechConfig(engine="pocketsphinx")
    dictionary = {line.split()[0] for line in open(model_paths(config)["dict"])}
    said = sorted({w for _, ref in utterances for w in ref.split() if len(w) >= 5 and w in dictionary})
    lexicon = said + RISKY
    truth = {(i, w) for i, (_, ref) in enumerate(utterances) for w in lexicon if w in ref.split()}

    def score(name: str, found: set, seconds: float) -> str:
        tp, fp = len(found & truth), len(found - truth)
        risky_fp = len({w for _, w in found - truth} & set(RISKY))
        return f"| {name} | {tp}/{len(truth)} | {fp} | {risky_fp} | {seconds:.2f} |"

    rows = ["", f"Keyword spotting on the LibriVox utterances: a lexicon of {len(said)} words said there and "
            f"{len(RISKY)} risky words that are not ({', '.join(RISKY[:6])}...); scored per (utterance, term):", "",
            "| method | found | false alarms | of them risky words | CPU s |", "| --- | ---: | ---: | ---: | ---: |"]
    recognizer = SpeechRecognizer(config)
    found, seconds = set(), 0.0
    for i, (audio, _) in enumerate(utterances):
        lines, s = cpu(recognizer.transcribe, audio, 0.0)
        seconds += s
        found |= {(i, hit.term) for hit in hits_in_lines(lines, lexicon)}
    rows.append(score("free transcription, terms looked up (kept)", found, seconds))
    for threshold in ("1e-1", "1e-5", "1e-10", "1e-20"):
        with tempfile.NamedTemporaryFile("w", suffix=".kws", delete=False) as keyfile:
            keyfile.write("".join(f"{w} /{threshold}/\n" for w in lexicon))
        decoder = new_decoder(config, kws=keyfile.name, lm=None)
        os.unlink(keyfile.name)
        found, start = set(), time.process_time()
        for i, (audio, _) in enumerate(utterances):
            decoder.start_utt()
            decoder.process_raw(pcm16(audio), full_utt=True)
            decoder.end_utt()
            found |= {(i, seg.word.strip()) for seg in decoder.seg()}
        rows.append(score(f"pocketsphinx kws, threshold {threshold}", found, time.process_time() - start))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-seconds", type=float, default=120.0)
    parser.add_argument("--write", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for section in (lambda: bench_sample(args.sample_seconds), bench_real_speech, bench_keywords):
        new = section()
        print("\n".join(new), flush=True)
        rows += new
    if args.write:
        header = [f"\n## Speech recognition on the CPU ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPUs, "
                  f"{platform.processor() or platform.machine()}, load average {load:.1f} at the start)", "",
                  f"Command: `python benchmarks/asr.py --sample-seconds {args.sample_seconds:g} --write`. "
                  "Time is the process's CPU time (time.process_time), not wall time: the machine is shared.", ""]
        with open(REPO / "BENCHMARKS.md", "a") as f:
            f.write("\n".join(header + rows) + "\n")


if __name__ == "__main__":
    main()
