"""`livelens backfill` and `replay`: recorded video and a range of the segments topic through the live
operators into memory (registered on the app in pipelines/cli/main.py)."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console

from pipelines.cli.output import print_summary
from pipelines.config import LivelensConfig
from pipelines.ray.runtime import effective_config

console = Console(stderr=True)


def backfill(
    sources: Annotated[list[str], typer.Argument(help="Video files, directories, globs or http(s) URLs.")],
    stream: Annotated[str | None, typer.Option("--stream", help="Stream id (one source). Default: file names.")] = None,
    stream_pattern: Annotated[str | None, typer.Option(
        "--stream-pattern", help="Regex on each file name; its group 'stream' (or first group) is the stream id.")] = None,
    tenant: Annotated[str, typer.Option("--tenant")] = "default",
    start: Annotated[str | None, typer.Option("--start", help="Wall-clock start of the first file, ISO 8601; later "
                                              "files follow on. Default: each file's creation_time, else its "
                                              "modification time minus its duration (with a warning).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Parallel decode processes.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (docs/operations.md).")] = False,
) -> None:
    """Store recorded video in memory through the live operators, far faster than real time; resumable."""
    from pipelines.redis_io import redis_client

    from memory_store.service import MemoryStore
    from pipelines.ingest.backfill import Backfill, BackfillJob
    from pipelines.ingest.recordings import consecutive_starts, expand_sources, stream_id_for

    config = effective_config()
    os.nice(config.backfill.nice)  # first: the decode workers and torch's threads inherit it (live has priority)
    files = expand_sources(sources)
    if stream is not None and (len(files) != 1 or stream_pattern):
        raise typer.BadParameter("--stream names one source; several take their ids from their names (--stream-pattern)")
    when = _aware(datetime.fromisoformat(start)) if start else None
    starts = consecutive_starts(files, when) if when else [None] * len(files)
    jobs = [BackfillJob(f, stream or stream_id_for(f, stream_pattern), tenant, at) for f, at in zip(files, starts)]
    store = MemoryStore(redis_client(config.redis), config.memory)
    summary = Backfill(config, store, workers=workers).run(jobs)
    _rebuild_running_memory(config)
    print_summary("backfilled", summary, as_json=as_json)


def replay(
    from_offset: Annotated[int | None, typer.Option("--from-offset", help="First offset (per partition).")] = None,
    from_time: Annotated[str | None, typer.Option("--from-time", help="First record at or after, ISO 8601.")] = None,
    to_offset: Annotated[int | None, typer.Option("--to-offset", help="Stop before this offset.")] = None,
    to_time: Annotated[str | None, typer.Option("--to-time", help="Stop before records at or after, ISO 8601.")] = None,
    partition: Annotated[list[int] | None, typer.Option("--partition", help="Partition (repeatable). None: all.")] = None,
    topic: Annotated[str | None, typer.Option("--topic", help="Default: the segments topic.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Parallel decode processes.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (docs/operations.md).")] = False,
) -> None:
    """Rebuild memory from a range of the segments topic with the configuration in effect (a new encoder or
    threshold): each replayed segment replaces what memory holds for it. End default: the topic's end now."""
    from pipelines.ingest.replay import Replay, replay_range
    from pipelines.ray.clients import memory_writer

    config = effective_config()
    os.nice(config.backfill.nice)
    what = replay_range(config, topic=topic, from_offset=from_offset, from_time=from_time, to_offset=to_offset,
                        to_time=to_time, partitions=partition or [])
    summary = Replay(config, memory_writer(config), workers=workers).run(what)
    print_summary("replayed", summary, as_json=as_json)


def _aware(when: datetime) -> datetime:
    """A time given without an offset is UTC (as the file metadata it stands in for)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _rebuild_running_memory(config: LivelensConfig) -> None:
    """Backfill writes Redis directly; a running pipeline's memory actors catch their FAISS indexes up."""
    from pipelines.ray.clients import RayMemoryClient
    from pipelines.ray.runtime import connect_ray

    if not config.ray.address:
        return
    connect_ray(config)
    try:
        memory = RayMemoryClient.named(config)
    except ValueError:
        return  # no pipeline deployed: it rebuilds from Redis when it starts
    memory.rebuild()
    console.print("running memory actors caught up with the backfill")
