"""Bounded inputs: containers and nested I/O in decode, a per-segment deadline, example-image bombs."""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from operators.decode import SegmentDecoder
from operators.frames import StageError
from pipelines.config import DecodeConfig
from pipelines.query.images import ImageRefused, decode_query_image
from pipelines.query.engine import QueryError, decode_image
from tests.operators.media import remux_segments

CAR = "car-detection.mp4"


@pytest.fixture(scope="module")
def segment(real_video_dir: Path):
    return remux_segments(real_video_dir / CAR)[0]


@pytest.fixture
def local_media(segment, tmp_path: Path) -> Path:
    """A file on the decoder's machine that a nested open would read and return as frames."""
    path = tmp_path / "private.ts"
    path.write_bytes(segment.payload)
    return path


def _playlists(path: Path) -> list[tuple[str, bytes]]:
    return [
        ("hls", f"#EXTM3U\n#EXT-X-TARGETDURATION:5\n#EXTINF:4.8,\nfile://{path}\n#EXT-X-ENDLIST\n".encode()),
        ("hls", f"#EXTM3U\n#EXT-X-TARGETDURATION:5\n#EXTINF:4.8,\n{path}\n#EXT-X-ENDLIST\n".encode()),
        ("hls", b"#EXTM3U\n#EXT-X-TARGETDURATION:5\n#EXTINF:4.8,\nhttp://169.254.169.254/x.ts\n#EXT-X-ENDLIST\n"),
        ("concat", f"ffconcat version 1.0\nfile {path}\n".encode()),
        ("dash", f'<MPD><Period><AdaptationSet><Representation><BaseURL>file://{path}</BaseURL>'
                 '</Representation></AdaptationSet></Period></MPD>'.encode()),
    ]


def test_playlist_containers_are_dead_lettered_as_bad_container(segment, local_media):
    for container, payload in _playlists(local_media):
        info = dataclasses.replace(segment.info(seq=0), container=container)
        with pytest.raises(StageError) as raised:
            SegmentDecoder(DecodeConfig()).decode(info, payload)
        assert raised.value.code == "bad_container", container


def test_nested_io_stays_refused_even_if_an_operator_allows_a_playlist_container(segment, local_media):
    """Defence in depth: the payload is read from memory and FFmpeg may open no protocol at all."""
    config = DecodeConfig(containers=(*DecodeConfig().containers, "hls", "concat", "dash"))
    for container, payload in _playlists(local_media):
        info = dataclasses.replace(segment.info(seq=0), container=container)
        with pytest.raises(StageError) as raised:
            SegmentDecoder(config).decode(info, payload)
        assert raised.value.code == "decode_error", container


def test_a_segment_over_its_decode_deadline_is_dead_lettered(segment):
    with pytest.raises(StageError) as raised:
        SegmentDecoder(DecodeConfig(deadline_s=1e-9)).decode(segment.info(seq=0), segment.payload)
    assert raised.value.code == "decode_timeout"
    assert len(SegmentDecoder(DecodeConfig()).decode(segment.info(seq=0), segment.payload).pts_s)  # in budget


def test_a_frame_over_the_pixel_limit_is_dead_lettered(segment):
    with pytest.raises(StageError) as raised:
        SegmentDecoder(DecodeConfig(max_pixels=768 * 432 - 1)).decode(segment.info(seq=0), segment.payload)
    assert raised.value.code == "oversize_frame"


@functools.cache
def _png_bomb(width: int, height: int) -> bytes:
    """A valid PNG of one grey colour: a few KB on the wire, width * height bytes once decoded."""
    raw = zlib.compress(b"".join(b"\x00" + b"\x80" * width for _ in range(height)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _encoded(fmt: str, size=(64, 48), **save) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format=fmt, **save)
    return out.getvalue()


def test_an_image_bomb_is_refused_from_its_header():
    bomb = _png_bomb(12_000, 12_000)  # 144 M pixels, 432 MB as RGB: under Pillow's own bomb guard
    assert len(bomb) < 1_000_000
    with pytest.raises(ImageRefused, match="12000x12000"):
        decode_query_image(bomb, max_pixels=4096 * 4096)


@pytest.mark.parametrize("fmt, save, accepted", [
    ("JPEG", {}, True),
    ("PNG", {}, True),
    ("WEBP", {}, True),
    ("GIF", {}, False),
    ("BMP", {}, False),
    ("TIFF", {}, False),
    ("PPM", {}, False),
    ("ICO", {}, False),
])
def test_only_jpeg_png_and_webp_are_read(fmt, save, accepted):
    data = _encoded(fmt, **save)
    if accepted:
        assert decode_query_image(data, max_pixels=10_000).shape == (1, 48, 64, 3)
    else:
        with pytest.raises(ImageRefused):
            decode_query_image(data, max_pixels=10_000)


def test_an_animated_webp_is_refused():
    out = io.BytesIO()
    frames = [Image.new("RGB", (32, 32), (i * 40, 0, 0)) for i in range(3)]
    frames[0].save(out, format="WEBP", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageRefused, match="animated"):
        decode_query_image(out.getvalue(), max_pixels=10_000)


@pytest.mark.parametrize("b64", [
    base64.b64encode(_png_bomb(12_000, 12_000)).decode(),
    base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).decode(),  # a truncated header
    base64.b64encode(_encoded("JPEG")[:100]).decode(),  # a truncated body
    "not base64!",
])
def test_query_images_that_are_refused_are_a_400(b64):
    with pytest.raises(QueryError) as raised:
        decode_image(b64, max_pixels=4096 * 4096)
    assert raised.value.status == 400 and raised.value.code == "bad_image"


def test_a_good_image_decodes_to_its_pixels():
    pixels = decode_image(base64.b64encode(_encoded("PNG")).decode(), max_pixels=4096 * 4096)
    assert pixels.shape == (1, 48, 64, 3) and np.all(pixels[0, 0, 0] == (10, 200, 30))
