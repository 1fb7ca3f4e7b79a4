"""The `livelens` command line."""

from __future__ import annotations

import os

# Ray reads its auth mode when it is imported. `livelens up` starts its Ray head with token
# authentication on (the token under the data dir, deploy.ray_token); a driver must say so to connect.
# Set RAY_AUTH_MODE=disabled yourself for an external cluster that runs without it.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import dataclasses
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from contracts import messages
from pipelines.cli import streams as stream_commands
from pipelines.cli.output import duration_s
from pipelines.cli.render import print_alert, print_answer
from pipelines.config import LivelensConfig
from pipelines.ray.runtime import effective_config
from pipelines.secrets import redact_url

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Watch live video, remember it, answer questions.")
app.add_typer(stream_commands.app, name="streams")
console = Console(stderr=True)


def _stream_start(config: LivelensConfig, tenant: str, stream: str) -> float | None:
    from pipelines.redis_io import redis_client

    from memory_store.redis_tier import RedisTier

    info = RedisTier(redis_client(config.redis), config.memory).stream_info(tenant, stream)
    return info.first_wallclock if info else None


@app.command()
def up(
    http: Annotated[bool, typer.Option(help="Also serve the HTTP API through Ray Serve.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (docs/operations.md).")] = False,
) -> None:
    """Start the local stack (broker, redis-server, Ray) where none is configured, and deploy the pipeline."""
    from deploy import local_stack
    from pipelines.api.deployment import deploy_pipeline
    from pipelines.cli.output import metrics_targets
    from pipelines.api.guard import ExposureError, check_exposure

    config = LivelensConfig()
    if http:
        try:  # before anything starts, not after the pipeline is deployed
            check_exposure(config.serve)
        except ExposureError as exc:
            console.print(f"[red]{exc}")
            raise typer.Exit(2) from None
    state = local_stack.up(config.data_dir, kafka_bootstrap=config.kafka.bootstrap, redis_url=config.redis.url,
                           ray_address=config.ray.address, appendfsync=config.redis.appendfsync,
                           num_cpus=config.ray.num_cpus)
    config = effective_config(config)
    with console.status("deploying the pipeline"):
        state.http_url = deploy_pipeline(config, detached=True, http=http).http_url
    state.save(Path(config.data_dir))
    _print_state(state, metrics_targets(), as_json=as_json)


