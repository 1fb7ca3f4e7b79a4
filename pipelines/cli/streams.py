"""`livelens streams`: list, show, pause, resume, delete (and purge), set a stream's retention.

Through the HTTP API (the same `StreamControl` the stream-control topic drives), as the key in
LIVELENS_API_KEY allows when the API has keys (docs/security.md).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipelines.cli.output import duration_s, print_json, stdout_console

app = typer.Typer(no_args_is_help=True, help="Manage streams: pause, resume, delete, purge, retention.")
err = Console(stderr=True)

Tenant = Annotated[str, typer.Option("--tenant", help="Your tenant (with API keys: the key's own).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Stream = Annotated[str, typer.Argument(help="The stream's id.")]


def _call(method: str, stream_id: str | None = None, action: str = "", **kwargs) -> Any:
    from pipelines.api.client import Client, StreamRefused
    from pipelines.ray.runtime import effective_config

    client = Client(effective_config(), api_key=os.environ.get("LIVELENS_API_KEY"))
    try:
        return client.stream(method, stream_id, action, **kwargs)
    except StreamRefused as exc:
        err.print(f"[red]{exc.code}[/red]: {exc.message}")
        raise typer.Exit(2 if exc.status == 404 else 1) from None


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds") if epoch else "-"


def _table(streams: list[dict]) -> Table:
    table = Table("stream", "state", "from", "to", "frames", "skipped", "retention", "fps", "changed by")
    for s in streams:
        coverage = s["coverage"] or {}
        retention = f"{s['retention_s']:g} s" + (" (own)" if s["retention"] == "stream" else "")
        table.add_row(s["stream_id"], s["state"] + (" +catch-up" if s["catch_up_pending"] else ""),
                      _when(coverage.get("first_wallclock")), _when(coverage.get("last_wallclock")),
                      str(s["frames"]), str(s["segments_skipped"]), retention,
                      f"{s['sample_fps']:g}" + (" (own)" if s["sampling"] == "stream" else ""), s["changed_by"] or "-")
    return table


def _show(body: dict, as_json: bool) -> None:
    if as_json:
        print_json(body)
    else:
        stdout_console().print(_table([body]))


@app.command("list")
def list_(tenant: Tenant = "default", as_json: AsJson = False) -> None:
    """Every stream: state, what memory holds, retention, segments skipped while paused or deleted."""
    streams = _call("GET", tenant_id=tenant)
    if as_json:
        print_json({"streams": streams})
    else:
        stdout_console().print(_table(streams))


@app.command()
def show(stream: Stream, tenant: Tenant = "default", as_json: AsJson = False) -> None:
    """One stream."""
    _show(_call("GET", stream, tenant_id=tenant), as_json)


@app.command()
def pause(stream: Stream, tenant: Tenant = "default", as_json: AsJson = False) -> None:
    """Stop ingesting it: its segments are acknowledged and skipped until it is resumed."""
    _show(_call("POST", stream, "pause", tenant_id=tenant), as_json)


@app.command()
def resume(stream: Stream, catch_up: Annotated[bool, typer.Option(
        "--catch-up", help="Also store the paused span, re-read from the segments topic while it holds it.")] = False,
        tenant: Tenant = "default", as_json: AsJson = False) -> None:
    """Ingest it again."""
    _show(_call("POST", stream, "resume", tenant_id=tenant, params={"catch_up": str(catch_up).lower()}), as_json)


@app.command()
def delete(stream: Stream, purge: Annotated[bool, typer.Option(
        "--purge", help="Erase everything of it now, irreversibly (memory, thumbnails, text, clips, archive, "
        "alerts, standing-query state).")] = False,
        yes: Annotated[bool, typer.Option("--yes", help="Do not ask before a purge.")] = False,
        tenant: Tenant = "default", as_json: AsJson = False) -> None:
    """Stop ingest for good; its history stays searchable until its retention, unless --purge."""
    if purge and not yes:
        typer.confirm(f"Erase everything of {stream} now? This cannot be undone", abort=True)
    _show(_call("DELETE", stream, tenant_id=tenant, params={"purge": str(purge).lower()}), as_json)


@app.command("set")
def set_(stream: Stream, retention: Annotated[str | None, typer.Option(
        "--retention", help="Its own memory retention in seconds (or 30m, 12h, 7d); 'global' for the global one.")]
        = None,
        sample_fps: Annotated[str | None, typer.Option(
            "--sample-fps", help="Its own frames per second decoded; 'global' for decode.sample_fps.")] = None,
        tenant: Tenant = "default", as_json: AsJson = False) -> None:
    """Per-stream settings: a retention of its own (applied at once), a sampling rate of its own."""
    body: dict[str, float | None] = {}
    if retention is not None:
        body["retention_s"] = None if retention == "global" else duration_s(retention)
    if sample_fps is not None:
        body["sample_fps"] = None if sample_fps == "global" else float(sample_fps)
    if not body:
        raise typer.BadParameter("give --retention and/or --sample-fps")
    changed = _call("PATCH", stream, tenant_id=tenant, json=body)
    if as_json:
        print_json(changed)
    else:
        stdout_console().print(_table([changed["stream"]]))
        err.print(f"{changed['evicted']} entries past the new retention deleted")
