"""The ingest DAG as Ray actors: thin wrappers around the operators, and its assembly.

    KafkaSegmentSource ──► Decode ──► Encode (batched across streams) ──► Compress ──► Memory ──► Standing queries
                              └──────► OCR (on-screen text, re-read where the picture changed) ──┘
    With encode.fused (the default on CUDA) the encoder compresses too, on its device: no compress actors.

Placement follows state: a stream's segments always go to the same compressor
(its previous-frame tokens live there) and a tenant's writes to the same memory
shard (its FAISS index lives there); decoders and encoders are stateless and
shared. Every call passes ObjectRefs straight on, so frames never travel back
to the source. Actor tasks from one submitter run in submission order, which
keeps a stream's segments in order at its compressor.

Each actor restarts when it dies (max_restarts=-1) and its in-flight calls are
retried (max_task_retries): at-least-once, safe because memory writes are
idempotent per segment.

The media stages are here; the memory shard is in pipelines/ray/memory.py and the
standing-query evaluator in pipelines/ray/standing.py.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from operators.frames import (
    CompressedBatch,
    FeatureBatch,
    FrameBatch,
    SegmentInfo,
    StageError,
    tag_stage,
)
from pipelines import metrics
from pipelines.config import LivelensConfig
from pipelines.ray.memory import MemoryActor
from pipelines.ray.placement import actor_options, memory_shard, named_actor
from pipelines.ray.standing import StandingActor
from pipelines.ray.supervision import RESTART
from pipelines.redis_io import redis_client

def stream_states(config: LivelensConfig, step, stage: str):
    """The bound on an actor's per-stream state, evicted streams' state kept in Redis for their return
    (pipelines/ingest/idle.py)."""
    from pipelines.ingest.idle import StreamStates
    from pipelines.ingest.snapshots import EvictedStates

    ttl_s = config.pipeline.evicted_state_ttl_s
    kept = EvictedStates(redis_client(config.redis), stage, ttl_s) if ttl_s > 0 else None
    return StreamStates(step, idle_s=config.pipeline.stream_idle_s, max_streams=config.pipeline.max_streams_per_actor,
                        kept=kept)


@ray.remote(**RESTART)
class DecodeActor:
    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        from operators.decode import SegmentDecoder

        self.decoder = SegmentDecoder(config.decode, frame_px=config.decode.frame_px)

    def decode(self, info: SegmentInfo, payload: bytes) -> FrameBatch:
        call = metrics.StageCall("decode", info)
        return call.done(tag_stage("decode", self.decoder.decode, info, payload))


@ray.remote(**RESTART)
class EncodeActor:
    """Batches frames of many concurrent calls (many streams) into one forward pass.

    Calls wait at most `max_batch_wait_ms` for company; a full batch goes at once.
    The model runs in a worker thread so the event loop keeps collecting the next batch.
    With `encode.fused` (the default on CUDA) it also compresses, on the encoder's device
    (`encode_compress`): the streams' compression state then lives here and no compress actor runs.
    """

    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        from pipelines.ingest.chain import EncodeStep, FusedEncodeCompress

        self.config = config.encode
        # Streams are sharded to encoders by a stable hash, so each stream's skip (or compression) state lives here.
        self.fused = config.fused_encode
        self.step = FusedEncodeCompress.build(config) if self.fused else EncodeStep.build(config)
        self.encoder = self.step.encoder
        self.skipper = None if self.fused else self.step.skipper
        self.streams = stream_states(config, self.step, "encode")
        self._queue: list[tuple[FrameBatch, asyncio.Future]] = []
        self._wakeup: asyncio.Event | None = None
        self._runner: asyncio.Task | None = None

    async def encode(self, batch: FrameBatch, after: list | None = None) -> FeatureBatch:
        """A segment's features (`encode.fused` off: a compress actor comes next). ``after``: as in
        `encode_compress`."""
        if self.fused:
            raise RuntimeError("this encoder compresses too (encode.fused): call encode_compress")
        return await self._batched(batch, after)

    async def encode_compress(self, batch: FrameBatch, after: list | None = None) -> CompressedBatch:
        """What memory stores of a segment, boundaries marked (`encode.fused`). ``after``: the encodings of the
        stream's earlier segments still in flight, which go first."""
        if not self.fused:
            raise RuntimeError("this encoder does not compress (encode.fused off): call encode")
        compressed = await self._batched(batch, after)
        metrics.tokens(compressed)
        return compressed

    async def _batched(self, batch: FrameBatch, after: list | None):
        # Ray runs an asyncio actor's calls as their arguments arrive, so a segment whose decode ended first
        # would reach the stream's state (frame skip, compression, boundaries) before its predecessor: it waits
        # for them here, on the event loop, whatever became of them (a failed one is no obstacle).
        if after:
            await asyncio.gather(*after, return_exceptions=True)
        if self._runner is None:
            self._wakeup = asyncio.Event()
            self._runner = asyncio.get_running_loop().create_task(self._run())
        call = metrics.StageCall("encode", batch.segment, len(batch))
        future = asyncio.get_running_loop().create_future()
        self._queue.append((batch, future))
        self._wakeup.set()
        return call.done(await future)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            if sum(len(b) for b, _ in self._queue) < self.config.batch_frames:
                await asyncio.sleep(self.config.max_batch_wait_ms / 1000)
            taken, frames = [], 0
            while self._queue and (not taken or frames + len(self._queue[0][0]) <= self.config.batch_frames):
                item = self._queue.pop(0)
                taken.append(item)
                frames += len(item[0])
            if not self._queue:
                self._wakeup.clear()
            try:
                results = await asyncio.to_thread(self._encode, [b for b, _ in taken])
            except Exception as exc:  # one bad batch fails its callers, not the actor
                if isinstance(exc, StageError):
                    exc.stage = exc.stage or "encode"
                for _, future in taken:
                    future.set_exception(exc)
                continue
            for (_, future), result in zip(taken, results):
                if isinstance(result, StageError):  # fused: one segment's bad input (its boundaries)
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _encode(self, batches: list[FrameBatch]) -> list:
        for batch in batches:
            self.streams.seen(batch.segment.tenant_id, batch.segment.stream_id)
        before, started = self._skipped(), time.perf_counter()
        out = self.step.process(batches) if self.fused else self.step.encode(batches)
        skipped = metrics.frames_skipped(before, self._skipped())
        metrics.encoder_batch(sum(len(b) for b in batches) - skipped, time.perf_counter() - started)
        return out

    def _skipped(self) -> dict[tuple[str, str], int]:
        return {key: s.frames_skipped for key, s in self.skipper.stats().items()} if self.skipper else {}

    def cache_stats(self) -> dict[str, dict]:
        """Per "tenant/stream": frames seen and skipped (frame skip), the fraction of token rows the ViT
        recomputed (token cache; 1.0 without it), encoder seconds spent and, estimated from the stream's own
        seconds per encoded frame, seconds saved by skipping."""
        skipped = self.skipper.stats() if self.skipper else {}
        out = {}
        for key, enc in self.encoder.stats().items():
            skip = skipped.get(key)
            per_frame = enc.seconds / enc.frames if enc.frames else 0.0
            out["/".join(key)] = dict(
                frames_seen=skip.frames_seen if skip else enc.frames,
                frames_skipped=skip.frames_skipped if skip else 0,
                token_fraction=round(enc.token_fraction, 4),
                encode_s=round(enc.seconds, 3),
                skip_saved_s=round((skip.frames_skipped if skip else 0) * per_frame, 3))
        return out

    def embed_text(self, texts: list[str]):
        return self.encoder.embed_text(texts)

    def embed_images(self, images):
        return self.encoder.embed_images(images)

    def encode_images(self, images):
        return self.encoder.encode_images(images)

    def describe(self) -> dict[str, Any]:
        e = self.encoder
        return dict(model=e.model_name, kind=e.kind, embedding_dim=e.embedding_dim, token_dim=e.token_dim,
                    tokens_per_frame=e.tokens_per_frame, has_text_tower=e.has_text_tower)


