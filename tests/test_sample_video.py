"""The sample broadcast: its ground truth is self-consistent and the pictures match it."""

from __future__ import annotations

import itertools
import json
import resource
import time
from pathlib import Path

import av
import numpy as np
import pytest

from pipelines.cli.sample_speech import subtitle_path
from pipelines.cli.sample_video import (
    HEADLINES,
    ground_truth_path,
    load_ground_truth,
    object_position,
    write_sample_video,
)

DURATION_S = 24.0


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, np.ndarray]:
    """(video, ground truth, every decoded frame as RGB [N,H,W,3])."""
    path = tmp_path_factory.mktemp("sample") / "news.mp4"
    truth = write_sample_video(path, duration_s=DURATION_S, seed=3)
    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    return path, truth, frames


def frame_at(truth: dict, t: float) -> int:
    return round(t * truth["fps"])


def test_ground_truth_is_consistent(sample: tuple[Path, dict, np.ndarray]) -> None:
    _, truth, _ = sample
    duration, fps = truth["duration_s"], truth["fps"]
    for key in ("scenes", "headlines"):
        spans = truth[key]
        assert spans[0]["start"] == 0 and spans[-1]["end"] == duration, key
        assert all(a["end"] == b["start"] for a, b in itertools.pairwise(spans)), key  # no gap, no overlap
        assert all(s["start"] < s["end"] for s in spans), key
    assert truth["scene_cuts"] == [s["start"] for s in truth["scenes"][1:]]
    assert all(0 < t < duration for t in truth["scene_cuts"])
    assert len({s["palette"] for s in truth["scenes"]}) == len(truth["scenes"])  # 24 s: no palette repeats
    assert {h["text"] for h in truth["headlines"]} <= set(HEADLINES)
    assert all(a["text"] != b["text"] for a, b in itertools.pairwise(truth["headlines"]))
    changes = {h["start"] for h in truth["headlines"][1:]}
    cuts = set(truth["scene_cuts"])
    assert changes - cuts and cuts - changes and changes & cuts  # some coincide, some do not, both ways
    every_time = [t for span in truth["scenes"] + truth["headlines"] for t in (span["start"], span["end"])]
    assert all(abs(t * fps - round(t * fps)) < 1e-9 for t in every_time)  # on frame boundaries
    assert truth["static_stretches"]
    for stretch in truth["static_stretches"]:
        assert stretch["end"] - stretch["start"] >= 3.0
        scene = next(s for s in truth["scenes"] if s["start"] <= stretch["start"] < s["end"])
        assert not scene["moving"] and stretch["end"] <= scene["end"]
        assert not any(stretch["start"] < c < stretch["end"] for c in changes)
    assert all(bool(s["objects"]) == s["moving"] for s in truth["scenes"])


def test_video_decodes_as_described(sample: tuple[Path, dict, np.ndarray]) -> None:
    path, truth, frames = sample
    assert frames.shape == (DURATION_S * truth["fps"], truth["size"][1], truth["size"][0], 3)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        keyframes = [float(p.pts * stream.time_base) for p in container.demux(stream) if p.size and p.is_keyframe]
    assert keyframes == pytest.approx([float(t) for t in range(int(DURATION_S))])  # GOP = 1 s exactly


def test_pictures_match_the_ground_truth(sample: tuple[Path, dict, np.ndarray]) -> None:
    _, truth, frames = sample
    x0, banner_top, x1, y1 = truth["banner_box"]
    diff = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(2, 3))  # [N-1, H]: row-wise change
    above, banner = diff[:, :banner_top].mean(axis=1), diff[:, banner_top:].mean(axis=1)
    # diff[i] is the change from frame i to frame i+1.
    for cut in truth["scene_cuts"]:
        assert above[frame_at(truth, cut) - 1] > 10, cut
    for h in truth["headlines"][1:]:
        assert banner[frame_at(truth, h["start"]) - 1] > 5, h
    for stretch in truth["static_stretches"]:
        inside = slice(frame_at(truth, stretch["start"]), frame_at(truth, stretch["end"]) - 1)
        # Identical pictures; the encoder's keyframe refresh each second leaves a little noise.
        assert np.percentile(above[inside], 90) < 0.05 and np.percentile(banner[inside], 90) < 0.05, stretch
        assert above[inside].max() < 1.0 and banner[inside].max() < 1.0, stretch
    for scene in (s for s in truth["scenes"] if s["moving"]):
        inside = slice(frame_at(truth, scene["start"]), frame_at(truth, scene["end"]) - 1)
        assert np.median(above[inside]) > 0.5, scene
        # Each object is where its trajectory says, in its colour (the last drawn wins overlaps).
        obj = scene["objects"][-1]
        t = (scene["start"] + scene["end"]) / 2
        x, y = object_position(obj, t)
        centre = frames[frame_at(truth, t), int(y + obj["size"] / 2), int(x + obj["size"] / 2)]
        assert np.abs(centre.astype(int) - obj["colour"]).max() < 40, (scene["start"], obj)
    # The banner is light with dark glyphs across it.
    banner_pixels = frames[0, banner_top:y1, x0:x1].mean(axis=2)
    assert np.median(banner_pixels) > 200 and (banner_pixels < 60).mean() > 0.02


