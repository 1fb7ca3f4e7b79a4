"""Media that carries words, for the transcript tests.

Closed captions come from a registry package: mux.js (npm, the HLS transmuxer video.js uses) ships real
CEA-608-captioned H.264 transport streams among its test segments, and its own CEA-608 decoder, independent
of FFmpeg's, which the tests compare livelens's caption lines with. It is fetched at test time with
``npm pack`` (npm's cache keeps it for later runs) and never committed.

Subtitle tracks are written here with PyAV (libx264 video, mov_text / SubRip / WebVTT cues of known words at
known times), as are sidecar files.
"""

from __future__ import annotations

import json
import struct
import subprocess
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MUXJS = "mux.js@7.1.0"
# Real broadcast captions in mux.js's test segments: CC1 roll-up (an English news feed, CC3 in French) and
# CC1 pop-on (its Sintel sample, whose words are redacted to solid blocks in the stream itself).
ROLL_UP = "test/segments/multi-channel-608-captions.ts"
POP_ON = "test/segments/sintel-captions.ts"
_DECODER_JS = Path(__file__).with_name("muxjs_captions.js")

# What a subtitle track says: (start s, end s, words).
CUES = ((0.5, 1.5, "the storm is coming ashore"), (2.5, 3.8, "stay indoors tonight"))
# The style header FFmpeg's text subtitle encoders need to open (they are muxed from packets, never encoded).
_ASS_HEADER = (b"[Script Info]\nScriptType: v4.00+\n\n[V4+ Styles]\nFormat: Name, Fontname, Fontsize\n"
               b"Style: Default,Arial,16\n\n[Events]\nFormat: Layer, Start, End, Style, Text\n")


def fetch_muxjs(dest: Path) -> Path:
    """mux.js's published package, unpacked under ``dest``; its folder."""
    subprocess.run(["npm", "pack", MUXJS, "--pack-destination", str(dest), "--silent"], check=True,
                   capture_output=True, timeout=180)
    (tarball,) = dest.glob("mux.js-*.tgz")
    with tarfile.open(tarball) as archive:
        archive.extractall(dest, filter="data")
    return dest / "package"


def muxjs_cues(package: Path, ts_file: Path) -> list[dict]:
    """mux.js's reading of a transport stream's CEA-608 captions: [{stream, startPts, endPts, rows}]."""
    out = subprocess.run(["node", str(_DECODER_JS), str(package), str(ts_file)], check=True, capture_output=True,
                         timeout=60)
    return json.loads(out.stdout)


def write_subtitled_video(path: Path, fmt: str, codec: str | None, duration_s: float = 4.0, cues=CUES) -> Path:
    """``duration_s`` of 25 fps H.264 (a keyframe a second, no B-frames) with one subtitle track of ``cues``
    (``codec`` None: no subtitle track)."""
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream("libx264", rate=25, options={"g": "25", "bf": "0", "preset": "ultrafast"})
        video.width, video.height, video.pix_fmt = 160, 96, "yuv420p"
        cues = list(cues) if codec else []
        if codec:
            sub = out.add_stream(codec)
            sub.codec_context.time_base = Fraction(1, 1000)
            sub.codec_context.subtitle_header = _ASS_HEADER
            sub.metadata["language"] = "eng"
        for i in range(round(duration_s * 25)):
            frame = av.VideoFrame.from_ndarray(np.full((96, 160, 3), (i * 7) % 255, np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
            while cues and cues[0][0] <= i / 25:  # interleaved, as a muxer writes them
                start, end, words = cues.pop(0)
                data = words.encode()
                if codec == "mov_text":  # 3GPP timed text: a 16-bit length, then the text
                    data = struct.pack(">H", len(data)) + data
                elif codec == "ass":  # Matroska's ASS event: ReadOrder, Layer, Style, Name, margins, Effect, Text
                    data = f"{len(cues)},0,Default,,0,0,0,,{{\\i1}}{words}".encode()
                packet = av.Packet(data)
                packet.pts = packet.dts = round(start * 1000)
                packet.duration = round((end - start) * 1000)
                packet.time_base = Fraction(1, 1000)
                packet.stream = sub
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def srt(cues=CUES) -> str:
    def stamp(s: float) -> str:
        return f"{int(s // 3600):02d}:{int(s % 3600 // 60):02d}:{int(s % 60):02d},{round(s % 1 * 1000):03d}"
    return "".join(f"{i}\n{stamp(a)} --> {stamp(b)}\n{words}\n\n" for i, (a, b, words) in enumerate(cues, 1))


def vtt(cues=CUES) -> str:
    return "WEBVTT\n\n" + srt(cues).replace(",", ".")
