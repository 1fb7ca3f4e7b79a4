"""`livelens ask`, `clip`, `watch` and `alerts`: questions about what streams showed and said, the
evidence's clips, and alerts (registered on the app in pipelines/cli/main.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from contracts import messages
from pipelines.cli.output import duration_s
from pipelines.cli.render import print_alert, print_answer
from pipelines.config import LivelensConfig
from pipelines.ray.runtime import effective_config

console = Console(stderr=True)


def ask(
    question: Annotated[str, typer.Argument(help="The question; may be empty with --image.")] = "",
    stream: Annotated[list[str] | None, typer.Option("--stream", help="Stream id (repeatable). None: all streams.")] = None,
    all_streams: Annotated[bool, typer.Option("--all-streams", help="Every stream of the tenant (the default "
                                              "without --stream; says so explicitly in scripts).")] = False,
    image: Annotated[Path | None, typer.Option("--image", help="An example image: when was this on screen?")] = None,
    tenant: Annotated[str, typer.Option("--tenant")] = "default",
    since: Annotated[str | None, typer.Option("--since", help="Only the last N: 30s, 5m, 2h.")] = None,
    t_from: Annotated[str | None, typer.Option("--from", help="Start: ISO time, or seconds from stream start.")] = None,
    t_to: Annotated[str | None, typer.Option("--to", help="End: ISO time, or seconds from stream start.")] = None,
    top_k: Annotated[int, typer.Option("--top-k")] = 5,
    first: Annotated[bool, typer.Option("--first", help="The earliest matching moment(s).")] = False,
    last: Annotated[bool, typer.Option("--last", help="The latest matching moment(s).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    via: Annotated[str, typer.Option(help="http or kafka")] = "http",
    clips: Annotated[Path | None, typer.Option("--clips", help="Save each piece of evidence's clip (its span "
                                               "padded by clips.margin_s) as an MP4 in this directory.")] = None,
) -> None:
    """Ask a question about one or more streams; prints the answer and its evidence."""
    from pipelines.api.client import Client, image_b64

    if all_streams and stream:
        raise typer.BadParameter("--all-streams or --stream, not both")
    config = effective_config()
    streams = stream or []
    scope = messages.TimeScope(
        since_s=duration_s(since) if since else None,
        start=_time_arg(config, tenant, streams, t_from), end=_time_arg(config, tenant, streams, t_to))
    if first and last:
        raise typer.BadParameter("--first or --last, not both")
    query = messages.Query(tenant_id=tenant, stream_ids=streams, text=question, scope=scope, top_k=top_k,
                           image_jpeg_b64=image_b64(image) if image else None,
                           occurrence="first" if first else "last" if last else "best")
    client = Client(config)
    answer = client.ask_kafka(query) if via == "kafka" else client.ask_http(query)
    print_answer(answer, as_json=as_json)
    if answer.error:
        raise typer.Exit(2)
    if clips is not None:
        _save_evidence_clips(config, tenant, answer.evidence, clips)


def _save_evidence_clips(config: LivelensConfig, tenant: str, evidence: list[messages.Evidence], folder: Path) -> None:
    from pipelines.redis_io import redis_client

    from pipelines.clips import ClipCutter, save_evidence_clips

    cutter = ClipCutter(config, redis_client(config.redis))
    for rank, (e, saved) in enumerate(zip(evidence, save_evidence_clips(cutter, tenant, evidence, folder)), 1):
        if isinstance(saved, Path):
            console.print(f"clip {rank}: {saved}")
        else:
            console.print(f"[yellow]clip {rank} ({e.stream_id} {e.t_start:.1f} s):[/yellow] {saved.message}")


def clip(
    stream: Annotated[str, typer.Argument(help="Stream id.")],
    t_from: Annotated[str, typer.Option("--from", help="Start: seconds from stream start, or ISO time.")],
    t_to: Annotated[str, typer.Option("--to", help="End: seconds from stream start, or ISO time.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="The MP4 to write.")],
    tenant: Annotated[str, typer.Option("--tenant")] = "default",
) -> None:
    """Write a playable MP4 of a span of a stream: cut at keyframes, not re-encoded."""
    from pipelines.redis_io import redis_client

    from pipelines.clips import ClipCutter, ClipError

    config = effective_config()
    cutter = ClipCutter(config, redis_client(config.redis))
    try:
        cut = cutter.cut(tenant, stream, cutter.stream_seconds(tenant, stream, t_from),
                         cutter.stream_seconds(tenant, stream, t_to))
    except ClipError as exc:
        console.print(f"[red]{exc.code}:[/red] {exc.message}")
        raise typer.Exit(1 if exc.status < 500 else 2) from None
    out.write_bytes(cut.data)
    console.print(f"{out}: {cut.start_s:.2f}-{cut.end_s:.2f} s of {stream}, {len(cut.data):,} bytes, "
                  f"segments {cut.segments[0]}..{cut.segments[-1]}")


def _time_arg(config: LivelensConfig, tenant: str, streams: list[str], value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return datetime.fromisoformat(value)
    if len(streams) != 1:
        raise typer.BadParameter("seconds from stream start need exactly one --stream")
    start = _stream_start(config, tenant, streams[0])
    if start is None:
        raise typer.BadParameter(f"stream {streams[0]} has nothing in memory yet")
    return datetime.fromtimestamp(start + seconds, UTC)


def _stream_start(config: LivelensConfig, tenant: str, stream: str) -> float | None:
    from pipelines.redis_io import redis_client

    from memory_store.redis_tier import RedisTier

    info = RedisTier(redis_client(config.redis), config.memory).stream_info(tenant, stream)
    return info.first_wallclock if info else None


def watch(
    query: Annotated[str, typer.Argument(help="What to watch for in on-screen text, e.g. 'storm warning'.")] = "",
    stream: Annotated[list[str] | None, typer.Option("--stream", help="Stream id (repeatable). None: all.")] = None,
    tenant: Annotated[str, typer.Option("--tenant")] = "default",
    image: Annotated[Path | None, typer.Option("--image", help="Watch for this picture instead.")] = None,
    min_score: Annotated[float | None, typer.Option("--min-score")] = None,
    rearm: Annotated[str, typer.Option("--rearm", help="Quiet time before it can fire again: 10s, 5m.")] = "10s",
    webhook: Annotated[str | None, typer.Option("--webhook", help="Also POST each alert here.")] = None,
    keep: Annotated[bool, typer.Option("--keep/--remove", help="Keep the standing query after you stop.")] = True,
) -> None:
    """Register a standing query and print its alerts as they fire (Ctrl-C to stop)."""
    from pipelines.api.client import Client, image_b64

    config = effective_config()
    client = Client(config)
    registered = client.register_standing(tenant_id=tenant, text=query, stream_ids=stream or [],
                                          image_jpeg_b64=image_b64(image) if image else None,
                                          min_score=min_score, rearm_s=duration_s(rearm), webhook=webhook)
    console.print(f"watching ({registered['kind']}) as standing query {registered['query_id']}")
    try:
        for alert in client.follow_alerts(tenant_id=tenant, query_id=registered["query_id"]):
            e = alert.evidence[0]
            Console().print(f"{e.wallclock_start.isoformat(timespec='seconds')} {alert.stream_id} "
                            f"t={e.t_start:.1f}s score={alert.score:.2f} {e.text.replace(chr(10), ' / ')}")
    except KeyboardInterrupt:
        pass
    finally:
        if not keep:
            client.delete_standing(registered["query_id"], tenant_id=tenant)


def alerts(
    follow: Annotated[bool, typer.Option("--follow", help="Print alerts as they arrive on the alerts topic.")] = False,
    room: Annotated[str | None, typer.Option("--room", help="Only this room (stream id).")] = None,
    tenant: Annotated[str, typer.Option("--tenant")] = "default",
    limit: Annotated[int, typer.Option("--limit", help="Recent alerts shown (without --follow).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per alert, per line.")] = False,
) -> None:
    """Recent moderation and standing-query alerts, newest first; or follow them live (Ctrl-C to stop)."""
    from pipelines.api.client import Client

    client = Client(effective_config())
    if not follow:
        for alert in client.alerts(tenant_id=tenant, room_id=room, limit=limit):
            print_alert(alert, as_json=as_json)
        return
    try:
        for alert in client.follow_alerts(tenant_id=tenant):
            if room in (None, alert.stream_id):
                print_alert(alert, as_json=as_json)
    except KeyboardInterrupt:
        pass
