"""The source's side of the DAG on Ray: `RayIngest`, the ingest backend that passes a segment through the stage
actors (pipelines/ray/dag.py) and tells when its write is durable, and `SourceActor`, which runs a
`KafkaSegmentSource` over it.

Every call passes ObjectRefs straight on, so frames never travel back to the source. The ordered steps
(memory write, standing queries, moderation) get the stream's earlier segments' steps and check them
(`require_predecessor`), so a retried segment never overtakes its stream.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from operators.frames import SegmentInfo
from pipelines import metrics
from pipelines.config import LivelensConfig
from pipelines.ray.dag import PipelineHandles, find_stages
from pipelines.ray.placement import actor_options, named_actor, shard
from pipelines.ray.runtime import setup_logging
from pipelines.ray.supervision import settle, supervised


@dataclass(frozen=True, eq=False)
class SegmentRefs:
    """A segment's handle in the DAG: its last step (``done``: moderation's screening when moderation is on),
    and the steps its stream's next segment must wait for (its encoding, its memory write, its standing-query
    evaluation, and ``done``)."""

    done: Any
    encoded: Any
    written: Any
    evaluated: Any


class RayIngest:
    """The source's view of the DAG: submit a segment, learn when its write is durable."""

    def __init__(self, handles: PipelineHandles, *, pixel_mode: bool = False, settings: Any = None):
        self.h = handles
        self.pixel_mode = pixel_mode
        self.settings = settings  # pipelines.stream_state.StreamSettings: per-stream sampling; None: none
        self._next_decoder = 0

    def submit(self, info: SegmentInfo, payload: bytes, *, after: Sequence[SegmentRefs] = ()) -> SegmentRefs:
        own_fps = self.settings.sample_fps(info.tenant_id, info.stream_id) if self.settings else None
        if own_fps is not None:
            info = dataclasses.replace(info, sample_fps=own_fps)
        decoder = self.h.decoders[self._next_decoder % len(self.h.decoders)]
        self._next_decoder += 1
        stream = f"{info.tenant_id}/{info.stream_id}"
        frames = decoder.decode.remote(info, payload)
        encoder = self.h.encoders[shard(stream, len(self.h.encoders))]
        # The ordered steps get the earlier segments' steps nested in a list: Ray passes them unresolved, so the
        # step checks them (require_predecessor) instead of failing with a predecessor's own error. The
        # encoder, an asyncio actor, would otherwise take a stream's segments in the order their decodes end.
        encoded_after = [a.encoded for a in after] or None
        if self.h.compressors:
            features = encoded = encoder.encode.remote(frames, after=encoded_after)
            # Pixel-mode drop compares frame patches, so the compressor then gets the frames as well.
            compressed = self.h.compressors[shard(stream, len(self.h.compressors))].compress.remote(
                features, frames if self.pixel_mode else None)
        else:  # encode.fused: the encoder compresses on its device
            compressed = encoded = encoder.encode_compress.remote(frames, after=encoded_after)
        texts = self.h.ocr[shard(stream, len(self.h.ocr))].read.remote(frames) if self.h.ocr else None
        transcript = (self.h.transcripts[shard(stream, len(self.h.transcripts))].read.remote(frames)
                      if self.h.transcripts else None)
        written = self.h.memory_for(info.tenant_id).write.remote(
            compressed, texts, False, transcript, after=[a.written for a in after] or None)
        # Standing queries see a segment once it is durable; the source's commit waits for their alerts.
        evaluated = self.h.standing[shard(stream, len(self.h.standing))].evaluate.remote(
            written, compressed, texts, transcript, after=[a.evaluated for a in after] or None)
        done = evaluated
        if self.h.moderators:  # moderation too, in stream order per room (pipelines/moderation/moderator.py)
            done = self.h.moderators[shard(stream, len(self.h.moderators))].screen.remote(
                done, frames, texts, [compressed], transcript, after=[a.done for a in after] or None)
        return SegmentRefs(done, encoded, written, evaluated)

    def wait(self, handles: list[SegmentRefs], timeout_s: float) -> list[SegmentRefs]:
        by_ref = {h.done: h for h in handles}
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=timeout_s, fetch_local=False)
        return [by_ref[r] for r in ready]

    def result(self, handle: SegmentRefs):
        """The write's result; StageError for bad input, DependencyUnavailable for a dependency away (Redis,
        Kafka, an actor); anything else is a crash of our code (pipelines/failures.py)."""
        return settle(handle.done)


@ray.remote(max_restarts=-1, max_concurrency=4)
class SourceActor:
    """Runs a KafkaSegmentSource in a thread from its constructor, so a restarted actor resumes by itself."""

    def __init__(self, config: LivelensConfig, source_id: str):
        metrics.configure(config.metrics)
        from pipelines.ingest.source import KafkaSegmentSource
        from pipelines.redis_io import redis_client
        from pipelines.stream_state import StreamSettings

        setup_logging()
        ingest = RayIngest(find_stages(config), pixel_mode=config.drop.mode == "pixel",
                           settings=StreamSettings(redis_client(config.redis), config.streams.state_ttl_s))
        self.source = KafkaSegmentSource(config, ingest, source_id=source_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=source_id, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        supervised(self.source.run, self._stop, "source loop")

    def stats(self) -> dict[str, Any]:
        return {**self.source.stats.as_dict(), "alive": self._thread.is_alive()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def start_sources(config: LivelensConfig, *, detached: bool = False) -> list:
    ns = config.ray.namespace
    return [named_actor(SourceActor, f"source-{i}", ns, detached, actor_options(config, "source"), config, f"source-{i}")
            for i in range(config.pipeline.sources)]