@app.command()
def down(as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (docs/operations.md).")] = False) -> None:
    """Stop exactly what `livelens up` started."""
    config = LivelensConfig()
    from deploy import local_stack
    from pipelines.cli.output import print_json

    stopped = local_stack.down(config.data_dir)
    if as_json:
        print_json({"stopped": stopped})
        return
    console.print(f"stopped: {', '.join(stopped) or 'nothing (no local stack recorded)'}")


@app.command()
def status(
    sample: Annotated[float, typer.Option("--sample", help="Seconds between the two reads fps is taken from "
                                          "(0: one read, no fps).")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (docs/operations.md).")] = False,
) -> None:
    """What runs where, and how the pipeline and every stream are doing (the dashboard's overview)."""
    from deploy.local_stack import StackState
    from pipelines.cli.output import metrics_targets, print_json, stack_body, stdout_console

    config = effective_config()
    state = StackState.load(Path(config.data_dir))
    if state is None:
        problem = (f"no local stack under {config.data_dir}; configured: kafka={config.kafka.bootstrap} "
                   f"redis={redact_url(config.redis.url)} ray={config.ray.address}")
        print_json({"error": problem}) if as_json else console.print(problem)
        raise typer.Exit(1)
    import ray

    from pipelines.api.overview import overview_table, sampled_overview
    from pipelines.ray.runtime import connect_ray, pipeline_stats

    connect_ray(config)
    targets = metrics_targets()
    try:
        stats = pipeline_stats(config)
    except (ValueError, ray.exceptions.RayError) as exc:
        if as_json:
            print_json({"stack": stack_body(state, targets), "error": f"pipeline not reachable: {exc}"})
        else:
            _print_state(state, targets, as_json=False)
            console.print(f"[red]pipeline not reachable: {exc}")
        raise typer.Exit(1) from None
    for actor in stats.values():
        actor.pop("latencies_s", None)
    overview = sampled_overview(config, sample)
    if as_json:
        print_json({"stack": stack_body(state, targets), "actors": stats,
                    "streams": overview.model_dump(mode="json")})
        return
    _print_state(state, targets, as_json=False)
    table = Table("actor", "stats")
    for name, actor in stats.items():
        table.add_row(name, json.dumps(actor, default=str))
    out = stdout_console()
    out.print(table)
    out.print(overview_table(overview))


def _print_state(state, prometheus_targets: list[str], *, as_json: bool) -> None:
    from pipelines.cli.output import print_json, stack_body, stack_table, stdout_console

    if as_json:
        print_json(stack_body(state, prometheus_targets))
    else:
        stdout_console().print(stack_table(state, prometheus_targets))


@app.command()
def memory(
    stream: Annotated[str, typer.Argument(help="Stream id.")],
    tenant: Annotated[str, typer.Option("--tenant")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (docs/operations.md).")] = False,
) -> None:
    """A stream's memory tiers (short, mid, long): entries, tokens, bytes and time covered, against their budgets."""
    from pipelines.cli.output import print_json, stdout_console
    from pipelines.cli.memory import NoMemory, memory_body, print_memory

    config = effective_config()
    if as_json:
        try:
            print_json(memory_body(config, tenant, stream))
        except NoMemory as exc:
            print_json({"error": str(exc)})
            raise typer.Exit(1) from None
        return
    if not print_memory(config, tenant, stream, stdout_console()):
        raise typer.Exit(1)


@app.command("config")
def show_config() -> None:
    """Print the configuration in effect (file, env and profile merged)."""
    print(effective_config().model_dump_json(indent=2))


@app.command("sample-video")
def sample_video(
    out: Path, duration: float = 60.0, fps: int = 10, seed: int = 0,
    speech: Annotated[bool, typer.Option("--speech/--silent", help="A voice reading known phrases (espeak-ng) and "
                                         "subtitle cues (OUT.vtt; a subtitle track in .mkv), or a silent picture.")] = True,
) -> None:
    """Write a synthetic broadcast and its ground truth (OUT.json)."""
    from pipelines.cli.sample_speech import subtitle_path
    from pipelines.cli.sample_video import write_sample_video

    truth = write_sample_video(out, duration_s=duration, fps=fps, seed=seed, speech=speech)
    console.print(f"wrote {out} ({truth['duration_s']} s) and its ground truth {out.with_suffix('.json')}")
    if speech:
        track = " and as its subtitle track" if truth["subtitle_track"] else ""
        console.print(f"{len(truth['speech'])} spoken phrases; {len(truth['subtitles'])} subtitle cues in "
                      f"{subtitle_path(out)}{track}")


@app.command()
def publish(
    source: str,
    stream: Annotated[str, typer.Option("--stream", help="Stream id.")],
    tenant: Annotated[str, typer.Option("--tenant")] = "default",
    realtime: Annotated[bool, typer.Option("--realtime/--fast", help="Pace a file like a live source, or as fast "
                                           "as possible (a live URL is never re-paced).")] = True,
    loop: Annotated[bool, typer.Option("--loop", help="A file or directory: start over at the end, forever.")] = False,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="An FFmpeg option for opening a URL, KEY=VALUE (repeatable), e.g. "
        "rtsp_transport=udp.")] = None,
    reconnect: Annotated[bool, typer.Option("--reconnect/--no-reconnect", help="A URL: wait for the source and "
                                            "reconnect when it drops or is not up yet (the default), or exit.")] = True,
    reconnect_max: Annotated[float, typer.Option("--reconnect-max", help="Longest wait between tries, seconds.")] = 10.0,
    give_up_after: Annotated[float | None, typer.Option(
        "--give-up-after", help="Exit (status 3) once the source has been away this many seconds; "
        "default: never.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (docs/operations.md).")] = False,
) -> None:
    """Publish a file, directory or URL (RTSP, RTMP, HLS, HTTP, UDP, ...) as video segments to the segments topic.

    A URL is a live source: publish runs until stopped (SIGTERM / Ctrl-C end it after the segment in
    progress), reconnecting with capped backoff whenever the source drops (docs/operations.md)."""
    import signal
    import threading

    from pipelines.kafka.publish import SegmentPublisher
    from pipelines.kafka.sessions import continuing_offset_s
    from pipelines.reconnect import Backoff, SourceGone
    from pipelines.segmenter import SourceError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = dict(_key_value(o) for o in option or ())
    backoff = Backoff(max_s=reconnect_max, give_up_after_s=give_up_after) if reconnect else None
    config = effective_config()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # a supervisor's stop: finish the segment, flush, exit 0
        signal.signal(sig, lambda *_: stop.set())
    try:
        # Closing flushes what was sent before an error, so the segments before it are not lost.
        with SegmentPublisher(kafka=config.kafka) as publisher:
            stats = publisher.publish(
                source, stream_id=stream, tenant_id=tenant, pace="realtime" if realtime else "fast", loop=loop,
                media_offset_s=continuing_offset_s(config, tenant, stream), reconnect=backoff, options=options,
                stop=stop)
    except SourceError as exc:  # bad input the user can act on: the reason, not a traceback
        console.print(f"[red]cannot publish:[/red] {exc}")
        raise typer.Exit(2) from None
    except SourceGone as exc:
        console.print(f"[red]gave up:[/red] {exc}")
        raise typer.Exit(3) from None
    _print_summary("published", stats, as_json=as_json)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r}: expected KEY=VALUE")
    return key, value


@app.command()
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


@app.command()
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


@app.command()
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
    from pipelines.ingest.backfill import Backfill, BackfillJob, consecutive_starts, expand_sources, stream_id_for

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
    _print_summary("backfilled", summary, as_json=as_json)


@app.command()
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
    _print_summary("replayed", summary, as_json=as_json)


def _print_summary(what: str, summary, *, as_json: bool) -> None:
    """A run's totals (a dataclass): one JSON object, or rich's rendering of it."""
    from pipelines.cli.output import print_json, stdout_console

    if as_json:
        print_json(dataclasses.asdict(summary))
    else:
        stdout_console().print(what, summary)


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


@app.command()
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


@app.command()
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


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds of sample broadcast.")] = 40.0,
    fast: Annotated[bool, typer.Option("--fast", help="Publish as fast as possible instead of in real time.")] = False,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the stack running afterwards.")] = False,
) -> None:
    """Up, generate the sample broadcast, publish it live, ask questions while it plays, down."""
    from pipelines.cli.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    ok = run_demo(duration_s=duration, fast=fast, keep=keep, console=Console())
    if not ok:
        raise typer.Exit(1)


def main() -> None:  # `python -m pipelines.cli` (pipelines/cli/__main__.py)
    app()


if __name__ == "__main__":
    sys.exit(main())
