"""What the CLI prints about state: one JSON object for scripts (`--json`), tables for people.

Addresses and ids are what a reader copies, so they are never cut short: table columns
holding them fold instead of truncating, and when stdout is not a terminal (a pipe, a
file) the console is as wide as the longest line, so nothing wraps at all.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from deploy.local_stack import StackState
from deploy.prometheus import RAY_PREFIX, scrape_config
from pipelines.secrets import redact_url

# Wide enough for any line a table here holds; rich sizes tables to their content, not to this.
_PIPE_WIDTH = 100_000


def stdout_console() -> Console:
    """A console on stdout: the terminal's width on a terminal, unlimited on a pipe or file."""
    return Console() if sys.stdout.isatty() else Console(width=_PIPE_WIDTH, soft_wrap=True)


def duration_s(text: str) -> float:
    """'90', '90s', '5m', '2h', '7d' -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise typer.BadParameter(f"not a duration: {text!r} (use 30s, 5m, 2h, 7d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def print_json(body: dict[str, Any]) -> None:
    """One JSON object on one line of stdout (times ISO 8601, anything else as its string)."""
    print(json.dumps(body, default=_jsonable))


def print_summary(what: str, summary: Any, *, as_json: bool) -> None:
    """A run's totals (a dataclass: publish, backfill, replay): one JSON object, or rich's rendering of it."""
    if as_json:
        print_json(dataclasses.asdict(summary))
    else:
        stdout_console().print(what, summary)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return str(value)


def metrics_targets() -> list[str]:
    """host:port of every live Ray node's metrics export (what Prometheus scrapes). Needs a Ray connection."""
    import ray

    return [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes()
            if n.get("Alive") and n.get("MetricsExportPort")]


def prometheus_body(targets: list[str]) -> dict[str, Any]:
    """Where Prometheus scrapes, and the relabelling that stores `ray_livelens_*` as `livelens_*`."""
    job = scrape_config(targets)["scrape_configs"][0]
    return {"targets": targets, "metric_relabel_configs": job["metric_relabel_configs"],
            "scrape_config": scrape_config(targets)}


def stack_body(state: StackState, prometheus_targets: list[str] | None = None) -> dict[str, Any]:
    """The stack as JSON: each service's address (and pid, liveness, log where `up` started it)."""
    started = {p.name: p for p in state.started}
    services = {}
    for name, address in (("kafka", state.kafka_bootstrap), ("redis", redact_url(state.redis_url)), ("ray", state.ray_address)):
        p = started.get(name)
        services[name] = {"address": address, "started_by_up": p is not None, "pid": p.pid if p else None,
                          "alive": p.alive() if p else None, "log": p.log if p else None}
    body: dict[str, Any] = {"services": services, "ray_dashboard": state.ray_dashboard or None,
                            "http_api": state.http_url or None,
                            "http_api_docs": f"{state.http_url}/docs" if state.http_url else None}
    if prometheus_targets is not None:
        body["prometheus"] = prometheus_body(prometheus_targets)
    return body


def stack_table(state: StackState, prometheus_targets: list[str] | None = None) -> Table:
    table = Table("service", "address", "pid", "alive", "log")
    for column in table.columns:
        column.overflow = "fold"
    for name, service in stack_body(state)["services"].items():
        table.add_row(name, service["address"], str(service["pid"]) if service["started_by_up"] else "external",
                      str(service["alive"]) if service["started_by_up"] else "-", service["log"] or "")
    if state.ray_dashboard:
        table.add_row("ray dashboard", state.ray_dashboard, "", "", "")
    if state.http_url:
        table.add_row("http api", state.http_url + "/docs", "", "", "")
    if prometheus_targets is not None:
        table.add_row("prometheus scrape", ", ".join(prometheus_targets) or "(no Ray node exports metrics)", "", "",
                      f"relabel __name__ {RAY_PREFIX}(livelens_.*) -> $1 (docs/operations.md)")
    return table