@ray.remote(**RESTART)
class CompressActor:
    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        from pipelines.ingest.chain import CompressStep

        # Per-stream state (the compressor's, the boundary detector's): streams are sharded here by a stable
        # hash, in order.
        self.step = CompressStep.build(config)
        self.streams = stream_states(config, self.step, "compress")

    def compress(self, batch: FeatureBatch, frames: FrameBatch | None = None) -> CompressedBatch:
        call = metrics.StageCall("compress", batch.segment, len(batch))
        self.streams.seen(batch.segment.tenant_id, batch.segment.stream_id)
        marked = self.step.compress(batch, frames)
        metrics.tokens(marked)
        return call.done(marked)


@ray.remote(**RESTART)
class OcrActor:
    """On-screen text of each frame; keeps per-stream state (the last read frame), so sharded by stream."""

    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        from operators.ocr import LiveDeadline, ScreenTextReader

        self.reader = ScreenTextReader(config.ocr)
        self.streams = stream_states(config, self.reader, "ocr")
        # Live segments only come here (backfill and replay read in their own chain), so shedding is safe here.
        self.deadline = LiveDeadline(config.ocr.max_lag_s) if config.ocr.max_lag_s is not None else None

    def read(self, batch: FrameBatch):
        call = metrics.StageCall("ocr", batch.segment, len(batch))
        self.streams.seen(batch.segment.tenant_id, batch.segment.stream_id)
        texts = tag_stage("ocr", self.reader.read, batch, self.deadline)
        metrics.ocr_unread(batch.segment, sum(text.unread for text in texts))
        return call.done(texts)


