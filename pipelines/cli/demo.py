"""`livelens demo`: the whole loop on the embedded stack, with checks against the sample's ground truth."""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path

import av
from rich.console import Console

from contracts import messages
from deploy import local_stack
from pipelines.api.client import Client
from pipelines.api.deployment import deploy_pipeline
from pipelines.cli.render import print_answer
from pipelines.cli.sample_video import write_sample_video
from pipelines.config import LivelensConfig
from pipelines.kafka.publish import SegmentPublisher
from pipelines.ray.runtime import effective_config


def frame_at(video: Path, t: float) -> str:
    """The frame shown at t seconds, as base64 JPEG: an example-image query with a known answer."""
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= t:
                buf = io.BytesIO()
                frame.to_image().save(buf, format="JPEG", quality=90)
                return base64.b64encode(buf.getvalue()).decode()
    raise ValueError(f"{video} has no frame at {t} s")


def run_demo(*, duration_s: float, fast: bool, keep: bool, console: Console) -> bool:
    base = LivelensConfig()
    state = local_stack.up(base.data_dir, kafka_bootstrap=base.kafka.bootstrap, redis_url=base.redis.url,
                           ray_address=base.ray.address, appendfsync=base.redis.appendfsync)
    config = effective_config(base)
    failures: list[str] = []
    try:
        with console.status("deploying the pipeline (Ray actors, HTTP API)"):
            http_url = deploy_pipeline(config, detached=True).http_url
        video = Path(config.data_dir) / "sample" / "broadcast.mp4"
        video.parent.mkdir(parents=True, exist_ok=True)
        truth = write_sample_video(video, duration_s=duration_s)
        stream = f"demo-{int(time.time())}"
        console.print(f"[bold]publishing[/bold] {video} as stream {stream} ({'fast' if fast else 'real time'})")
        published: list[messages.VideoSegment] = []
        publisher = threading.Thread(
            target=SegmentPublisher(kafka=config.kafka).publish,
            kwargs=dict(source=str(video), stream_id=stream, pace="fast" if fast else "realtime",
                        on_segment=published.append), daemon=True)
        publisher.start()
        client = Client(config, http_url=http_url)

        def ask(title: str, query: messages.Query, check=None, via: str = "http") -> None:
            answer = client.ask_kafka(query) if via == "kafka" else client.ask_http(query)
            console.rule(f"{title}  (via {via})")
            print_answer(answer, as_json=False)
            problem = answer.error or (None if answer.evidence else "no evidence")
            problem = problem or (check(answer) if check else None)
            if problem:
                failures.append(f"{title}: {problem}")
                console.print(f"[red]check failed: {problem}")

        # Ask while it plays: the first questions come a third of the way in.
        _wait_until(publisher, fast, duration_s / 3)
        # A slow or busy machine (the first run also loads every model) may not have stored a segment yet.
        with console.status("waiting for the first segments to reach memory"):
            _wait_for_memory(config, stream, timeout_s=180)
        ask("What is on screen right now?", messages.Query(tenant_id="default", stream_ids=[stream], top_k=3))
        ask("What happened in the last 10 seconds?",
            messages.Query(tenant_id="default", stream_ids=[stream], text="what happened",
                           scope=messages.TimeScope(since_s=10), top_k=3), via="kafka")
        publisher.join()
        with console.status("waiting for the last segments to reach memory"):
            _wait_for_memory(config, stream, timeout_s=180, segments=len(published))
        target = truth["scenes"][len(truth["scenes"]) // 2]
        t_probe = (target["start"] + target["end"]) / 2
        ask(f"When was this picture on screen? (a frame from t={t_probe:.1f} s)",
            messages.Query(tenant_id="default", stream_ids=[stream], image_jpeg_b64=frame_at(video, t_probe),
                           top_k=3),
            check=lambda a: None if abs(a.evidence[0].t_start - t_probe) <= 2.0 or
            any(abs(e.t_start - t_probe) <= 2.0 for e in a.evidence) else
            f"no evidence within 2 s of {t_probe:.1f} s")
        # Questions about the headlines, answered from on-screen text read by the OCR stage.
        for h in truth["headlines"][:3]:
            question = f"when did the news say {h['text'].lower()}"
            ask(f'{question}? (truth {h["start"]:.0f}-{h["end"]:.0f} s)',
                messages.Query(tenant_id="default", stream_ids=[stream], text=question, top_k=3),
                check=lambda a, h=h: None if a.evidence[0].text and
                a.evidence[0].t_start <= h["end"] and a.evidence[0].t_end >= h["start"] else
                f"best evidence {a.evidence[0].t_start:.1f}-{a.evidence[0].t_end:.1f} s misses the headline "
                f"{h['start']:.1f}-{h['end']:.1f} s")
        console.rule("where to look")
        console.print(f"HTTP API and its OpenAPI docs: {http_url}/docs")
        console.print(f"Ray dashboard (actors, logs, metrics): {state.ray_dashboard or 'external Ray cluster'}")
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        console.print_exception()
    finally:
        if not keep:
            local_stack.down(config.data_dir)
    if failures:
        console.print(f"[red bold]demo failed[/red bold]: {failures}")
        return False
    console.print("[green bold]demo ok[/green bold]")
    return True


def _wait_for_memory(config: LivelensConfig, stream: str, timeout_s: float, segments: int = 1) -> None:
    """Until memory holds ``segments`` segments of ``stream``; after ``timeout_s`` the questions are asked
    anyway (and their checks say what is missing)."""
    import redis

    from memory_store.redis_tier import RedisTier

    tier = RedisTier(redis.Redis.from_url(config.redis.url), config.memory)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = tier.stream_info("default", stream)
        if info is not None and info.segments >= segments:
            return
        time.sleep(0.5)


def _wait_until(publisher: threading.Thread, fast: bool, seconds: float) -> None:
    if fast:
        publisher.join()
        time.sleep(3)
    else:
        time.sleep(seconds)
