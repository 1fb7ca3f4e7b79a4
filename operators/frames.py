"""The data that flows between stages: numpy arrays, validated once, at construction.

One segment of one stream moves through the DAG as:

    SegmentInfo + payload --decode--> FrameBatch --encode--> FeatureBatch --compress--> CompressedBatch
                                                 └--ocr--> FrameText per frame

Every batch carries its SegmentInfo so any stage can key its state by stream
and any write is idempotent on (tenant, stream, session, seq, frame pts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from contracts.messages import segment_id
from operators.transcript import TranscriptLine


class StageError(Exception):
    """Bad input a stage cannot process. ``code`` is a stable dead-letter reason code."""

    def __init__(self, code: str, reason: str, *, stage: str = ""):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.stage = stage

    def __reduce__(self):
        # Crosses process boundaries (Ray): keep code, reason and stage.
        return (_rebuild_stage_error, (self.code, self.reason, self.stage))


def _rebuild_stage_error(code: str, reason: str, stage: str) -> StageError:
    return StageError(code, reason, stage=stage)


def tag_stage(stage: str, fn, *args):
    """Run one stage's step, naming the stage on the bad-input errors it raises (for the dead letter)."""
    try:
        return fn(*args)
    except StageError as exc:
        exc.stage = exc.stage or stage
        raise


@dataclass(frozen=True)
class SegmentInfo:
    """Where a batch came from. ``wallclock_start`` is epoch seconds of the segment's first frame."""

    tenant_id: str
    stream_id: str
    seq: int
    wallclock_start: float
    media_start_s: float
    duration_s: float
    codec: str = "h264"
    container: str = "mpegts"
    # Where the segment was read from (its last record), for the memory snapshot's manifest of covered
    # offsets; "" / -1 when it came from elsewhere (backfill, tests).
    topic: str = ""
    partition: int = -1
    offset: int = -1
    # The publishing session (VideoSegment v2); "" for segments without one (v1 records, backfill).
    session: str = ""
    # Stream seconds without video before this segment (VideoSegment v3: a live source was away).
    gap_before_s: float = 0.0
    # The stream's own sampling rate (`livelens streams set --sample-fps`); None: decode.sample_fps.
    sample_fps: float | None = None

    @property
    def segment_id(self) -> str:
        """The segment's name within its stream (``session-seq``, or the seq alone without a session)."""
        return segment_id(self.session, self.seq)

    def frame_key(self, pts_s: float) -> str:
        """Stable id of one frame: replaying a segment yields the same keys, so writes are idempotent."""
        return f"{self.tenant_id}/{self.stream_id}/{self.segment_id}/{int(round(pts_s * 1000))}"


def seq_of_frame_key(frame_key: str) -> int:
    """The segment seq within its session, from a frame key (``tenant/stream/[session-]seq/ms``)."""
    return int(frame_key.rsplit("/", 2)[-2].rsplit("-", 1)[-1])


@dataclass(frozen=True)
class CaptionData:
    """The closed-caption bytes one video frame carried: CEA-708 ``cc_data`` triplets (CEA-608 inside them), as
    A53 data, at the frame's stream time. Every frame's, in presentation order, not only sampled ones."""

    pts_s: float
    data: bytes


@dataclass(frozen=True)
class AudioClip:
    """A segment's audio track for speech recognition: float32 mono 16 kHz, its first sample at ``start_s``
    (stream seconds, the clock of ``FrameBatch.pts_s``)."""

    SAMPLE_RATE = 16_000

    start_s: float
    samples: np.ndarray
    channel: str = "audio"

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.SAMPLE_RATE


@dataclass
class FrameBatch:
    """Decoded, sampled frames of one segment, and the words and sound that travelled with them.

    pts_s: seconds from the stream's start, shape [N], increasing.
    images: RGB uint8, shape [N, H, W, 3].
    thumbnails: one JPEG per frame.
    captions: the closed-caption data of every frame of the segment, decoded or not where the codec's packets are
        read for it (operators.cc_data), in presentation order (operators.captions turns it into lines).
    subtitles: the cues of the segment's text subtitle tracks, as transcript lines.
    audio: the audio track as 16 kHz mono, when decoding audio is on (``decode.audio``) and the segment has one.
    """

    segment: SegmentInfo
    pts_s: np.ndarray
    images: np.ndarray
    thumbnails: list[bytes] = field(default_factory=list)
    captions: list[CaptionData] = field(default_factory=list)
    subtitles: list[TranscriptLine] = field(default_factory=list)
    audio: AudioClip | None = None

    def __post_init__(self) -> None:
        self.pts_s = np.asarray(self.pts_s, dtype=np.float64)
        n = len(self.pts_s)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N,H,W,3], got {self.images.dtype} {self.images.shape}")
        if self.images.shape[0] != n:
            raise ValueError(f"{self.images.shape[0]} images for {n} timestamps")
        if self.thumbnails and len(self.thumbnails) != n:
            raise ValueError(f"{len(self.thumbnails)} thumbnails for {n} frames")
        if n > 1 and np.any(np.diff(self.pts_s) <= 0):
            raise ValueError("pts_s must be strictly increasing")

    def __len__(self) -> int:
        return len(self.pts_s)


