"""HTTP API through Ray Serve (FastAPI): queries, streams, thumbnails. OpenAPI at /docs and /openapi.json.

Errors are JSON `{"error": {"code": ..., "message": ...}}` with a stable code; bad
requests get 4xx, never a 500. Who may call what, and how often: pipelines/api/guard.py.
"""

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.exceptions import HTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from contracts import messages
from memory_store import keys
from pipelines.api import dashboard, streams
from pipelines.api.overview import Overview
from pipelines.clips import ClipCutter, ClipError, clip_threads
from pipelines.config import LivelensConfig
from pipelines.api.guard import (
    QuotaExceeded,
    TenantQuotas,
    check_exposure,
    internal_error,
    is_operator,
    log_internal,
    resolve_tenant,
)
from pipelines.moderation.alerts import AlertLog
from pipelines.query.engine import QueryError
from pipelines.ray.control import stream_control
from pipelines.ray.query import query_engine
from pipelines.redis_io import redis_client

# The largest body accepted: an example image plus a question, counted on the bytes actually read.
MAX_BODY_BYTES = 8 << 20

api = FastAPI(title="livelens", version="1", description="Ask questions about live video streams.")
# The ops dashboard's pages (/, /dashboard/...): static files; their data comes from the routes below.
api.include_router(dashboard.router)
# Managing streams (list, show, pause, resume, delete, purge, settings): pipelines/api/streams.py.
api.include_router(streams.router)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


@api.exception_handler(RequestValidationError)
async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, "invalid_request", str(exc.errors()[:3]))


@api.exception_handler(Exception)
async def _internal(_: Request, exc: Exception) -> JSONResponse:
    # A bug or an unavailable backend, never the caller's fault: JSON with a stable code and an error id.
    return internal_error(exc)


@api.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    # Starlette's own refusals (unknown route, body over the limit) in the API's error shape.
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, code, str(exc.detail))


@api.exception_handler(QueryError)
async def _query_error(_: Request, exc: QueryError) -> JSONResponse:
    response = _error(exc.status, exc.code, exc.message)
    if isinstance(exc, QuotaExceeded) and exc.retry_after_s is not None:
        response.headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    return response


@api.exception_handler(ClipError)
async def _clip_error(_: Request, exc: ClipError) -> JSONResponse:
    return _error(exc.status, exc.code, exc.message)


# Bodies that declare no size (chunked) or too small a one are cut off as they are read: Starlette raises
# a 413 HTTPException once the bytes read pass the limit (the handler above gives it the API's shape).
api.add_middleware(RequestBodyLimitMiddleware, max_body_size=MAX_BODY_BYTES)


# Added after, so it runs first: a declared oversize body is refused before a byte is read.
@api.middleware("http")
async def _limit_size(request: Request, call_next):
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return _error(413, "request_too_large", f"body over {MAX_BODY_BYTES} bytes")
    return await call_next(request)


class QueryRequest(BaseModel):
    """A query over HTTP: the Query message without the envelope fields."""

    model_config = ConfigDict(extra="forbid")
    tenant_id: messages.Id = "default"
    stream_ids: list[messages.Id] = Field(default_factory=list, max_length=1000)
    text: str = Field("", max_length=4096)
    image_jpeg_b64: str | None = Field(None, max_length=4 << 20)
    since_s: float | None = Field(None, gt=0)
    start: datetime | None = None
    end: datetime | None = None
    top_k: int = Field(5, ge=1, le=100)
    occurrence: Literal["best", "first", "last"] = "best"
    adaptive_k: bool = True
    generate: bool = True

    def to_message(self) -> messages.Query:
        scope = messages.TimeScope(start=self.start, end=self.end, since_s=self.since_s)
        return messages.Query(tenant_id=self.tenant_id, stream_ids=self.stream_ids, text=self.text,
                              image_jpeg_b64=self.image_jpeg_b64, scope=scope, top_k=self.top_k,
                              occurrence=self.occurrence, adaptive_k=self.adaptive_k, generate=self.generate)


class StandingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant_id: messages.Id = "default"
    stream_ids: list[messages.Id] = Field(default_factory=list, max_length=1000)
    text: str = Field("", max_length=4096)
    image_jpeg_b64: str | None = Field(None, max_length=4 << 20)
    min_score: float | None = Field(None, ge=-1, le=1)
    rearm_s: float = Field(10.0, ge=0)
    webhook: str | None = Field(None, max_length=2048, pattern=r"^https?://")


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str = Field(min_length=1, max_length=256, description="Who acknowledges (a reviewer's name or id).")
    note: str = Field("", max_length=4096)


def _public(query) -> dict:
    """A standing query as the API shows it: without its vectors."""
    return query.model_dump(mode="json", exclude={"text_vector", "image_vector"}) | {"kind": query.kind}


# Tenant and stream ids in paths and parameters: the wire contract's rule (messages.Id), checked up front (422).
_ID = r"^[A-Za-z0-9_.:\-]{1,128}$"


@serve.deployment(num_replicas=1, max_ongoing_requests=16)
@serve.ingress(api)
class LivelensAPI:
    def __init__(self, config: LivelensConfig):
        self.config = config
        self.engine = query_engine(config)
        self.redis = redis_client(config.redis)
        self.background = ThreadPoolExecutor(max_workers=4, thread_name_prefix="async-query")
        self.ops = Overview(config, self.redis)  # one per replica: fps comes from its successive reads
        self.quotas = TenantQuotas(config.serve, self.redis)
        self.clips = ClipCutter(config, self.redis)
        self.clip_pool = clip_threads(config.clips)
        # What the stream routes (pipelines/api/streams.py) use: plain functions, so they find them on the app.
        api.state.config = config
        api.state.stream_control = stream_control(config)

    def _tenant(self, request: Request, asked: str) -> str:
        return resolve_tenant(self.config.serve, request.headers, asked)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"ok": True}

    @api.post("/v1/query", response_model=messages.Answer)
    def query(self, request: Request, body: QueryRequest):
        """Ask and wait for the answer."""
        message = self._message(request, body)
        self.quotas.admit_query(message.tenant_id)
        return self.engine.run(message).model_dump(mode="json", by_alias=True)

    @api.post("/v1/queries", status_code=202)
    def submit(self, request: Request, body: QueryRequest) -> dict:
        """Ask without waiting: poll GET /v1/queries/{query_id} for the answer."""
        message = self._message(request, body)
        self.quotas.admit_query(message.tenant_id)
        self.quotas.start_pending(message.tenant_id, message.query_id, self.config.serve.answer_ttl_s)
        key = keys.answer(message.tenant_id, message.query_id)
        self.redis.set(key, b"", ex=self.config.serve.answer_ttl_s)
        self.background.submit(self._answer_later, message, key)
        return {"query_id": message.query_id, "status": "pending", "answer_url": f"/v1/queries/{message.query_id}"}

    @api.get("/v1/queries/{query_id}")
    def result(self, request: Request, query_id: str, tenant_id: str = "default"):
        stored = self.redis.get(keys.answer(self._tenant(request, tenant_id), query_id))
        if stored is None:
            raise QueryError("not_found", f"no query {query_id} (unknown, or its answer expired)", 404)
        if not stored:
            return JSONResponse(status_code=202, content={"query_id": query_id, "status": "pending"})
        return Response(content=stored, media_type="application/json")

    def _answer_later(self, message: messages.Query, key: str) -> None:
        try:
            answer = self.engine.run(message)
        except QueryError as exc:
            answer = messages.Answer(tenant_id=message.tenant_id, query_id=message.query_id, answer="",
                                     extractive=True, error=f"{exc.code}: {exc.message}")
        except Exception as exc:  # the caller is polling: it must learn of the failure, not wait forever
            error_id = log_internal(exc)
            answer = messages.Answer(tenant_id=message.tenant_id, query_id=message.query_id, answer="",
                                     extractive=True, error=f"internal: error id {error_id}")
        self.redis.set(key, answer.model_dump_json(by_alias=True), ex=self.config.serve.answer_ttl_s)
        self.quotas.finish_pending(message.tenant_id, message.query_id)

    def _message(self, request: Request, body: QueryRequest) -> messages.Query:
        body = body.model_copy(update={"tenant_id": self._tenant(request, body.tenant_id)})
        try:
            return body.to_message()
        except ValidationError as exc:
            raise QueryError("invalid_request", str(exc.errors()[:3]), 422) from None

    @api.post("/v1/standing-queries", status_code=201)
    def create_standing(self, request: Request, body: StandingRequest) -> dict:
        fields = body.model_dump() | {"tenant_id": self._tenant(request, body.tenant_id)}
        # A cheap early refusal (before the example image is encoded); registering checks again, atomically.
        self.quotas.admit_standing(len(self.engine.list_standing(fields["tenant_id"])))
        return _public(self.engine.register_standing(**fields, limit=self.config.serve.max_standing_queries))

    @api.get("/v1/standing-queries")
    def list_standing(self, request: Request, tenant_id: str = "default") -> list[dict]:
        return [_public(q) for q in self.engine.list_standing(self._tenant(request, tenant_id))]

    @api.delete("/v1/standing-queries/{query_id}")
    def delete_standing(self, request: Request, query_id: str, tenant_id: str = "default") -> dict:
        if not self.engine.delete_standing(self._tenant(request, tenant_id), query_id):
            raise QueryError("not_found", f"no standing query {query_id}", 404)
        return {"deleted": query_id}

    @api.get("/v1/streams/{stream_id}/timeline")
    def timeline(self, request: Request, stream_id: str, tenant_id: str = "default", start: datetime | None = None,
                 end: datetime | None = None, limit: int = Query(500, ge=1, le=10_000)) -> list[dict]:
        """The stream's frames in a wall-clock range: times, drop ratio, on-screen text, thumbnail key; ``boundary``
        where an event begins; ``kind`` "merged" (``covers`` frames) where older frames were merged; ``text_read``
        false where the live OCR reader was behind and did not read the frame (its text is unknown, not empty)."""
        tenant = self._tenant(request, tenant_id)
        frames = self.engine.timeline(tenant, stream_id, start.timestamp() if start else None,
                                      end.timestamp() if end else None, limit)
        return [dict(frame_key=f.frame_key, t_start=f.pts_s, t_end=f.t_end_s, wallclock_start=f.wallclock_start,
                     drop_ratio=f.drop_ratio, text=f.text, lines=f.lines, text_read=f.text_read,
                     thumbnail=f.thumbnail, boundary=f.boundary, kind=f.kind, covers=f.covers) for f in frames]

    @api.get("/v1/streams/{stream_id}/transcript")
    def transcript(self, request: Request, stream_id: str, tenant_id: str = "default", start: datetime | None = None,
                   end: datetime | None = None, limit: int = Query(500, ge=1, le=10_000)) -> list[dict]:
        """What was said on the stream in a wall-clock range (lines starting in it), oldest first: each line's
        times, words, ``source`` (caption / subtitle / asr), language, confidence and channel."""
        tenant = self._tenant(request, tenant_id)
        lines = self.engine.transcript(tenant, stream_id, start.timestamp() if start else None,
                                       end.timestamp() if end else None, limit)
        return [dict(line_key=line.line_key, t_start=line.start_s, t_end=line.end_s,
                     wallclock_start=line.wallclock_start, text=line.text, source=line.source,
                     language=line.language, confidence=line.confidence, channel=line.channel, words=line.words)
                for line in lines]

    @api.get("/v1/overview")
    def overview(self, request: Request, tenant_id: str | None = Query(None, pattern=_ID)) -> dict:
        """The tenant's streams: status, ingest lag, fps, tokens kept, memory, last alert. Operators (the admin
        key; an open loopback API) leave tenant_id out for every tenant's streams, and get the actors' stats."""
        admin = is_operator(self.config.serve, request.headers)
        if tenant_id is None and not admin:
            tenant_id = "default"  # the key's own tenant
        tenants = None if tenant_id is None else [tenant_id if admin else self._tenant(request, tenant_id)]
        report = self.ops.collect(tenants)
        if not admin:
            report = report.model_copy(update={"actors": {}})  # the pipeline's internals are the operator's
        return report.model_dump(mode="json", by_alias=True)

    @api.get("/v1/overview/streams/{stream_id}")
    def stream_overview(self, request: Request, stream_id: str = Path(pattern=_ID),
                        tenant_id: str = Query("default", pattern=_ID)) -> dict:
        """One stream's overview row, its newest frames (event boundaries marked) and its newest alerts."""
        detail = self.ops.stream(self._tenant(request, tenant_id), stream_id)
        if detail is None:
            raise QueryError("not_found", f"no stream {stream_id}", 404)
        return detail.model_dump(mode="json", by_alias=True)

    @api.get("/v1/thumbnails/{key:path}")
    def thumbnail(self, request: Request, key: str, tenant_id: str = "default"):
        data = self.engine.thumbnail(self._tenant(request, tenant_id), key)
        if data is None:
            raise QueryError("not_found", f"no thumbnail {key}", 404)
        return Response(content=data, media_type="image/jpeg")

    @api.get("/v1/streams/{stream_id}/clip", response_class=Response,
             responses={200: {"content": {"video/mp4": {}}}, 404: {}, 410: {}})
    def clip(self, request: Request, stream_id: str = Path(pattern=_ID), tenant_id: str = Query("default", pattern=_ID),
             start: str = Query(alias="from", max_length=64, description="Stream seconds or ISO 8601."),
             end: str = Query(alias="to", max_length=64, description="Stream seconds or ISO 8601.")) -> Response:
        """A playable MP4 (fragmented, H.264 as published) of the span, cut at keyframes and remuxed without
        re-encoding: from the last keyframe at or before ``from`` to the first at or after ``to``. 404: no such
        stream for this tenant, or no video in the span; 410: the span's video aged out (the message says which
        retention ran out)."""
        tenant = self._tenant(request, tenant_id)
        t_from = self.clips.stream_seconds(tenant, stream_id, start)
        t_to = self.clips.stream_seconds(tenant, stream_id, end)
        cut = self.clip_pool.submit(self.clips.cut, tenant, stream_id, t_from, t_to).result()
        return Response(content=cut.data, media_type="video/mp4", headers={
            "X-Livelens-Clip-Start": f"{cut.start_s:.3f}", "X-Livelens-Clip-End": f"{cut.end_s:.3f}",
            "Content-Disposition": f'inline; filename="{stream_id}-{cut.start_s:.1f}-{cut.end_s:.1f}.mp4"'})

    @api.get("/v1/alerts")
    def alerts(self, request: Request, tenant_id: str = Query("default", pattern=_ID),
               room_id: str | None = Query(None, pattern=_ID), limit: int = Query(50, ge=1, le=1000)) -> list[dict]:
        """Recent alerts (moderation and standing queries), newest first, each episode once as its latest
        update, with its acknowledgement when it has one; room_id (a stream id) filters."""
        found = AlertLog(self.redis).recent(self._tenant(request, tenant_id), room_id=room_id, limit=limit)
        return [a.model_dump(mode="json", by_alias=True) for a in found]

    @api.post("/v1/alerts/{alert_id}/ack")
    def ack_alert(self, request: Request, body: AckRequest, alert_id: str = Path(pattern=_ID),
                  tenant_id: str = Query("default", pattern=_ID)) -> dict:
        """Acknowledge an alert; the first acknowledgement is kept, every one goes to the room's audit trail."""
        log, tenant = AlertLog(self.redis), self._tenant(request, tenant_id)
        if not log.ack(tenant, alert_id, by=body.by, note=body.note):
            raise QueryError("not_found", f"no alert {alert_id}", 404)
        return log.get(tenant, alert_id).model_dump(mode="json", by_alias=True)

    @api.get("/v1/rooms/{room_id}/audit")
    def audit(self, request: Request, room_id: str = Path(pattern=_ID), tenant_id: str = Query("default", pattern=_ID),
              limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
        """The room's moderation audit trail, newest first: state changes, verification requests and verdicts,
        acknowledgements."""
        return AlertLog(self.redis).audit_trail(self._tenant(request, tenant_id), room_id, limit)


def start_http(config: LivelensConfig) -> str:
    """Start Serve's HTTP proxy on the configured port and deploy the API. Returns its base URL."""
    check_exposure(config.serve)
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port}, detached=True)
    serve.run(LivelensAPI.bind(config), name="livelens", route_prefix="/", blocking=False)
    return f"http://{config.serve.host}:{config.serve.port}"
