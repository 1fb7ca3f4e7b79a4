"""Where a frame changed since the last read of its stream, for incremental OCR (operators/ocr.py).

Change is measured on a fixed 128x72 grey thumbnail of each frame; a region is a box (x0, y0, x1, y1) in [0, 1]
of the frame around thumbnail cells that changed, widened to the whole of every line of the last read it
touches, so a line is never judged by part of it.
"""

from __future__ import annotations

import cv2
import numpy as np

Region = tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1] of the frame

# Change detection runs on a fixed 128x72 grey thumbnail: at this size a swapped headline in a
# lower-third banner still moves the mean difference by ~0.016, twice what it does at 64x36, while
# sensor and compression noise of a static shot stays ~0.003. Fixed (not aspect-preserving) so a
# stream that changes resolution keeps comparing like with like.
_THUMBNAIL_SIZE = (128, 72)  # (width, height), as cv2 takes it
# A thumbnail cell (1/128 x 1/72 of the frame) whose grey level moved by more than this changed. A swapped
# headline moves the cells under its letters by 30-120 levels; noise of a static shot by under 8. Changed cells
# are widened by _REGION_MARGIN cells on each side, so nearby changes join into one region.
_CELL_CHANGE = 16
_REGION_MARGIN = 2
# A window the detector sees around a region: this many pixels of context on each side (the detector finds
# the edges of text against its background), in steps of the detector's stride.
_WINDOW_MARGIN = 32
_WINDOW_STEP = 32


def thumbnail(image: np.ndarray) -> np.ndarray:
    """uint8 [72, 128] grey thumbnail of an RGB frame."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, _THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA)


def change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 thumbnails, in [0, 1]."""
    return float(np.abs(a.astype(np.int16) - b).mean()) / 255.0


def lines_changed(now: np.ndarray, before: np.ndarray, lines: list[Region]) -> bool:
    """Whether the picture changed under any of ``lines`` (the last read's line bounds). A swapped headline or
    a ticking score moves the cells under its letters by tens of grey levels however small a part of the frame
    it is, while the mean difference of the whole frame can stay below any threshold that ignores noise."""
    changed = np.abs(now.astype(np.int16) - before) > _CELL_CHANGE
    rows, cols = now.shape
    return any(changed[int(y0 * rows):int(np.ceil(y1 * rows)), int(x0 * cols):int(np.ceil(x1 * cols))].any()
               for x0, y0, x1, y1 in lines)


def changed_regions(now: np.ndarray, before: np.ndarray, lines: list[Region]) -> list[Region]:
    """Regions around the cells that changed between two thumbnails, each widened to the whole of any of
    ``lines`` (the last read's line bounds) it touches, overlapping ones merged."""
    changed = (np.abs(now.astype(np.int16) - before) > _CELL_CHANGE).astype(np.uint8)
    changed = cv2.dilate(changed, np.ones((2 * _REGION_MARGIN + 1,) * 2, np.uint8))
    count, _, cells, _ = cv2.connectedComponentsWithStats(changed, connectivity=8)
    rows, cols = now.shape
    regions = [(x / cols, y / rows, (x + w) / cols, (y + h) / rows) for x, y, w, h, _ in cells[1:count]]
    while True:  # widen to touched lines and merge overlapping regions until nothing moves
        grown = _merged([union([r] + [b for b in lines if overlap(r, b)]) for r in regions])
        if grown == regions:
            return regions
        regions = grown


def area(regions: list[Region]) -> float:
    return sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in regions)


def window(region: Region, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixels (x0, y0, x1, y1) of a width x height image around a region, with _WINDOW_MARGIN of context,
    every side on a multiple of _WINDOW_STEP (or the image's edge, itself a multiple of it)."""
    x0, y0, x1, y1 = region
    return (max(0, int(x0 * width) // _WINDOW_STEP * _WINDOW_STEP - _WINDOW_MARGIN),
            max(0, int(y0 * height) // _WINDOW_STEP * _WINDOW_STEP - _WINDOW_MARGIN),
            min(width, -(-int(np.ceil(x1 * width)) // _WINDOW_STEP) * _WINDOW_STEP + _WINDOW_MARGIN),
            min(height, -(-int(np.ceil(y1 * height)) // _WINDOW_STEP) * _WINDOW_STEP + _WINDOW_MARGIN))


def bounds(box: tuple[tuple[float, float], ...]) -> Region:
    xs, ys = [x for x, _ in box], [y for _, y in box]
    return min(xs), min(ys), max(xs), max(ys)


def centre_in(box: tuple[tuple[float, float], ...], region: Region) -> bool:
    x0, y0, x1, y1 = bounds(box)
    return region[0] <= (x0 + x1) / 2 <= region[2] and region[1] <= (y0 + y1) / 2 <= region[3]


def overlap(a: Region, b: Region) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def union(boxes: list[Region]) -> Region:
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _merged(regions: list[Region]) -> list[Region]:
    """Overlapping regions joined into one, so no text is split between two."""
    out: list[Region] = []
    for region in sorted(regions):
        touching = [r for r in out if overlap(r, region)]
        out = [r for r in out if r not in touching] + [union(touching + [region])]
    return sorted(out) if len(out) == len(regions) else _merged(out)
