"""The live ops dashboard: static pages (plain HTML and vanilla JS, nothing from a CDN) that the HTTP API serves.

    /, /dashboard                  every stream: status, ingest lag, fps, tokens kept, memory, last alert, and
                                   its ingest state (live, paused, deleted) with pause / resume / delete buttons
    /dashboard/streams/{stream}    one stream: its numbers, timeline (event boundaries, thumbnails,
                                   on-screen text, alerts) and a query box
    /dashboard/alerts              the alert log, with acknowledgement

On the stream page (evidence, alerts) and the alerts page, a hit or alert plays its clip
(GET /v1/streams/{id}/clip, pipelines/clips.py) in a video element, beside the on-screen text of the span.

The pages carry no data. Their script polls the JSON API (/v1/overview, /v1/overview/streams/{id},
/v1/streams, /v1/alerts, /v1/query) every ``dashboard.refresh_ms``; when API keys are configured it sends the key
the user entered (kept in the browser's localStorage, or given once as ``?key=``) as ``X-API-Key``.
"""

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse, Response

router = APIRouter(include_in_schema=False)

_FILES = files(__name__)
# The only files served under /dashboard/static/: nothing else in the package can be read through it.
_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


def _page(name: str) -> HTMLResponse:
    return HTMLResponse(_FILES.joinpath(name).read_text(encoding="utf-8"))


@router.get("/")
@router.get("/dashboard")
def index() -> HTMLResponse:
    return _page("index.html")


@router.get("/dashboard/streams/{stream_id}")
def stream_page(stream_id: str) -> HTMLResponse:
    return _page("stream.html")  # the script reads the stream id from the address


@router.get("/dashboard/alerts")
def alerts_page() -> HTMLResponse:
    return _page("alerts.html")


@router.get("/dashboard/static/{name}")
def static(name: str) -> Response:
    if name not in _STATIC:
        return JSONResponse(status_code=404, content={"error": {"code": "not_found", "message": f"no file {name}"}})
    return Response(_FILES.joinpath(name).read_bytes(), media_type=_STATIC[name])
