"""Backfill: put recorded files into memory through the live ingest operators, resumably, faster than real time.

One code path with live ingest. A file is cut by `iter_segments` into the very
segments a publisher sends; each gets the SegmentInfo the live source builds
(the publisher's header through `pipelines.ingest.source.segment_info`), then runs
decode -> encode -> compress (+ OCR) -> `MemoryStore.write`, the operators the
Ray actors wrap. Same segments, same SegmentInfo, same operators: memory after a
backfill holds the frame keys, masks and (within float tolerance: encoder
batches are composed differently) embeddings that live ingest of the file would.

Speed: segments are decoded in worker processes (`operators.parallel_decode`,
keyframe-aligned because segments start at keyframes) while this process
encodes; the encoder takes frames of consecutive segments in batches of up to
``encode.batch_frames``. The compressor and the OCR reader keep per-stream state,
so they, and the memory writes, see segments strictly in order.

Resume: a manifest per (tenant, stream, file) in Redis, next to the memory it
describes (a JSON file under data_dir could claim segments whose memory was lost
with a wiped Redis, or miss ones a second machine backfilled). It holds the
number of leading segments completed (segments complete strictly in order, so
the completed seqs are exactly 0..next_seq-1) and the state of the per-stream
stages after the last of them (compressor, OCR reader and, with
``cache.skip_frames``, the frame skipper), written in one HSET after each
segment's memory write. The frame skipper's state is needed: a frame is skipped
by comparing it with the stream's last encoded frame, which may lie in an
earlier segment, and a skipped frame stores that frame's features; restarted
empty, the first frame after the resume point would be encoded instead.
Segments of a stream are planned in order even inside one encoder batch
(`FrameSkipper.plan_all`), so batches starting at another segment after a
resume plan exactly as the uninterrupted run did. A rerun skips the completed
prefix without decoding it and restores that state, so it continues exactly as
an uninterrupted run would: the first frame after the resume point is compared
with its real predecessor instead of being kept whole. A crash between a memory write and its manifest
update redoes that one segment; the write is then a no-op (idempotent per
segment).

Bad input is handled as live ingest handles it: a segment whose stage raises
StageError is logged, counted in `BackfillSummary.dead_letters` by code and
passed (there is no dead-letters topic to send it to; `livelens replay`, which
reads a topic, sends them to one through ``on_dead_letter``).

Sources: files, or http(s) URLs streamed through PyAV (the segmenter's network
options and timeouts). A URL's manifest fingerprint is the URL plus the
server's ETag, Last-Modified and Content-Length, whichever it sends.

`Backfill.process` is the chain on its own, fed (info, decoded) pairs in stream
order; `pipelines.ingest.replay` drives it from a Kafka topic with ``replace=True``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from memory_store import keys
from memory_store.service import MemoryStore
from operators.frames import (
    CompressedBatch,
    FrameBatch,
    SegmentInfo,
    StageError,
    tag_stage,
)
from operators.parallel_decode import ParallelDecoder
from pipelines.config import LivelensConfig
from pipelines.ingest.chain import OperatorChain
from pipelines.ingest.recordings import (
    BackfillError,
    assumed_start_time,
    file_start_time,
    is_url,
    media_duration_s,
    source_fingerprint,
    source_name,
)
from pipelines.ingest.sidecars import Sidecars
from pipelines.ingest.snapshots import pack, unpack
from pipelines.ingest.source import segment_info
from pipelines.kafka.publish import (
    segment_header,  # the publisher's own header: SegmentInfo exactly as live
)
from pipelines.segmenter import (
    MediaSegment,
    iter_segments,
)

log = logging.getLogger(__name__)

_MANIFEST_VERSION = 3  # 2: boundary detector state; 3: one "state" field, the operator chain's snapshot


@dataclass(frozen=True)
class BackfillJob:
    """One file (a Path) or http(s) URL (a str), stored as one stream.

    wallclock_start: wall-clock time of the file's first frame (timezone-aware). None: the file's
        ``creation_time`` metadata or, when it has none (most archives), ``assumed_start_time``, with a warning.
    """

    source: Path | str
    stream_id: str
    tenant_id: str = "default"
    wallclock_start: datetime | None = None


@dataclass
class BackfillSummary:
    """What a run did. Skipped segments (completed by an earlier run) count only in ``segments_skipped``."""

    files: int = 0
    segments: int = 0
    segments_skipped: int = 0
    segments_replayed: int = 0  # processed, but memory already held them (a crash after the write)
    dead_letters: dict[str, int] = field(default_factory=dict)
    stream_seconds: float = 0.0
    wall_seconds: float = 0.0
    frames: int = 0
    tokens_kept: int = 0
    bytes_written: int = 0  # embeddings, kept tokens and positions, thumbnails: the payload, not Redis overhead

    @property
    def speedup(self) -> float:
        """Stream seconds processed per wall second: above 1 is faster than real time."""
        return self.stream_seconds / self.wall_seconds if self.wall_seconds else 0.0


# -- the manifest ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Resume:
    next_seq: int
    next_media_s: float
    state: dict[str, dict[str, Any]]  # OperatorChain.snapshot() after the last finished segment


class Manifest:
    """Progress of one (tenant, stream, file) backfill, a Redis hash in the tenant's hash slot.

    fingerprint: the file (path, size, mtime) and the configuration that shapes what is stored;
        a manifest with another fingerprint is refused, never silently reused or discarded.
    """

    def __init__(self, client: redis.Redis, job: BackfillJob, fingerprint: str):
        self.r = client
        source = job.source if is_url(job.source) else str(Path(job.source).resolve())
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        self.key = keys.backfill_manifest(job.tenant_id, job.stream_id, digest)
        self.fingerprint = fingerprint

    def load(self) -> _Resume | None:
        """Where an earlier run stopped; None when none started."""
        found = self.r.hgetall(self.key)
        if not found:
            return None
        if int(found[b"version"]) != _MANIFEST_VERSION or found[b"fingerprint"].decode() != self.fingerprint:
            raise BackfillError(f"backfill manifest {self.key} was written for another version of the file or "
                                f"another configuration; delete it (redis-cli DEL '{self.key}') to start over. "
                                "Segments already in memory are kept: their writes are skipped as replays")
        return _Resume(int(found[b"next_seq"]), float(found[b"next_media_s"]), unpack(found[b"state"]))

    def complete(self, info: SegmentInfo, state: dict[str, dict[str, Any]]) -> None:
        """Record segment ``info.seq`` (and so every earlier one) as done, with the operator chain's state after
        it (whatever each stateful step's snapshot returned). One HSET: atomic."""
        self.r.hset(self.key, mapping={
            "version": _MANIFEST_VERSION, "fingerprint": self.fingerprint, "next_seq": info.seq + 1,
            "next_media_s": info.media_start_s + info.duration_s, "state": pack(state), "updated_at": time.time()})


# -- progress ----------------------------------------------------------------------------------


class _SpeedColumn(ProgressColumn):
    """Stream seconds per wall second ("x real time"): the number that says whether backfill keeps up."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:5.1f}x real time" if task.speed else "   - x real time", style="progress.data.speed")


class _SecondsColumn(ProgressColumn):
    """Stream seconds done, of the total when the container states its duration."""

    def render(self, task: Task) -> Text:
        total = f"/{task.total:.0f}" if task.total is not None else ""
        return Text(f"{task.completed:>6.0f}{total} s", style="progress.download")


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), _SecondsColumn(), _SpeedColumn(),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


# -- the run -----------------------------------------------------------------------------------


class Backfill:
    """Backfills files into ``store`` through the live operators.

    workers: decoder processes. Decode is the expensive stage on a CPU; one worker already
        overlaps decode with encoding, more decode several segments at once.
    progress: show rich progress bars (per file and overall) on stderr.
    replace: write with ``MemoryStore.write(replace=True)``: a segment memory holds is replaced by
        this run's version instead of kept (a rebuild after a model or threshold change); a stream's
        first segment (seq 0) first purges everything memory holds of the stream (`MemoryStore.purge_stream`).
    on_dead_letter: also called with each segment that failed on bad input (after it is counted).
    """

    def __init__(self, config: LivelensConfig, store: MemoryStore, *, workers: int, progress: bool = True,
                 replace: bool = False, on_dead_letter: Callable[[SegmentInfo, StageError], None] | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.config = config
        self.store = store
        self.workers = workers
        self.show_progress = progress
        self.replace = replace
        self.on_dead_letter = on_dead_letter
        # The steps the live actors run, built by the same code, so backfill stores what live ingest would.
        self._chain = OperatorChain.build(config)
        self._sidecars = Sidecars()  # subtitle files beside the recordings (pipelines/ingest/sidecars.py)
        # What shapes stored memory (not batch sizes or waits): a change makes old manifests invalid.
        shaping = {"decode": config.decode.model_dump(), "encode_model": self._chain.visual.encoder.model_name,
                   "encode_dtype": config.encode.dtype, "compress": config.compress.model_dump(),
                   "ocr": config.ocr.model_dump(), "cache": config.cache.model_dump(),
                   "drop": config.drop.model_dump(), "prune": config.prune.model_dump() if config.prune else None,
                   "boundaries": config.boundaries.model_dump(), "transcript": config.transcript.model_dump()}
        self._config_digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]

    def run(self, jobs: Sequence[BackfillJob]) -> BackfillSummary:
        """Backfill every job's file in turn; returns the totals. Jobs must be distinct streams."""
        streams = [(job.tenant_id, job.stream_id) for job in jobs]
        if len(set(streams)) != len(streams):
            raise ValueError("two jobs name the same stream: a stream's segment numbers start at 0 in each file")
        for job in jobs:
            if not is_url(job.source) and not Path(job.source).is_file():
                raise BackfillError(f"{job.source}: not a file")
        durations = [media_duration_s(job.source) for job in jobs]
        # Fail (or warn) before any work.
        starts = [job.wallclock_start or file_start_time(job.source) or assumed_start_time(job.source, duration)
                  for job, duration in zip(jobs, durations)]
        for job, start in zip(jobs, starts):
            if start.tzinfo is None:
                raise BackfillError(f"{job.source}: wallclock_start must be timezone-aware, got {start}")
        summary = BackfillSummary()
        started = time.perf_counter()
        with _progress(self.show_progress) as progress, \
                ParallelDecoder(self.config.decode, workers=self.workers) as decoder:
            known = [d for d in durations if d is not None]
            overall = progress.add_task("all files", total=sum(known) if len(known) == len(durations) else None)
            for job, start, duration in zip(jobs, starts, durations):
                self._run_file(job, start, duration, decoder, progress, overall, summary)
                summary.files += 1
        summary.wall_seconds = time.perf_counter() - started
        return summary

    def _run_file(self, job: BackfillJob, start: datetime, duration: float | None, decoder: ParallelDecoder,
                  progress: Progress, overall: TaskID, summary: BackfillSummary) -> None:
        fingerprint = f"{source_fingerprint(job.source)}|{self._config_digest}"
        manifest = Manifest(self.store.tier.r, job, fingerprint)
        resume = manifest.load()
        key = (job.tenant_id, job.stream_id)
        self._forget(key)
        next_seq, done_s = 0, 0.0
        if resume is not None:
            next_seq, done_s = resume.next_seq, resume.next_media_s
            # Holds only this stream: every file's state is forgotten when the file is done.
            try:
                self._chain.restore(resume.state)
            except ValueError as exc:
                raise BackfillError(f"{manifest.key}: {exc}") from None
            log.info("%s: resuming at segment %d (%.1f s)", job.source, next_seq, done_s)
        task = progress.add_task(source_name(job.source), total=duration, completed=done_s)
        overall_total = next(t.total for t in progress.tasks if t.id == overall)
        if overall_total is not None:  # the overall bar counts this run's work: its rate must not include skips
            progress.update(overall, total=overall_total - done_s)

        self._sidecars.load(job.tenant_id, job.stream_id, job.source)

        def pending() -> Iterator[tuple[SegmentInfo, bytes]]:
            for media in iter_segments(str(job.source)):
                if media.seq < next_seq:
                    summary.segments_skipped += 1
                    continue
                yield _info(media, job, start), media.payload

        last: list[SegmentInfo] = []

        def done(info: SegmentInfo) -> None:
            last[:] = [info]
            summary.stream_seconds += info.duration_s
            progress.advance(task, info.duration_s)
            progress.advance(overall, info.duration_s)

        def checkpoint(info: SegmentInfo) -> None:
            manifest.complete(info, self._chain.snapshot())

        try:
            self.process(decoder.decode(pending()), summary, done, checkpoint)
            if last and self._chain.transcriber is not None:
                # The recording ended: captions still on screen end with it (live ingest stores them when
                # they leave the screen).
                self.store.write_transcript(last[0], self._chain.transcriber.flush(*key))
        finally:
            self._forget(key)
        progress.update(task, visible=False)

    def process(self, decoded: Iterable[tuple[SegmentInfo, FrameBatch | StageError]], summary: BackfillSummary,
                done: Callable[[SegmentInfo], None],
                checkpoint: Callable[[SegmentInfo], None] | None = None) -> None:
        """Encode, compress, read and store decoded segments, given in stream order (several streams may
        interleave); ``done(info)`` follows each segment's write or dead letter, in the same order.

        Segments go through the encoder (and compressor) in groups of up to ``encode.batch_frames`` frames, so
        the chain's state is the state after a segment only at a group's end: ``checkpoint(info)`` is called
        there, with the group's last segment (a resume redoes at most one group; writes are idempotent)."""
        group: list[tuple[SegmentInfo, FrameBatch | StageError]] = []
        frames = 0
        for info, result in decoded:
            size = len(result) if isinstance(result, FrameBatch) else 0
            # Batches of at most batch_frames (a larger segment goes alone): the encoder's own chunk size.
            if group and frames + size > self.config.encode.batch_frames:
                self._process(group, summary, done, checkpoint)
                group, frames = [], 0
            group.append((info, result))
            frames += size
        if group:
            self._process(group, summary, done, checkpoint)

    def _forget(self, key: tuple[str, str]) -> None:
        """Per-stream state starts empty for each file (a resumed one is restored from its manifest)."""
        self._chain.forget(*key)
        self._sidecars.forget(*key)

    def _process(self, group: list[tuple[SegmentInfo, FrameBatch | StageError]], summary: BackfillSummary,
                 done: Callable[[SegmentInfo], None], checkpoint: Callable[[SegmentInfo], None] | None) -> None:
        """Encode and compress a group's frames in one batch, then read and write each segment in order."""
        decoded = [result for _, result in group if isinstance(result, FrameBatch)]
        compressed: dict[int, CompressedBatch | StageError]
        try:
            processed = self._chain.visual.process(decoded)
            compressed = {batch.segment.seq: out for batch, out in zip(decoded, processed)}
        except StageError as exc:  # as in the encoder actor: a failed batch fails every segment in it
            exc.stage = exc.stage or "encode"
            compressed = {batch.segment.seq: exc for batch in decoded}
        frames_of = {batch.segment.seq: batch for batch in decoded}
        for info, result in group:
            outcome = result if isinstance(result, StageError) else compressed[info.seq]
            if isinstance(outcome, StageError):
                self._dead_letter(info, outcome, summary)
            else:
                self._store(frames_of[info.seq], outcome, summary)
            summary.segments += 1
            done(info)
        if checkpoint is not None:
            checkpoint(group[-1][0])

    def _store(self, frames: FrameBatch, compressed: CompressedBatch, summary: BackfillSummary) -> None:
        try:
            reader = self._chain.reader
            texts = tag_stage("ocr", reader.read, frames) if reader is not None else None
            transcript = None
            if self._chain.transcriber is not None:
                frames.subtitles.extend(self._sidecars.lines_of(frames.segment))
                transcript = tag_stage("transcript", self._chain.transcriber.read, frames)
            if self.replace and frames.segment.seq == 0:
                # A stream rebuilt from its first segment starts from nothing, so memory ends exactly as a
                # fresh ingest leaves it, events included (replacing segment by segment would keep the events
                # built from the old version). Here, in write order, so no earlier write can land after it.
                self.store.purge_stream(frames.segment.tenant_id, frames.segment.stream_id)
            write = functools.partial(self.store.write, replace=True) if self.replace else self.store.write
            written = tag_stage("memory", functools.partial(write, transcript=transcript), compressed, texts)
        except StageError as exc:
            self._dead_letter(frames.segment, exc, summary)
            return
        if written is None:
            summary.segments_replayed += 1
            return
        summary.frames += len(compressed)
        summary.tokens_kept += int(compressed.kept.sum())
        summary.bytes_written += _stored_bytes(compressed)

    def _dead_letter(self, info: SegmentInfo, exc: StageError, summary: BackfillSummary) -> None:
        summary.dead_letters[exc.code] = summary.dead_letters.get(exc.code, 0) + 1
        log.warning("%s/%s segment %d: %s at %s: %s", info.tenant_id, info.stream_id, info.seq, exc.code,
                    exc.stage or "?", exc.reason)
        if self.on_dead_letter is not None:
            self.on_dead_letter(info, exc)


def _info(media: MediaSegment, job: BackfillJob, start: datetime) -> SegmentInfo:
    return segment_info(segment_header(media, stream_id=job.stream_id, tenant_id=job.tenant_id, start=start))




def _stored_bytes(batch: CompressedBatch) -> int:
    kept = int(batch.kept.sum())
    # Tokens are stored as float16 and positions as int16 (memory_store.records).
    return batch.embedding.nbytes + kept * batch.tokens.shape[1] * 2 + kept * 2 + sum(map(len, batch.thumbnails))
