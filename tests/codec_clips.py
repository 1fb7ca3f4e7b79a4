"""Small test clips in the codecs and containers people bring: made with PyAV's own encoders, no downloads."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

WIDTH, HEIGHT, FPS, GOP = 160, 128, 10, 10

# (encoder, source container, file suffix, pixel format, the codec the publisher reports, the segment container)
CODEC_CLIPS = [
    ("mpeg4", "avi", ".avi", "yuv420p", "mpeg4", "matroska"),          # MPEG-4 Part 2 (DivX/Xvid-era AVI)
    ("msmpeg4", "avi", ".avi", "yuv420p", "msmpeg4v3", "matroska"),    # MS-MPEG4v3, old cameras and archives
    ("mjpeg", "avi", ".avi", "yuvj420p", "mjpeg", "matroska"),         # IP-camera MJPEG
    ("libvpx", "webm", ".webm", "yuv420p", "vp8", "matroska"),
    ("libvpx-vp9", "webm", ".webm", "yuv420p", "vp9", "matroska"),
    ("libx265", "mp4", ".mp4", "yuv420p", "hevc", "mpegts"),
    ("libsvtav1", "mp4", ".mp4", "yuv420p", "av1", "matroska"),
    ("libx264", "mp4", ".mp4", "yuv420p", "h264", "mpegts"),
]

_QUIET = {"libx265": {"x265-params": "log-level=none"}, "libsvtav1": {"svtav1-params": "log-level=0"}}


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except av.codec.codec.UnknownCodecError:
        return False
    return True


def write_clip(path: Path, encoder: str, container: str, pix_fmt: str, seconds: float = 4.0) -> Path:
    """A moving white bar over a slowly changing background, a keyframe every GOP frames."""
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(encoder, rate=FPS)
        stream.width, stream.height, stream.pix_fmt, stream.gop_size = WIDTH, HEIGHT, pix_fmt, GOP
        stream.options = _QUIET.get(encoder, {})
        for i in range(int(seconds * FPS)):
            image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            image[..., 1] = (i * 5) % 256
            image[:, (i * 4) % (WIDTH - 20):(i * 4) % (WIDTH - 20) + 20] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
