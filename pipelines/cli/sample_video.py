"""A synthetic news broadcast with ground truth, for tests, demos and benchmarks.

The picture is built so that every behaviour livelens has to get right has a
known answer:
- scenes with distinct backgrounds and hard cuts at known times (retrieval by
  scene, change detection);
- moving shapes with known trajectories in some scenes, and whole scenes where
  nothing moves (token drop and frame skipping should remove almost everything);
- a large headline in a light banner over the lower third, dark text at a size
  OCR reads easily, changing at known times (text questions: "when did the
  headline say X?"). Headlines change at the start and in the middle of each
  moving scene, so some changes coincide with cuts, some do not, and some cuts
  keep the headline;
- a voice reading a known phrase about each headline at known times, and subtitle
  cues that nobody says, in a WebVTT sidecar and (Matroska) a subtitle track
  (sample_speech.py: "what was said?" and where the words came from).

The video is H.264 (libx264, yuv420p) with a keyframe exactly every second
(keyint = min-keyint = fps, scene-cut detection off), so segments cut cleanly on
whole seconds; the sound is AAC, mono, 48 kHz. Times in the ground truth are seconds from the first frame;
scene and headline times fall on frame boundaries, spoken phrases and subtitle cues on milliseconds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipelines.cli.sample_speech import AUDIO_RATE, TAKES_WEBVTT, plan_soundtrack, subtitle_path, webvtt

HEADLINES = (
    "STORM WARNING FOR COASTAL TOWNS",
    "MARKETS RALLY AS RATES FALL",
    "CITY COUNCIL APPROVES NEW BRIDGE",
    "LOCAL TEAM WINS CHAMPIONSHIP",
    "HEATWAVE EXPECTED THIS WEEKEND",
    "AIRPORT REOPENS AFTER SNOW",
)

# Background palettes: (name, top colour, bottom colour, pattern colour). Far apart in
# colour so that an image embedding separates the scenes.
PALETTES = (
    ("ocean", (10, 40, 120), (40, 150, 200), (200, 230, 255)),
    ("desert", (200, 120, 40), (250, 210, 120), (120, 60, 20)),
    ("forest", (10, 70, 20), (90, 160, 60), (20, 30, 10)),
    ("night", (5, 5, 25), (50, 30, 90), (240, 240, 120)),
    ("studio", (120, 10, 20), (220, 60, 60), (255, 220, 220)),
    ("steel", (60, 60, 70), (170, 170, 180), (30, 30, 40)),
)
SCENE_LENGTHS_S = (7.0, 9.5, 6.5, 11.0, 8.0, 10.5)
SHAPE_COLOURS = ((255, 255, 255), (255, 200, 0), (0, 230, 120), (230, 0, 200))

BANNER_COLOUR = (235, 235, 225)
TEXT_COLOUR = (15, 15, 20)
MIN_STATIC_S = 3.0  # a stretch with nothing changing this long counts as static in the ground truth
REQUIRED_KEYS = ("duration_s", "fps", "size", "scenes", "headlines", "static_stretches", "scene_cuts")


def ground_truth_path(video: Path) -> Path:
    """Where the ground truth of a sample video lives: next to it, ``.json`` for its suffix."""
    return Path(video).with_suffix(".json")


def load_ground_truth(path: Path | str) -> dict[str, Any]:
    """Read the ground truth; ``path`` is the JSON file or the video next to it."""
    path = Path(path)
    if path.suffix != ".json":
        path = ground_truth_path(path)
    truth = json.loads(path.read_text())
    missing = [k for k in REQUIRED_KEYS if k not in truth]
    if missing:
        raise ValueError(f"{path}: not a sample-video ground truth, missing {missing}")
    return truth


def object_position(obj: dict[str, Any], t: float) -> tuple[float, float]:
    """Top-left corner of a moving shape at time ``t`` (seconds from the video start).

    Straight motion at ``velocity`` px/s from ``start_xy`` at the scene start, bouncing off
    the edges of ``bounds`` (x0, y0, x1, y1: the picture above the banner).
    """
    x0, y0, x1, y1 = obj["bounds"]
    dt = t - obj["t0"]
    return (
        _bounce(obj["start_xy"][0] + obj["velocity"][0] * dt, x0, x1 - obj["size"]),
        _bounce(obj["start_xy"][1] + obj["velocity"][1] * dt, y0, y1 - obj["size"]),
    )


def _bounce(p: float, lo: float, hi: float) -> float:
    span = hi - lo
    q = (p - lo) % (2 * span)
    return lo + (q if q <= span else 2 * span - q)


def write_sample_video(
    out: Path, *, duration_s: float = 60.0, fps: int = 10, size: tuple[int, int] = (640, 360), seed: int = 0,
    inserts: Sequence[tuple[float, float, str]] = (), speech: bool = True,
) -> dict[str, Any]:
    """Write the broadcast to ``out`` (container from its suffix, e.g. .mp4) and its ground truth
    to ``ground_truth_path(out)``. Returns the ground truth. Same arguments, same video.

    inserts: (start_s, end_s, text) headlines shown instead of the planned ones in those spans (e.g. risky
    text at known times, for moderation); the ground truth's headlines include them.
    speech: a soundtrack with spoken phrases (needs espeak-ng) and subtitle cues (sidecar ``subtitle_path(out)``,
    and a subtitle track where the container takes WebVTT); False: a silent picture, as before issue 19.
    """
    out = Path(out)
    width, height = size
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even dimensions, got {size}")
    n_frames = round(duration_s * fps)
    truth = _plan(n_frames, fps, size, seed)
    for start, end, text in inserts:
        truth["headlines"] = _spliced(truth["headlines"], start, end, text)
    audio = None
    truth["speech"], truth["subtitles"], truth["audio"] = [], [], None
    if speech:
        audio, truth["speech"], truth["subtitles"] = plan_soundtrack(truth, seed)
        truth["audio"] = {"codec": "aac", "sample_rate": AUDIO_RATE, "channels": 1}
        subtitle_path(out).write_text(webvtt(truth["subtitles"]))
        truth["subtitle_track"] = out.suffix.lower() in TAKES_WEBVTT
    _encode(out, truth, n_frames, fps, size, audio)
    ground_truth_path(out).write_text(json.dumps(truth, indent=2))
    return truth


def _plan(n_frames: int, fps: int, size: tuple[int, int], seed: int) -> dict[str, Any]:
    """The timeline: scenes, headlines, static stretches, all on frame boundaries."""
    width, height = size
    rng = np.random.default_rng(seed)
    duration = n_frames / fps
    banner_top = height * 2 // 3
    lengths = [SCENE_LENGTHS_S[i] for i in rng.permutation(len(SCENE_LENGTHS_S))]
    palettes = [PALETTES[i][0] for i in rng.permutation(len(PALETTES))]
    headline_order = [HEADLINES[(seed + i) % len(HEADLINES)] for i in range(len(HEADLINES))]

    scenes: list[dict[str, Any]] = []
    t = 0.0
    while t < duration:
        i = len(scenes)
        end = min(duration, round((t + lengths[i % len(lengths)]) * fps) / fps)
        moving = i % 2 == 0
        scene = {"start": t, "end": end, "palette": palettes[i % len(palettes)], "moving": moving, "objects": []}
        if moving:
            for k in range(1 + i % 3):
                side = int(rng.integers(height // 10, height // 5))
                scene["objects"].append({
                    "shape": ("circle", "square")[k % 2],
                    "colour": list(SHAPE_COLOURS[(i + k) % len(SHAPE_COLOURS)]),
                    "size": side,
                    "t0": t,
                    "start_xy": [float(rng.uniform(0, width - side)), float(rng.uniform(0, banner_top - side))],
                    "velocity": [float(rng.uniform(-1, 1) * width / 4), float(rng.uniform(-1, 1) * height / 4)],
                    "bounds": [0, 0, width, banner_top],
                })
        scenes.append(scene)
        t = end

    # Headlines change where each moving scene starts and half-way through it (on a frame).
    changes = sorted({0.0} | {s["start"] for s in scenes if s["moving"]}
                     | {round((s["start"] + s["end"]) / 2 * fps) / fps for s in scenes if s["moving"]})
    headlines = [
        {"start": a, "end": b, "text": headline_order[i % len(headline_order)]}
        for i, (a, b) in enumerate(zip(changes, changes[1:] + [duration]))
    ]

    # Static: inside a still scene, between headline changes, at least MIN_STATIC_S long.
    static = []
    for s in scenes:
        if s["moving"]:
            continue
        cuts = sorted({s["start"], s["end"]} | {c for c in changes if s["start"] < c < s["end"]})
        static += [{"start": a, "end": b} for a, b in zip(cuts, cuts[1:]) if b - a >= MIN_STATIC_S]

    return {
        "duration_s": duration,
        "fps": fps,
        "size": [width, height],
        "seed": seed,
        "keyframe_interval_s": 1.0,
        "banner_box": [0, banner_top, width, height],
        "headline_font_px": _font_px(headline_order, width, height - banner_top),
        "scenes": scenes,
        "headlines": headlines,
        "static_stretches": static,
        "scene_cuts": [s["start"] for s in scenes[1:]],
    }


def _spliced(headlines: list[dict[str, Any]], start: float, end: float, text: str) -> list[dict[str, Any]]:
    """``headlines`` with [start, end) showing ``text``: the headlines it overlaps are cut around it."""
    if not 0 <= start < end:
        raise ValueError(f"insert span [{start}, {end}) is empty or negative")
    out = []
    for h in headlines:
        if h["start"] < start:
            out.append({**h, "end": min(h["end"], start)})
        if h["end"] > end:
            out.append({**h, "start": max(h["start"], end)})
    return sorted(out + [{"start": start, "end": end, "text": text}], key=lambda h: h["start"])


def _encode(out: Path, truth: dict[str, Any], n_frames: int, fps: int, size: tuple[int, int],
            audio: np.ndarray | None) -> None:
    width, height = size
    banner_top = truth["banner_box"][1]
    backgrounds = {s["palette"]: _background(s["palette"], width, height) for s in truth["scenes"]}
    font = ImageFont.load_default(size=truth["headline_font_px"])
    banners = {h["text"]: _banner(h["text"], font, width, height - banner_top) for h in truth["headlines"]}
    masks = {(o["shape"], o["size"]): _mask(o["shape"], o["size"]) for s in truth["scenes"] for o in s["objects"]}

    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {
            "preset": "veryfast",
            "crf": "26",
            # A keyframe every second exactly: no scene-cut keyframes, no shorter GOPs.
            "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0",
        }
        soundtrack = _Soundtrack(container, audio, subtitle_path(out) if truth.get("subtitle_track") else None)
        composed: dict[tuple[str, str], np.ndarray] = {}
        for i in range(n_frames):
            t = i / fps
            soundtrack.until(t + 1)
            scene = next(s for s in truth["scenes"] if s["start"] <= t < s["end"])
            text = next(h["text"] for h in truth["headlines"] if h["start"] <= t < h["end"])
            key = (scene["palette"], text)
            if key not in composed:
                frame = backgrounds[scene["palette"]].copy()
                frame[banner_top:] = banners[text]
                composed[key] = frame
            picture = composed[key]
            if scene["objects"]:
                picture = picture.copy()
                for obj in scene["objects"]:
                    _draw(picture, obj, masks[(obj["shape"], obj["size"])], t)
            video_frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            video_frame.pts = i
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())
        soundtrack.close()


class _Soundtrack:
    """The sound and subtitle streams of the sample, muxed second by second alongside the picture (interleaved,
    so a reader cutting segments by time finds each second's sound next to its frames)."""

    def __init__(self, container: av.container.OutputContainer, audio: np.ndarray | None, vtt: Path | None):
        self.container, self.audio = container, audio
        self.audio_stream = container.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio is not None else None
        self.cues: list[av.Packet] = []
        if vtt is not None:  # remux the sidecar's cues as the container's subtitle track, no re-encoding
            with av.open(str(vtt)) as source:
                template = source.streams.subtitles[0]
                stream = container.add_stream_from_template(template)
                for packet in source.demux(template):
                    if packet.dts is not None:  # demux ends with an empty flush packet
                        packet.stream = stream
                        self.cues.append(packet)
                self.cue_time_base = template.time_base
        self.done_s = 0

    def until(self, t: float) -> None:
        """Mux the sound and cues of every whole second before ``t``."""
        while self.done_s < t:
            second = self.done_s
            self.done_s += 1
            if self.audio_stream is not None:
                chunk = self.audio[second * AUDIO_RATE: (second + 1) * AUDIO_RATE]
                if chunk.size:
                    frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
                    frame.sample_rate, frame.pts = AUDIO_RATE, second * AUDIO_RATE
                    self.container.mux(self.audio_stream.encode(frame))
            while self.cues and self.cues[0].pts * self.cue_time_base < self.done_s:
                self.container.mux(self.cues.pop(0))

    def close(self) -> None:
        if self.audio_stream is not None:
            self.until(self.audio.size / AUDIO_RATE)
            self.container.mux(self.audio_stream.encode(None))
        for packet in self.cues:
            self.container.mux(packet)
        self.cues = []


def _background(palette: str, width: int, height: int) -> np.ndarray:
    """Vertical gradient with diagonal stripes whose period differs per palette."""
    index = [p[0] for p in PALETTES].index(palette)
    _, top, bottom, pattern = PALETTES[index]
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    image = (np.array(top) * (1 - ramp) + np.array(bottom) * ramp) * np.ones((1, width, 1))
    yy, xx = np.mgrid[:height, :width]
    stripes = ((xx + yy) // (12 + 4 * index)) % 2 == 0
    image[stripes] = image[stripes] * 0.75 + np.array(pattern) * 0.25
    return image.astype(np.uint8)


def _font_px(texts: list[str], width: int, banner_height: int) -> int:
    """Headline glyph size: a third of the banner (32 px at 360p, easy for OCR), smaller only
    when a headline would not fit the banner in the lines it wraps to."""
    px = banner_height * 4 // 15
    while px > 8:
        font = ImageFont.load_default(size=px)
        if all(len(_wrap(t, font, width - 2 * _margin(width))) * _line_height(px) <= banner_height for t in texts):
            return px
        px -= 1
    raise ValueError(f"a {width}x{banner_height} banner cannot hold a readable headline; use a larger size")


def _margin(width: int) -> int:
    return width // 20


def _line_height(px: int) -> int:
    return px * 5 // 4


def _banner(text: str, font: ImageFont.FreeTypeFont, width: int, height: int) -> np.ndarray:
    """The lower-third banner: dark headline on a light ground, wrapped to fit, centred."""
    image = Image.new("RGB", (width, height), BANNER_COLOUR)
    draw = ImageDraw.Draw(image)
    margin = _margin(width)
    lines = _wrap(text, font, width - 2 * margin)
    line_h = _line_height(font.size)
    y = (height - line_h * len(lines)) // 2
    for line in lines:
        draw.text((margin, y), line, font=font, fill=TEXT_COLOUR)
        y += line_h
    return np.asarray(image)


def _wrap(text: str, font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= max_width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _mask(shape: str, side: int) -> np.ndarray:
    if shape == "square":
        return np.ones((side, side), dtype=bool)
    yy, xx = np.mgrid[:side, :side]
    r = (side - 1) / 2
    return (yy - r) ** 2 + (xx - r) ** 2 <= r * r


def _draw(picture: np.ndarray, obj: dict[str, Any], mask: np.ndarray, t: float) -> None:
    x, y = object_position(obj, t)
    x, y = int(round(x)), int(round(y))
    side = obj["size"]
    picture[y : y + side, x : x + side][mask] = obj["colour"]
