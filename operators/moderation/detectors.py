"""The fast path: cheap detectors that score every sampled frame.

Each detector turns a FrameBatch (and the on-screen text read from it, when it needs that) into one
DetectorScore per frame: a score in [0, 1], the labels that explain it, and where it saw them. They
decide nothing about a room; operators.moderation.risk pools their scores over time.

A detector that fails must not stop screening, so the pipeline wraps each in a SafeDetector: an
exception or a timeout makes that detector's scores for the batch *unknown* (score None), counted and
logged, and the other detectors' scores still count.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from operators.frames import FrameBatch, FrameText
from operators.moderation.policy import (
    LexiconPolicy,
    NudityPolicy,
    PromptPolicy,
    Severity,
    normalise,
)
from operators.ocr import TextEmbedder
from operators.onnx_session import open_session
from operators.transcript import TranscriptLine

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1), fractions of the frame's width and height

# The class order of nudenet 3.4's 320n.onnx (its module-private ``__labels``); the model's output has
# 4 box values and then one score per class, in this order.
NUDENET_CLASSES = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED", "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
_NUDENET_SIZE = 320  # the square input 320n.onnx was trained at

# A phone number: 3 + 4 digits with an optional area code and country prefix, not inside a longer run of
# digits or a decimal (prices, scores, years and clocks do not have this shape). Letters may touch it:
# OCR runs a number into the next word ('555-0142NOW').
_PHONE = re.compile(r"(?<![\d.])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])?\d{3}[\s.-]\d{4}(?!\d|\.\d)")
_PAYMENT = re.compile(r"paypal\s?\.\s?me\s?/\s?\S+|cash\s?\.\s?app\s?/\s?\S+|\bcash\s?app\b|\bvenmo\b", re.I)
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z][A-Za-z0-9_]{1,19})\b")
_SEVERITY_RANK = {None: 0, "YELLOW": 1, "RED": 2}
_LINE_CACHE = 4096  # embedded lines kept: broadcast text repeats for minutes, so most lookups hit


@dataclass(frozen=True)
class DetectorScore:
    """One detector's view of one frame.

    score: in [0, 1]; None when the detector could not score the frame (``error`` says why).
    labels: what it saw (a nudenet class, 'term:<term>', 'phone_number', a prompt label).
    boxes: where, one per label when the detector localises.
    text: the recognised text that matched, for the reviewer.
    severity: set by detectors whose policy ranks hits: a RED hit turns a room RED at once.
    """

    detector: str
    pts_s: float
    score: float | None
    labels: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    text: str = ""
    severity: Severity | None = None
    error: str = ""


class Detector(Protocol):
    name: str

    def score(self, frames: FrameBatch, texts: list[FrameText] | None) -> list[DetectorScore]:
        """One score per frame of ``frames``, in order. ``texts``: the frames' on-screen text, when read."""
        ...


class NudityDetector:
    """nudenet's exposed-body-part detector (YOLOv8n, 320x320, ONNX) on whole frames, several per model run.

    A frame's score is the confidence of its most confident exposed-class detection (policy.classes);
    labels and boxes name each exposed class found at ``min_confidence`` or above. The pre-processing is
    nudenet's own (pad to a square at the bottom right, resize, RGB in [0, 1]), done here on the batch;
    boxes come from each class's best anchor rather than NMS, since only the best box per class is shown.
    """

    name = "nudity"

    def __init__(self, policy: NudityPolicy, batch_frames: int = 8, model_path: str | Path | None = None):
        if model_path is None:
            import nudenet

            model_path = Path(nudenet.__file__).with_name("320n.onnx")
        unknown = set(policy.classes) - set(NUDENET_CLASSES)
        if unknown:
            raise ValueError(f"not nudenet classes: {sorted(unknown)}")
        self.policy = policy
        self.batch_frames = batch_frames
        self._session = open_session(model_path)
        self._input = self._session.get_inputs()[0].name
        channels = self._session.get_outputs()[0].shape[1]
        if channels != 4 + len(NUDENET_CLASSES):
            raise ValueError(f"{model_path}: {channels} output channels, expected {4 + len(NUDENET_CLASSES)}")
        self._classes = np.array([NUDENET_CLASSES.index(c) for c in policy.classes])

    def score(self, frames: FrameBatch, texts: list[FrameText] | None) -> list[DetectorScore]:
        out = []
        for start in range(0, len(frames), self.batch_frames):
            images = frames.images[start : start + self.batch_frames]
            blob, side = _square_blob(images)
            raw = self._session.run(None, {self._input: blob})[0]  # [B, 4 + classes, anchors]
            for i, pts_s in enumerate(frames.pts_s[start : start + len(images)]):
                out.append(self._frame_score(float(pts_s), raw[i], side, images.shape[2], images.shape[1]))
        return out

    def _frame_score(self, pts_s: float, raw: np.ndarray, side: int, width: int, height: int) -> DetectorScore:
        class_scores = raw[4 + self._classes]  # [classes, anchors]
        best_anchor = class_scores.argmax(axis=1)
        best = class_scores[np.arange(len(self._classes)), best_anchor]
        labels, boxes = [], []
        for c in np.flatnonzero(best >= self.policy.min_confidence):
            cx, cy, w, h = raw[:4, best_anchor[c]] * (side / _NUDENET_SIZE)
            boxes.append((_unit((cx - w / 2) / width), _unit((cy - h / 2) / height),
                          _unit((cx + w / 2) / width), _unit((cy + h / 2) / height)))
            labels.append(self.policy.classes[c])
        score = float(best.max()) if labels else 0.0
        return DetectorScore(self.name, pts_s, score, tuple(labels), tuple(boxes))


