"""Catch-up: re-read what a paused stream skipped, from the segments topic, once it is resumed.

While a stream is paused, every source records per partition the offsets of the segments it skipped
(`pipelines.stream_state.StreamStates.record_skip`, under the pause's id). `resume --catch-up` queues a job
here (in Redis, so it outlives a restart of the actor that runs it); the stream-control actor runs it once
every source has seen the resume (``not_before``): a replay (`pipelines.ingest.replay`) of exactly those
ranges, of that stream alone, with ``replace=False``, so a segment memory already holds (one a source
ingested after the resume) is not written again: the paused span is stored exactly once. Records the topic no
longer holds (its retention) are gone: the replay starts at the oldest it has and says so in the log.
"""

from __future__ import annotations

import logging
import time

import redis
from pydantic import BaseModel, ConfigDict

from memory_store import keys
from memory_store.client import MemoryClient
from pipelines.config import LivelensConfig
from pipelines.ingest.replay import Replay, ReplayRange
from pipelines.stream_state import StreamStates

log = logging.getLogger(__name__)


class CatchUpJob(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    tenant_id: str
    stream_id: str
    pause_id: str
    not_before: float
    requested_by: str = ""

    @property
    def job_id(self) -> str:
        return f"{self.tenant_id}/{self.stream_id}/{self.pause_id}"


class CatchUps:
    """The queue of catch-ups, in Redis (`keys.CATCHUPS`)."""

    def __init__(self, client: redis.Redis):
        self.r = client

    def enqueue(self, job: CatchUpJob) -> None:
        self.r.hset(keys.CATCHUPS, job.job_id, job.model_dump_json())

    def pending(self) -> list[CatchUpJob]:
        return sorted((CatchUpJob.model_validate_json(v) for v in self.r.hvals(keys.CATCHUPS)),
                      key=lambda j: j.not_before)

    def done(self, job: CatchUpJob) -> None:
        self.r.hdel(keys.CATCHUPS, job.job_id)

    def cancel(self, tenant_id: str, stream_id: str) -> None:
        for job in self.pending():
            if (job.tenant_id, job.stream_id) == (tenant_id, stream_id):
                self.done(job)


class CatchUpRunner:
    """Runs due catch-ups, one at a time, writing through ``memory`` (the memory actors in a pipeline)."""

    def __init__(self, config: LivelensConfig, client: redis.Redis, memory: MemoryClient):
        self.config = config
        self.queue = CatchUps(client)
        self.states = StreamStates(client)
        self.memory = memory
        self.segments_stored = 0

    def run_due(self, now: float | None = None) -> int:
        """Run every job whose time has come; returns how many ran. A failing job stays queued (retried)."""
        ran = 0
        for job in self.queue.pending():
            if job.not_before > (time.time() if now is None else now):
                break
            self.run(job)
            ran += 1
        return ran

    def run(self, job: CatchUpJob) -> int:
        """Replay the pause's skipped ranges of the stream; returns segments stored."""
        spans = self.states.skipped_span(job.tenant_id, job.stream_id, job.pause_id)
        stored = 0
        replay = Replay(self.config, self.memory, workers=self.config.streams.catch_up_workers, progress=False,
                        replace=False)
        for tp, (start, stop) in sorted(spans.items(), key=lambda item: (item[0].topic, item[0].partition)):
            summary = replay.run(ReplayRange(tp.topic, from_offset=start, to_offset=stop, partitions=(tp.partition,),
                                             streams=((job.tenant_id, job.stream_id),)))
            stored += summary.segments - summary.segments_replayed  # replayed: memory held it already
        log.info("catch-up of %s/%s (pause %s): %d partitions, %d segments", job.tenant_id, job.stream_id,
                 job.pause_id, len(spans), stored)
        self.states.audit(job.tenant_id, {"stream_id": job.stream_id, "action": "caught_up", "by": job.requested_by,
                                          "pause_id": job.pause_id, "segments": stored})
        self.states.forget_skipped(job.tenant_id, job.stream_id, job.pause_id)
        self.queue.done(job)
        self.segments_stored += stored
        return stored
