"""How the CLI and the demo print answers and alerts: a rich table for people, one JSON line for scripts."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from contracts import messages
from pipelines.cli.output import stdout_console


def print_answer(answer: messages.Answer, *, as_json: bool) -> None:
    if as_json:
        body = {
            "answer": answer.answer,
            "extractive": answer.extractive,
            "evidence": [e.model_dump(mode="json") for e in answer.evidence],
            "latency_ms": round(answer.latency_ms, 1),
            "error": answer.error,
        }
        print(json.dumps(body))
        return
    out = stdout_console()
    if answer.error:
        out.print(f"[red]error:[/red] {answer.error}")
    out.print(f"[bold]answer[/bold] ({'extractive' if answer.extractive else answer.model}): {answer.answer}")
    table = Table("stream", "t (s)", "wall clock", "score", "source", "words (on screen or said)")
    table.columns[0].overflow = "fold"  # ids are copied, never cut short
    for e in answer.evidence:
        table.add_row(e.stream_id, f"{e.t_start:.1f}-{e.t_end:.1f}", e.wallclock_start.isoformat(timespec="seconds"),
                      f"{e.score:.3f}", e.source or "", e.text.replace("\n", " / "))
    out.print(table)
    out.print(f"latency {answer.latency_ms:.0f} ms")


def print_alert(alert: messages.Alert, *, as_json: bool) -> None:
    if as_json:
        print(alert.model_dump_json(by_alias=True))
        return
    colour = {"RED": "red", "YELLOW": "yellow", "GREEN": "green"}.get(alert.state, "cyan")
    evidence = ", ".join(f"{e.t_start:.0f}-{e.t_end:.0f}s {e.text.replace(chr(10), ' / ')[:60]}".strip()
                         for e in alert.evidence[:3])
    labels = ",".join(label for d in alert.drivers for label in d.labels)
    acked = f" acked by {alert.ack.by}" if alert.ack else ""
    Console().print(f"{alert.produced_at.isoformat(timespec='seconds')} [{colour}]{alert.state}[/{colour}] "
                    f"{alert.stream_id} {alert.event} {alert.alert_id} score={alert.score:.2f} {labels} "
                    f"[{evidence}]{acked}")