@ray.remote(**RESTART)
class TranscriptActor:
    """What was said in each segment: captions, subtitles and (``transcript.asr``) speech, embedded
    (operators/transcribe.py). Caption rows outlive segments, so it keeps per-stream state: sharded by stream."""

    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        from pipelines.ingest.chain import transcriber

        self.step = transcriber(config)
        self.streams = stream_states(config, self.step, "transcript")

    def read(self, batch: FrameBatch):
        call = metrics.StageCall("transcript", batch.segment, len(batch))
        self.streams.seen(batch.segment.tenant_id, batch.segment.stream_id)
        transcript = tag_stage("transcript", self.step.read, batch)
        return call.done(transcript, frames=len(transcript))  # lines, for this stage


@dataclass
class PipelineHandles:
    decoders: list
    encoders: list
    compressors: list
    ocr: list
    memory: list
    standing: list
    moderators: list = field(default_factory=list)  # empty unless moderation.enabled
    transcripts: list = field(default_factory=list)  # empty unless transcript.enabled
    verifiers: list = field(default_factory=list)

    def memory_for(self, tenant_id: str):
        return self.memory[memory_shard(tenant_id, len(self.memory))]


def _ocr_count(config: LivelensConfig) -> int:
    return config.pipeline.ocr_readers if config.ocr.enabled else 0


def compressor_count(config: LivelensConfig) -> int:
    """Compress actors: none when the encoders compress (`encode.fused`)."""
    return 0 if config.fused_encode else config.pipeline.compressors


def _transcript_count(config: LivelensConfig) -> int:
    return config.pipeline.transcript_readers if config.transcript.enabled else 0


def start_stages(config: LivelensConfig, *, detached: bool = False) -> PipelineHandles:
    """Create (or find, when already running) the stage actors, named so any process can reach them."""
    ns, p = config.ray.namespace, config.pipeline

    def place(stage):  # the stage's num_cpus / num_gpus / custom resources (pipelines/ray/placement.py)
        return actor_options(config, stage)

    from pipelines.ray.moderation import start_moderation

    # Their actors are named "<stage>-<i>": moderate-0.., verify-0.
    moderators, verifiers = start_moderation(
        config, lambda cls, name, *args: named_actor(cls, name, ns, detached, place(name.rsplit("-", 1)[0]), *args))
    return PipelineHandles(
        decoders=[named_actor(DecodeActor, f"decode-{i}", ns, detached, place("decode"), config) for i in range(p.decoders)],
        encoders=[named_actor(EncodeActor, f"encode-{i}", ns, detached, place("encode"), config) for i in range(p.encoders)],
        compressors=[named_actor(CompressActor, f"compress-{i}", ns, detached, place("compress"), config)
                     for i in range(compressor_count(config))],
        ocr=[named_actor(OcrActor, f"ocr-{i}", ns, detached, place("ocr"), config) for i in range(_ocr_count(config))],
        memory=[named_actor(MemoryActor, f"memory-{i}", ns, detached, place("memory"), config, i)
                for i in range(config.memory.shards)],
        standing=[named_actor(StandingActor, f"standing-{i}", ns, detached, place("standing"), config)
                  for i in range(p.standing_evaluators)],
        moderators=moderators, verifiers=verifiers,
        transcripts=[named_actor(TranscriptActor, f"transcript-{i}", ns, detached, place("transcript"), config)
                     for i in range(_transcript_count(config))],
    )


def find_stages(config: LivelensConfig) -> PipelineHandles:
    ns, p = config.ray.namespace, config.pipeline

    def get(name):
        return ray.get_actor(name, namespace=ns)

    return PipelineHandles(
        decoders=[get(f"decode-{i}") for i in range(p.decoders)],
        encoders=[get(f"encode-{i}") for i in range(p.encoders)],
        compressors=[get(f"compress-{i}") for i in range(compressor_count(config))],
        ocr=[get(f"ocr-{i}") for i in range(_ocr_count(config))],
        memory=[get(f"memory-{i}") for i in range(config.memory.shards)],
        standing=[get(f"standing-{i}") for i in range(p.standing_evaluators)],
        moderators=[get(f"moderate-{i}") for i in range(config.moderation.moderators if config.moderation.enabled else 0)],
        transcripts=[get(f"transcript-{i}") for i in range(_transcript_count(config))],
    )