def test_headlines_are_ocr_readable(sample: tuple[Path, dict, np.ndarray]) -> None:
    # Not a livelens dependency: the OCR check runs where the engine is installed (the dev venv).
    RapidOCR = pytest.importorskip("rapidocr_onnxruntime").RapidOCR

    _, truth, frames = sample
    engine = RapidOCR()
    top = truth["banner_box"][1]
    assert truth["headline_font_px"] >= 28
    for headline in truth["headlines"][:2]:  # one wraps to two lines, one does not
        frame = frames[frame_at(truth, (headline["start"] + headline["end"]) / 2)]
        found, _ = engine(frame[top:])
        read = "".join(text for _, text, _ in found or []).replace(" ", "")
        assert read == headline["text"].replace(" ", ""), headline


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (espeak-ng): what generating costs, whatever else
    the machine is running (wall time on a shared 2-core machine measured the neighbours)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def test_default_broadcast_is_quick(tmp_path: Path) -> None:
    started = _cpu_s()
    truth = write_sample_video(tmp_path / "default.mp4")
    elapsed = _cpu_s() - started
    assert truth["duration_s"] == 60.0 and truth["size"] == [640, 360] and len(truth["scenes"]) >= 6
    assert len(truth["static_stretches"]) >= 2
    assert elapsed < 10.0, f"60 s of video took {elapsed:.1f} CPU s to generate"  # ~2.5 s with its voice


def test_same_seed_same_video(tmp_path: Path) -> None:
    truth = write_sample_video(tmp_path / "a.mp4", duration_s=10.0)
    again = write_sample_video(tmp_path / "b.mp4", duration_s=10.0)
    other = write_sample_video(tmp_path / "c.mp4", duration_s=10.0, seed=1)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert truth == again != other
    assert other["headlines"][0]["text"] == HEADLINES[1]  # the seed picks where the cycle starts


def test_load_ground_truth(sample: tuple[Path, dict, np.ndarray], tmp_path: Path) -> None:
    path, truth, _ = sample
    assert ground_truth_path(path) == path.with_suffix(".json")
    assert load_ground_truth(path) == truth == load_ground_truth(ground_truth_path(path))
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"duration_s": 1.0}))
    with pytest.raises(ValueError, match="missing"):
        load_ground_truth(broken)


def _cues(path: Path) -> list[dict]:
    """The WebVTT cues of a file's first subtitle track (a .vtt sidecar or a Matroska track), read by FFmpeg."""
    with av.open(str(path)) as container:
        stream = container.streams.subtitles[0]
        assert stream.codec_context.name == "webvtt"
        return [{"start": round(float(p.pts * p.time_base), 3), "end": round(float((p.pts + p.duration) * p.time_base), 3),
                 "text": bytes(p).decode()} for p in container.demux(stream) if p.dts is not None]


def test_soundtrack_and_subtitles_match_the_ground_truth(sample: tuple[Path, dict, np.ndarray], tmp_path: Path) -> None:
    path, truth, _ = sample
    spans = sorted([(s["start"], s["end"], "speech") for s in truth["speech"]]
                   + [(c["start"], c["end"], "cue") for c in truth["subtitles"]])
    assert len(truth["speech"]) == len(truth["subtitles"]) == 3  # 24 s: three phrases, three cues
    assert all(a[1] < b[0] for a, b in itertools.pairwise(spans)) and 0 < spans[0][0] and spans[-1][1] < DURATION_S
    assert [kind for *_, kind in spans] == ["speech", "cue"] * 3  # cues only while nobody speaks
    assert len({s["text"] for s in truth["speech"]}) == 3
    shown = " ".join(h["text"] for h in truth["headlines"]).lower().split()
    assert all(not set(c["text"].lower().split()) <= set(shown) for c in truth["subtitles"])
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("aac", 48000, 1)
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio)])
    assert samples.size / 48000 == pytest.approx(DURATION_S, abs=0.05)
    rms = lambda a, b: float(np.sqrt(np.mean(samples[round(a * 48000): round(b * 48000)] ** 2)))  # noqa: E731
    for s in truth["speech"]:  # the voice is where the ground truth says, silence (the noise floor) around it
        assert rms(s["start"], s["end"]) > 10 * rms(s["end"] + 0.2, s["end"] + 0.8)
    assert truth["subtitle_track"] is False  # MP4: the sidecar only
    assert subtitle_path(path) == path.with_suffix(".vtt")
    assert _cues(subtitle_path(path)) == truth["subtitles"]

    mkv = write_sample_video(tmp_path / "news.mkv", duration_s=DURATION_S, seed=3)
    assert mkv["subtitle_track"] is True and mkv["speech"] == truth["speech"]
    assert _cues(tmp_path / "news.mkv") == truth["subtitles"]  # the same cues, in the container


def test_a_silent_sample_has_no_soundtrack(tmp_path: Path) -> None:
    truth = write_sample_video(tmp_path / "quiet.mp4", duration_s=3.0, speech=False)
    assert truth["speech"] == truth["subtitles"] == [] and truth["audio"] is None
    with av.open(str(tmp_path / "quiet.mp4")) as container:
        assert not container.streams.audio and not container.streams.subtitles
    assert not (tmp_path / "quiet.vtt").exists()


@pytest.mark.parametrize("duration_s", [4.0, 8.0, 30.0])
def test_a_short_sample_still_speaks_within_its_length(tmp_path: Path, duration_s: float) -> None:
    """Reading stops where the last headline ends or the sample does (it once ran past both and failed)."""
    truth = write_sample_video(tmp_path / "short.mp4", duration_s=duration_s)
    assert all(0 < p["start"] < p["end"] <= duration_s for p in truth["speech"] + truth["subtitles"])
    assert truth["speech"] or duration_s < 8