class LexiconDetector:
    """On-screen text against the policy's lexicon and built-in patterns.

    A term matches exactly (as whole words), fuzzily (a run of as many words within ``fuzzy_ratio`` of it:
    OCR misreads and evasions like 'c0caine') or, for terms marked ``semantic``, by meaning (MiniLM cosine of
    a line and the term). A semantic hit is at most YELLOW whatever the term's severity: a paraphrase match
    is a guess, so it asks for verification instead of alerting at once.
    """

    name = "lexicon"

    def __init__(self, policy: LexiconPolicy, embedder: TextEmbedder | None = None):
        self.policy = policy
        self._exact = [(t, re.compile(rf"(?<!\w){re.escape(normalise(t.term))}(?!\w)")) for t in policy.terms]
        self._semantic = [t for t in policy.terms if t.semantic]
        if self._semantic and embedder is None:
            raise ValueError("the lexicon has semantic terms: LexiconDetector needs a TextEmbedder")
        self._embedder = embedder
        self._term_vectors = embedder.embed([t.term for t in self._semantic]) if self._semantic else None
        self._line_vectors: OrderedDict[str, np.ndarray] = OrderedDict()

    def score(self, frames: FrameBatch, texts: list[FrameText] | None) -> list[DetectorScore]:
        if texts is None or len(texts) != len(frames):
            raise ValueError(f"LexiconDetector needs one FrameText per frame, got {None if texts is None else len(texts)}"
                             f" for {len(frames)} frames")
        return [self._frame_score(float(pts_s), text) for pts_s, text in zip(frames.pts_s, texts)]

    def _frame_score(self, pts_s: float, frame_text: FrameText) -> DetectorScore:
        if frame_text.unread:
            # Its text is unknown, not clean: the decision lists the lexicon under ``degraded``.
            return DetectorScore(self.name, pts_s, None, error="text not read: the live OCR reader was behind "
                                 "(ocr.max_lag_s)")
        hits = self.matches(frame_text.text) if frame_text.lines else []
        if not hits:
            return DetectorScore(self.name, pts_s, 0.0)
        severity = max((s for _, s in hits), key=_SEVERITY_RANK.__getitem__)
        labels = tuple(dict.fromkeys(label for label, _ in hits))
        return DetectorScore(self.name, pts_s, self.policy.severity_scores[severity], labels,
                             text=frame_text.text, severity=severity)

    def score_lines(self, lines: Sequence[TranscriptLine]) -> list[DetectorScore]:
        """What was said (captions, subtitles, recognised speech) against the lexicon: a score at each line's
        start for the lines that break a rule, under the detector name ``lexicon:<source>``, so an alert's
        driver says whether the words were captioned, subtitled or heard."""
        out = []
        for line in lines:
            hits = self.matches(line.text)
            if hits:
                severity = max((s for _, s in hits), key=_SEVERITY_RANK.__getitem__)
                labels = tuple(dict.fromkeys(label for label, _ in hits))
                out.append(DetectorScore(f"{self.name}:{line.source}", line.start_s,
                                         self.policy.severity_scores[severity], labels, text=line.text,
                                         severity=severity))
        return out

    def matches(self, text: str) -> list[tuple[str, Severity]]:
        """(label, severity) of every rule ``text`` breaks."""
        hits: list[tuple[str, Severity]] = []
        flat = " ".join(text.split())
        if self.policy.phone_numbers and _PHONE.search(flat):
            hits.append(("phone_number", self.policy.phone_numbers))
        if self.policy.payment_handles and (_PAYMENT.search(flat) or _has_cashtag(flat)):
            hits.append(("payment_handle", self.policy.payment_handles))
        folded = normalise(flat)
        words = folded.split(" ")
        for term, pattern in self._exact:
            if pattern.search(folded):
                hits.append((f"term:{term.term}", term.severity))
            elif len(term.term) >= self.policy.min_fuzzy_chars and _fuzzy(normalise(term.term), words,
                                                                         self.policy.fuzzy_ratio):
                hits.append((f"term~{term.term}", term.severity))
        if self._semantic:
            lines = [line for line in text.split("\n") if line.strip()]
            cosines = self._embed_lines(lines) @ self._term_vectors.T  # [lines, terms]
            for j in np.flatnonzero(cosines.max(axis=0) >= self.policy.semantic_threshold):
                hits.append((f"semantic:{self._semantic[j].term}", "YELLOW"))
        return hits

    def _embed_lines(self, lines: list[str]) -> np.ndarray:
        missing = [line for line in dict.fromkeys(lines) if line not in self._line_vectors]
        if missing:
            for line, vector in zip(missing, self._embedder.embed(missing)):
                self._line_vectors[line] = vector
        for line in lines:
            self._line_vectors.move_to_end(line)
        while len(self._line_vectors) > _LINE_CACHE:
            self._line_vectors.popitem(last=False)
        return np.stack([self._line_vectors[line] for line in lines])


