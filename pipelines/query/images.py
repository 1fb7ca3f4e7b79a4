"""Example images of queries: what formats and sizes are read, checked before a pixel is decoded.

A 20 KB PNG can declare 12,000 x 12,000 pixels and decode to 430 MB; Pillow's `Image.open` reads only
the header, so the format and the declared size are checked there, and `load()` runs only for images
within the limit. Pillow's own bomb guard (Image.MAX_IMAGE_PIXELS) is process-wide and only warns below
twice its value, so it is not relied on.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# Formats with bounded, well-trodden decoders; the formats a camera or a browser produces.
QUERY_IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")


class ImageRefused(ValueError):
    """Not an image livelens reads; the message is safe to return to the caller."""


def decode_query_image(data: bytes, max_pixels: int) -> np.ndarray:
    """RGB pixels [1, H, W, 3] of a JPEG, PNG or WebP image of at most ``max_pixels`` pixels."""
    try:
        with Image.open(io.BytesIO(data), formats=QUERY_IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRefused(f"{width}x{height} is above the {max_pixels} pixels an example image may have")
            if getattr(img, "n_frames", 1) > 1:
                raise ImageRefused("animated images are not read: send one frame")
            img.load()
            return np.asarray(img.convert("RGB"))[None]
    except UnidentifiedImageError:
        raise ImageRefused(f"not a {', '.join(QUERY_IMAGE_FORMATS)} image") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # a truncated or corrupt file
        raise ImageRefused(f"unreadable image: {exc}") from None
