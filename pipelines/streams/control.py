"""`StreamControl`: every operation on a stream, whoever asks (HTTP, CLI, the stream-control topic).

State goes to Redis (`pipelines.stream_state`), where every source reads it before it submits a segment;
memory's part (closing a deleted stream's open event, per-stream retention, erasing) goes through the
`MemoryClient`, so the memory actors' FAISS indexes change in the same call. Every change is written to the
tenant's stream audit trail (ids, times, who; never content), which a purge keeps.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from memory_store import keys
from memory_store.client import MemoryClient
from memory_store.records import StreamInfo
from pipelines.archive import SegmentArchive
from pipelines.config import LivelensConfig
from pipelines.moderation.alerts import AlertLog
from pipelines.query.engine import QueryError
from pipelines.stream_state import StreamState, StreamStates
from pipelines.streams.catchup import CatchUpJob, CatchUps

log = logging.getLogger(__name__)

# Newest segment markers read for the sessions a delete stops (a stream runs one session at a time).
_SESSIONS_READ = 1000


class Coverage(BaseModel):
    """What memory holds of the stream: wall clock (epoch s) and stream time (s) of its oldest and newest frame."""

    first_wallclock: float
    last_wallclock: float
    first_media_s: float
    last_media_s: float


class StreamStatus(BaseModel):
    """One stream as operators see it: its state, what memory holds, its retention, its counters."""

    model_config = ConfigDict(frozen=True)
    tenant_id: str
    stream_id: str
    state: Literal["live", "paused", "deleted", "purged"]
    changed_at: float | None = Field(None, description="When the state last changed (epoch s).")
    changed_by: str = ""
    coverage: Coverage | None = Field(None, description="None: memory holds nothing of the stream.")
    frames: int = 0
    segments: int = 0
    segments_skipped: int = Field(0, description="Segments acknowledged without ingest while paused or deleted.")
    retention_s: float
    retention: Literal["stream", "global"] = Field(description="Whose retention applies.")
    sample_fps: float = Field(description="Frames per second decoded from its segments.")
    sampling: Literal["stream", "global"] = Field(description="Whose sampling rate applies.")
    catch_up_pending: bool = False


class StreamControl:
    def __init__(self, config: LivelensConfig, client: redis.Redis, memory: MemoryClient, *, sleep=time.sleep):
        self.config = config
        self.r = client
        self.memory = memory
        self.states = StreamStates(client)
        self.catchups = CatchUps(client)
        self.sleep = sleep

    # -- reading -------------------------------------------------------------------------------

    def list(self, tenant_id: str) -> list[StreamStatus]:
        """Every stream memory holds or that has a state (purged ones left out), by id."""
        held = {info.stream_id: info for info in self.memory.streams(tenant_id)}
        ids = sorted(set(held) | set(self.states.controlled(tenant_id)))
        out = [self._status(tenant_id, s, held.get(s)) for s in ids]
        return [status for status in out if status.state != "purged"]

    def show(self, tenant_id: str, stream_id: str) -> StreamStatus:
        """404 for a stream this tenant never had (another tenant's stream of the same id is not this one)."""
        info = self._info(tenant_id, stream_id)
        if info is None and not self.states.exists(tenant_id, stream_id):
            raise QueryError("not_found", f"no stream {stream_id}", 404)
        return self._status(tenant_id, stream_id, info)

    def audit_trail(self, tenant_id: str, stream_id: str, limit: int = 100) -> list[dict]:
        self.show(tenant_id, stream_id)
        return self.states.audit_trail(tenant_id, stream_id, limit)

    def _info(self, tenant_id: str, stream_id: str) -> StreamInfo | None:
        keys.check_id("stream", stream_id)
        return next((i for i in self.memory.streams(tenant_id) if i.stream_id == stream_id), None)

    def _status(self, tenant_id: str, stream_id: str, info: StreamInfo | None) -> StreamStatus:
        state = self.states.get(tenant_id, stream_id)
        own, own_fps = self.r.hmget(keys.stream_settings(tenant_id, stream_id), ("retention_s", "sample_fps"))
        shown = "purged" if state.state == "deleted" and state.purged_at is not None and info is None else state.state
        coverage = None if info is None else Coverage(
            first_wallclock=info.first_wallclock, last_wallclock=info.last_wallclock,
            first_media_s=info.first_media_s, last_media_s=info.last_media_s)
        return StreamStatus(
            tenant_id=tenant_id, stream_id=stream_id, state=shown, changed_at=state.changed_at,
            changed_by=state.changed_by, coverage=coverage, frames=info.frames if info else 0,
            segments=info.segments if info else 0, segments_skipped=self.states.skipped(tenant_id, stream_id),
            retention_s=float(own) if own else self.config.memory.retention_s,
            retention="stream" if own else "global",
            sample_fps=float(own_fps) if own_fps else self.config.decode.sample_fps,
            sampling="stream" if own_fps else "global",
            catch_up_pending=any(j.tenant_id == tenant_id and j.stream_id == stream_id
                                 for j in self.catchups.pending()))

    # -- changing ------------------------------------------------------------------------------

    def pause(self, tenant_id: str, stream_id: str, *, by: str) -> StreamStatus:
        """Stop ingesting the stream: its segments are acknowledged and skipped until `resume`. Idempotent."""
        current = self._existing(tenant_id, stream_id)
        if current.state == "paused":
            return self.show(tenant_id, stream_id)
        if current.state == "deleted":
            raise QueryError("conflict", f"stream {stream_id} is deleted: resume it to ingest again", 409)
        now = time.time()
        self.states.put(tenant_id, stream_id, StreamState(
            state="paused", changed_at=now, changed_by=by, pause_id=uuid.uuid4().hex[:16], paused_at=now))
        self._audit(tenant_id, stream_id, "pause", by)
        return self.show(tenant_id, stream_id)

    def resume(self, tenant_id: str, stream_id: str, *, by: str, catch_up: bool = False) -> StreamStatus:
        """Ingest the stream again. ``catch_up``: also re-read the segments skipped while paused from the segments
        topic (those it still holds), once every source has seen the resume (`catchup.py`). A purged stream may be
        resumed too: a publisher without sessions has no other way back."""
        current = self._existing(tenant_id, stream_id, allow_purged=True)
        if current.state == "live":
            return self.show(tenant_id, stream_id)
        if catch_up and current.state != "paused":
            raise QueryError("conflict", f"stream {stream_id} is {current.state}: only a paused stream catches up",
                             409)
        now = time.time()
        self.states.put(tenant_id, stream_id, StreamState(state="live", changed_at=now, changed_by=by,
                                                          pause_id=current.pause_id))
        if catch_up:
            # Sources may skip for up to state_ttl_s more: the catch-up reads the span once they all see the resume.
            self.catchups.enqueue(CatchUpJob(tenant_id=tenant_id, stream_id=stream_id, pause_id=current.pause_id,
                                             not_before=now + 2 * self.config.streams.state_ttl_s + 0.5,
                                             requested_by=by))
        self._audit(tenant_id, stream_id, "resume", by, catch_up=catch_up)
        return self.show(tenant_id, stream_id)

    def delete(self, tenant_id: str, stream_id: str, *, by: str, purge: bool = False) -> StreamStatus:
        """Stop ingest for good and keep the history until its retention; ``purge``: erase it all now, too."""
        current = self._existing(tenant_id, stream_id, allow_purged=True)
        now = time.time()
        deleted = StreamState(state="deleted", changed_at=now, changed_by=by, pause_id=current.pause_id,
                              deleted_at=now, stopped_sessions=self._sessions(tenant_id, stream_id, current),
                              purged_at=now if purge else current.purged_at)
        self.states.put(tenant_id, stream_id, deleted)
        if not purge:
            self.memory.delete_stream(tenant_id, stream_id)  # closes its open event: all of it is indexed
            self._audit(tenant_id, stream_id, "delete", by)
            return self.show(tenant_id, stream_id)
        # Segments the sources submitted before they saw the delete land first; then everything goes.
        self.sleep(self.config.streams.state_ttl_s + self.config.streams.purge_settle_s)
        erased = self._erase(tenant_id, stream_id)
        self._audit(tenant_id, stream_id, "purge", by, **erased)
        return self.show(tenant_id, stream_id)

    def set(self, tenant_id: str, stream_id: str, *, by: str, retention_s: float | None = None,
            clear_retention: bool = False, sample_fps: float | None = None,
            clear_sample_fps: bool = False) -> tuple[StreamStatus, int]:
        """Per-stream overrides of the global settings: memory retention (applied at once: returns the entries it
        evicted now) and the sampling rate (reaches ingest within ``streams.state_ttl_s``)."""
        self._existing(tenant_id, stream_id)
        if retention_s is not None and clear_retention or sample_fps is not None and clear_sample_fps:
            raise QueryError("invalid_request", "a setting cannot be given and cleared at once", 422)
        if sample_fps is not None and not 0 < sample_fps <= 60:
            raise QueryError("invalid_request", f"sample_fps must be in (0, 60], got {sample_fps}", 422)
        changes = {name: value for name, value in (("retention_s", retention_s), ("sample_fps", sample_fps))
                   if value is not None}
        changes.update({name: None for name, clear in (("retention_s", clear_retention),
                                                       ("sample_fps", clear_sample_fps)) if clear})
        if not changes:
            raise QueryError("invalid_request", "nothing to set: give retention_s or sample_fps (null clears)", 422)
        if "sample_fps" in changes:
            settings = keys.stream_settings(tenant_id, stream_id)
            if changes["sample_fps"] is None:
                self.r.hdel(settings, "sample_fps")
            else:
                self.r.hset(settings, "sample_fps", repr(float(changes["sample_fps"])))
        evicted = self.memory.set_retention(tenant_id, stream_id, changes["retention_s"]) \
            if "retention_s" in changes else 0
        self._audit(tenant_id, stream_id, "set", by, **changes, evicted=evicted)
        return self.show(tenant_id, stream_id), evicted

    # -- helpers -------------------------------------------------------------------------------

    def _existing(self, tenant_id: str, stream_id: str, *, allow_purged: bool = False) -> StreamState:
        status = self.show(tenant_id, stream_id)
        if status.state == "purged" and not allow_purged:
            raise QueryError("not_found", f"stream {stream_id} was purged", 404)
        state = self.states.get(tenant_id, stream_id)
        if not self.states.exists(tenant_id, stream_id):
            # Managed from now on: it stays known (listed, shown) when retention has emptied its memory.
            self.states.put(tenant_id, stream_id, state)
        return state

    def _sessions(self, tenant_id: str, stream_id: str, current: StreamState) -> tuple[str, ...]:
        """The publishing sessions a delete stops: those of the newest stored segments (and earlier deletes')."""
        newest = self.r.zrevrange(keys.segments(tenant_id, stream_id), 0, _SESSIONS_READ - 1)
        found = {m.decode().rpartition("-")[0] for m in newest}
        return tuple(sorted(found | set(current.stopped_sessions)))

    def _erase(self, tenant_id: str, stream_id: str) -> dict[str, int]:
        """Everything of the stream, everywhere: archive files, alerts, then memory and every key in Redis."""
        archived = SegmentArchive(self.config.archive).delete_stream(tenant_id, stream_id) \
            if self.config.archive.url else 0
        alerts = AlertLog(self.r).forget_stream(tenant_id, stream_id)
        erased = self.memory.erase_stream(tenant_id, stream_id)
        self.catchups.cancel(tenant_id, stream_id)
        return {"archived_files": archived, "alerts": alerts, "keys": erased}

    def _audit(self, tenant_id: str, stream_id: str, action: str, by: str, **details) -> None:
        self.states.audit(tenant_id, {"stream_id": stream_id, "action": action, "by": by, **details})
        log.info("stream %s/%s: %s by %s %s", tenant_id, stream_id, action, by, details or "")