class PromptSimilarityDetector:
    """Zero-shot screening with a dual encoder (CLIP, SigLIP): cosine of each frame's index embedding to
    the policy's prompts, embedded once by the text tower.

    embed_images: RGB uint8 [N,H,W,3] -> L2-normalised [N,E] (VisionEncoder.embed_images).
    embed_texts: prompts -> L2-normalised [n,E] in the same space (VisionEncoder.embed_text).
    A frame's score is the softmax probability mass on the risky prompts against the risky and benign
    prompts together: an absolute cosine means little across models, a comparison does.
    """

    name = "prompts"

    def __init__(self, policy: PromptPolicy, embed_images: Callable[[np.ndarray], np.ndarray],
                 embed_texts: Callable[[Sequence[str]], np.ndarray]):
        if not policy.risky or not policy.benign:
            raise ValueError("PromptSimilarityDetector needs risky and benign prompts")
        self.policy = policy
        self._embed_images = embed_images
        prompts = [p.prompt for p in policy.risky] + list(policy.benign)
        self._prompts = np.asarray(embed_texts(prompts), np.float32)

    def score(self, frames: FrameBatch, texts: list[FrameText] | None) -> list[DetectorScore]:
        return self.score_embeddings(frames.pts_s, self._embed_images(frames.images))

    def score_embeddings(self, pts_s: np.ndarray, embeddings: np.ndarray) -> list[DetectorScore]:
        """Scores from index embeddings already computed (FeatureBatch.embedding): no second image pass."""
        logits = (np.asarray(embeddings, np.float32) @ self._prompts.T) / self.policy.temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        risky = probs[:, : len(self.policy.risky)]
        return [
            DetectorScore(self.name, float(t), float(np.clip(r.sum(), 0.0, 1.0)), (self.policy.risky[int(r.argmax())].label,))
            for t, r in zip(pts_s, risky)
        ]


@dataclass
class DetectorHealth:
    """Counts of one detector's batches: scored, failed (raised or returned a malformed result), timed out,
    and skipped because a timed-out run had not returned yet."""

    batches: int = 0
    failures: int = 0
    timeouts: int = 0
    skipped_busy: int = 0
    last_error: str = ""