@dataclass
class FeatureBatch:
    """Encoder output for the frames of one segment.

    tokens: per-frame visual tokens, shape [N, T, D] (float32 or float16); for a VLM
        these are the answer model's input embeddings (after its projector).
    embedding: one L2-normalised index vector per frame, shape [N, E], float32. With a
        dual encoder (CLIP / SigLIP) it lives in the text tower's space.
    grid: (rows, cols) of the token grid when tokens are spatial, else (1, T).
    """

    segment: SegmentInfo
    pts_s: np.ndarray
    tokens: np.ndarray
    embedding: np.ndarray
    grid: tuple[int, int]
    thumbnails: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pts_s = np.asarray(self.pts_s, dtype=np.float64)
        n = len(self.pts_s)
        if self.tokens.ndim != 3 or self.tokens.shape[0] != n:
            raise ValueError(f"tokens must be [N={n},T,D], got {self.tokens.shape}")
        if self.embedding.ndim != 2 or self.embedding.shape[0] != n:
            raise ValueError(f"embedding must be [N={n},E], got {self.embedding.shape}")
        self.embedding = np.ascontiguousarray(self.embedding, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.pts_s)


@dataclass
class CompressedBatch:
    """What memory stores for one segment.

    kept: bool mask [N, T]; True where a token survived the drop. Kept tokens keep
        their original positions: a token's index in T is its position.
    tokens: the kept tokens of all frames concatenated in (frame, position) order,
        shape [K, D] with K == kept.sum().
    drop_ratio: fraction of tokens dropped per frame, shape [N]; a free change signal.
    boundaries: bool [N]; True where a frame begins a new event (operators.boundaries). None: not
        detected (memory then starts events only at a stream's first frame and at ``max_event_s``).
    """

    segment: SegmentInfo
    pts_s: np.ndarray
    embedding: np.ndarray
    kept: np.ndarray
    tokens: np.ndarray
    drop_ratio: np.ndarray
    grid: tuple[int, int]
    thumbnails: list[bytes] = field(default_factory=list)
    boundaries: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.pts_s = np.asarray(self.pts_s, dtype=np.float64)
        n = len(self.pts_s)
        if self.boundaries is not None and (self.boundaries.dtype != np.bool_ or self.boundaries.shape != (n,)):
            raise ValueError(f"boundaries must be bool [N={n}], got {self.boundaries.dtype} {self.boundaries.shape}")
        if self.kept.dtype != np.bool_ or self.kept.ndim != 2 or self.kept.shape[0] != n:
            raise ValueError(f"kept must be bool [N={n},T], got {self.kept.dtype} {self.kept.shape}")
        if self.tokens.ndim != 2 or self.tokens.shape[0] != int(self.kept.sum()):
            raise ValueError(f"tokens {self.tokens.shape} do not match {int(self.kept.sum())} kept positions")
        if self.embedding.shape[0] != n or self.drop_ratio.shape != (n,):
            raise ValueError("embedding and drop_ratio need one row per frame")

    def __len__(self) -> int:
        return len(self.pts_s)

    def frame_tokens(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, tokens) kept for frame i."""
        counts = self.kept.sum(axis=1)
        start = int(counts[:i].sum())
        return np.flatnonzero(self.kept[i]), self.tokens[start : start + int(counts[i])]


# -- on-screen text (operators/ocr.py reads it; memory, moderation and standing queries take it) -----------
# Here, not in operators/ocr.py, so that the actors that only receive text (memory, standing queries) unpickle
# it without importing the reader's torch, transformers and onnxruntime (seconds at an actor's first call).

Box = tuple[tuple[float, float], ...]  # a line's 4 corners (x, y) in [0, 1], clockwise from top-left


@dataclass(frozen=True)
class TextLine:
    """One line of text. box: 4 corners (x, y) in [0, 1] of the frame's width and height, clockwise from top-left."""

    text: str
    confidence: float
    box: Box


@dataclass
class FrameText:
    """The text of one frame, as the OCR stage gives it.

    lines: in reading order (top to bottom, left to right).
    embedding: L2-normalised float32 [384] of ``text``; None when the frame has no text.
    reused: True when the frame was not read because its picture had not changed; lines and
        embedding are then the last read frame's (the embedding is the same read-only array).
    unread: True when the frame changed but was not read, because the live reader was behind
        (operators.ocr.LiveDeadline): its text is unknown, not empty; lines are empty and embedding is None.
    """

    pts_s: float
    lines: list[TextLine]
    embedding: np.ndarray | None
    reused: bool
    unread: bool = False

    @property
    def text(self) -> str:
        """The frame's lines, one per line of the string, in reading order: what is embedded."""
        return "\n".join(line.text for line in self.lines)
