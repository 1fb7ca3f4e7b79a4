"""HTTP routes that manage streams: list, show, pause, resume, delete (and purge), per-stream settings.

Each is one call of `pipelines.streams.control.StreamControl` (the same the CLI and the stream-control topic
use), for the tenant the API key names (`guard.resolve_tenant`): a key never reaches another tenant's stream,
whose id, for it, names a stream it does not have (404) or a tenant it is not for (403).
"""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from pipelines.api.guard import is_operator, presented_key, resolve_tenant
from pipelines.streams.control import StreamControl, StreamStatus

router = APIRouter(tags=["streams"])

_ID = r"^[A-Za-z0-9_.:\-]{1,128}$"
StreamId = Path(pattern=_ID, description="The stream's id (the publisher's stream_id).")
TenantId = Query("default", pattern=_ID, description="Your tenant; with API keys, the key's own.")


class StreamSettings(BaseModel):
    """Per-stream overrides of global settings: only the fields given change; null clears one (back to global)."""

    model_config = ConfigDict(extra="forbid")
    retention_s: float | None = Field(None, gt=0, description="Memory retention in seconds (memory.retention_s).")
    sample_fps: float | None = Field(None, gt=0, le=60, description="Frames per second decoded (decode.sample_fps).")


class SettingsChanged(BaseModel):
    stream: StreamStatus
    evicted: int = Field(description="Entries the new retention deleted at once.")


def _control(request: Request) -> tuple[StreamControl, str]:
    """The replica's StreamControl, and who is asking (for the audit trail: never the key itself)."""
    state = request.app.state
    key = presented_key(request.headers)
    who = state.config.serve.tenant_for_key(key) if key and state.config.serve.api_keys else None
    caller = f"http:{who}" if who else ("http:admin" if key else "http")
    return state.stream_control, caller


def _tenant(request: Request, asked: str) -> str:
    """The key's tenant; the operator (the admin key, trusted with everything) manages any tenant's streams."""
    serve = request.app.state.config.serve
    if serve.api_keys and serve.admin_api_key is not None and is_operator(serve, request.headers):
        return asked
    return resolve_tenant(serve, request.headers, asked)


@router.get("/v1/streams", response_model=list[StreamStatus])
def list_streams(request: Request, tenant_id: str = TenantId) -> list[StreamStatus]:
    """Every stream of the tenant: state, what memory holds (coverage, counts), retention, counters."""
    control, _ = _control(request)
    return control.list(_tenant(request, tenant_id))


@router.get("/v1/streams/{stream_id}", response_model=StreamStatus)
def show_stream(request: Request, stream_id: str = StreamId, tenant_id: str = TenantId) -> StreamStatus:
    """One stream: live, paused, deleted (history kept until its retention) or purged; what memory holds."""
    control, _ = _control(request)
    return control.show(_tenant(request, tenant_id), stream_id)


@router.get("/v1/streams/{stream_id}/audit")
def stream_audit(request: Request, stream_id: str = StreamId, tenant_id: str = TenantId,
                 limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
    """Who paused, resumed, deleted, purged or configured the stream, newest first (kept through a purge)."""
    control, _ = _control(request)
    return control.audit_trail(_tenant(request, tenant_id), stream_id, limit)


@router.post("/v1/streams/{stream_id}/pause", response_model=StreamStatus)
def pause_stream(request: Request, stream_id: str = StreamId, tenant_id: str = TenantId) -> StreamStatus:
    """Stop ingesting: the stream's segments are acknowledged and skipped (counted) until it is resumed."""
    control, who = _control(request)
    return control.pause(_tenant(request, tenant_id), stream_id, by=who)


@router.post("/v1/streams/{stream_id}/resume", response_model=StreamStatus)
def resume_stream(request: Request, stream_id: str = StreamId, tenant_id: str = TenantId,
                  catch_up: bool = Query(False, description="Also store the paused span, re-read from the segments "
                                         "topic while it still holds it.")) -> StreamStatus:
    """Ingest again (a paused or deleted stream)."""
    control, who = _control(request)
    return control.resume(_tenant(request, tenant_id), stream_id, by=who, catch_up=catch_up)


@router.delete("/v1/streams/{stream_id}", response_model=StreamStatus)
def delete_stream(request: Request, stream_id: str = StreamId, tenant_id: str = TenantId,
                  purge: bool = Query(False, description="Erase everything now, irreversibly: memory, thumbnails, "
                                      "text, clips, archive, alerts, standing-query state.")) -> StreamStatus:
    """Stop ingest for good; the history stays searchable until its retention, unless purged. A new publishing
    session of the stream starts it again."""
    control, who = _control(request)
    return control.delete(_tenant(request, tenant_id), stream_id, by=who, purge=purge)


@router.patch("/v1/streams/{stream_id}", response_model=SettingsChanged)
def configure_stream(request: Request, body: StreamSettings, stream_id: str = StreamId,
                     tenant_id: str = TenantId) -> SettingsChanged:
    """Per-stream overrides: a retention of its own (applied at once and on every write after), a sampling rate
    of its own (reaches ingest within streams.state_ttl_s)."""
    control, who = _control(request)
    given = body.model_fields_set
    status, evicted = control.set(
        _tenant(request, tenant_id), stream_id, by=who, retention_s=body.retention_s,
        clear_retention="retention_s" in given and body.retention_s is None, sample_fps=body.sample_fps,
        clear_sample_fps="sample_fps" in given and body.sample_fps is None)
    return SettingsChanged(stream=status, evicted=evicted)