class SafeDetector:
    """Runs a detector with a time limit; never raises. Failures make the batch's scores unknown.

    The detector runs on a worker thread of its own so the caller can stop waiting. Python cannot stop the
    thread, so a run past its time limit finishes in the background, and batches that arrive meanwhile are
    marked unknown at once (``skipped_busy``) rather than queued behind it: a stuck model then costs the
    room that detector's evidence, never its latency.
    """

    def __init__(self, detector: Detector, timeout_s: float):
        self.detector = detector
        self.name = detector.name
        self.timeout_s = timeout_s
        self.health = DetectorHealth()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"detector-{self.name}")
        self._running: concurrent.futures.Future | None = None

    def score(self, frames: FrameBatch, texts: list[FrameText] | None) -> list[DetectorScore]:
        self.health.batches += 1
        if self._running is not None and not self._running.done():
            self.health.skipped_busy += 1
            return self._unknown(frames, "busy: an earlier run timed out and is still running")
        self._running = self._pool.submit(self.detector.score, frames, texts)
        try:
            scores = self._running.result(timeout=self.timeout_s)
            _check(scores, frames, self.name)
        except concurrent.futures.TimeoutError:
            self.health.timeouts += 1
            log.warning("detector %s timed out after %.2f s on %d frames", self.name, self.timeout_s, len(frames))
            return self._unknown(frames, f"timeout after {self.timeout_s:g} s")
        except Exception as exc:  # any failure of the model or its input: the batch is unknown, screening goes on
            self.health.failures += 1
            self.health.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("detector %s failed on %d frames: %s", self.name, len(frames), self.health.last_error)
            return self._unknown(frames, self.health.last_error)
        return scores

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _unknown(self, frames: FrameBatch, why: str) -> list[DetectorScore]:
        return [DetectorScore(self.name, float(t), None, error=why) for t in frames.pts_s]


def screen(detectors: Sequence[Detector], frames: FrameBatch, texts: list[FrameText] | None) -> list[DetectorScore]:
    """Every detector's scores for the batch, one detector after the other."""
    return [score for detector in detectors for score in detector.score(frames, texts)]


def _check(scores: list[DetectorScore], frames: FrameBatch, name: str) -> None:
    if len(scores) != len(frames):
        raise ValueError(f"{name} returned {len(scores)} scores for {len(frames)} frames")
    for s in scores:
        if s.score is not None and not 0.0 <= s.score <= 1.0:
            raise ValueError(f"{name} returned score {s.score} outside [0, 1]")


def _square_blob(images: np.ndarray) -> tuple[np.ndarray, int]:
    """nudenet's input for RGB uint8 [N,H,W,3]: each padded with black to a square at the bottom right,
    resized to 320x320, scaled to [0, 1], as float32 BGR [N,3,320,320]; and the square's side."""
    height, width = images.shape[1:3]
    side = max(height, width)
    blob = np.empty((len(images), _NUDENET_SIZE, _NUDENET_SIZE, 3), np.float32)
    for i, image in enumerate(images):
        # BGR: nudenet's own pre-processing swaps channels twice (cvtColor RGBA2BGR on a 3-channel image,
        # then blobFromImage's swapRB), so the model it ships is run on BGR; scores match nudenet's only so.
        square = cv2.copyMakeBorder(image[..., ::-1], 0, side - height, 0, side - width, cv2.BORDER_CONSTANT)
        blob[i] = cv2.resize(square, (_NUDENET_SIZE, _NUDENET_SIZE), interpolation=cv2.INTER_LINEAR)
    blob *= 1.0 / 255.0
    return np.ascontiguousarray(blob.transpose(0, 3, 1, 2)), side


def _fuzzy(term: str, words: list[str], ratio: float) -> bool:
    """True if some run of as many words as ``term`` has is within ``ratio`` of it (difflib)."""
    n = term.count(" ") + 1
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(term)
    for i in range(len(words) - n + 1):
        matcher.set_seq1(" ".join(words[i : i + n]))
        if matcher.real_quick_ratio() >= ratio and matcher.quick_ratio() >= ratio and matcher.ratio() >= ratio:
            return True
    return False


def _has_cashtag(text: str) -> bool:
    """A $handle that is not a stock ticker: tickers are written in capitals and have at most 5 letters."""
    return any(not (m.group(1).isupper() and len(m.group(1)) <= 5) for m in _CASHTAG.finditer(text))


def _unit(v: float) -> float:
    return min(max(float(v), 0.0), 1.0)
