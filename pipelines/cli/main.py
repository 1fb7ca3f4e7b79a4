"""The `livelens` command line."""

from __future__ import annotations

import os

# Ray reads its auth mode when it is imported. `livelens up` starts its Ray head with token
# authentication on (the token under the data dir, deploy.ray_token); a driver must say so to connect.
# Set RAY_AUTH_MODE=disabled yourself for an external cluster that runs without it.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pipelines.cli import archives, questions
from pipelines.cli import streams as stream_commands
from pipelines.cli.output import print_summary
from pipelines.config import LivelensConfig
from pipelines.ray.runtime import effective_config
from pipelines.secrets import redact_url

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Watch live video, remember it, answer questions.")
app.add_typer(stream_commands.app, name="streams")
console = Console(stderr=True)


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
    print_summary("published", stats, as_json=as_json)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r}: expected KEY=VALUE")
    return key, value


# Registered in the order `livelens --help` lists them.
for command in (questions.ask, questions.clip, archives.backfill, archives.replay, questions.watch, questions.alerts):
    app.command()(command)


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
