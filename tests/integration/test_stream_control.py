"""Managing streams over HTTP and the stream-control topic, on a deployed pipeline: pause during live ingest,
resume with and without catch-up, delete, purge, per-stream retention, and another tenant's reach."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import httpx
import pytest

from contracts import messages
from memory_store.redis_tier import RedisTier
from pipelines.cli.demo import frame_at
from pipelines.kafka.client import ensure_topics, make_producer
from pipelines.kafka.publish import new_session_id, segment_header
from pipelines.segmenter import iter_segments
from tests.integration.conftest import _free_port, redis_client, wait_for
from tests.integration.test_dashboard import ARTIFACTS, browser  # noqa: F401 (the fixture)
from tests.integration.test_pipeline import assert_each_segment_once, dead_letters, segment_ids, stored_segments

pytestmark = pytest.mark.integration

# Quick to take effect, so the test waits little: a pause reaches the sources within state_ttl_s.
STREAMS = {"state_ttl_s": 0.3, "purge_settle_s": 1.0}
SEGMENTS = 6  # of the sample video's 2 s segments: enough for three parts, quick on two cores


class Publisher:
    """Publishes a video's segments in parts, all of one publishing session, as a live encoder would."""

    def __init__(self, config, video, stream: str, tenant: str = "default"):
        self.config, self.stream, self.tenant = config, stream, tenant
        self.media = list(iter_segments(str(video)))[:SEGMENTS]
        self.session, self.start = new_session_id(), datetime.now(UTC)
        ensure_topics(config.kafka)
        self.producer = make_producer(config.kafka)

    def send(self, seqs: range) -> None:
        for media in self.media[seqs.start:seqs.stop]:
            header = segment_header(media, stream_id=self.stream, tenant_id=self.tenant, start=self.start,
                                    session=self.session)
            for chunk_header, chunk in messages.chunk_segment(header, media.payload,
                                                              self.config.kafka.max_message_bytes):
                value, headers = messages.segment_record(chunk_header, chunk)
                self.producer.send(self.config.kafka.topic("segments"), key=self.stream.encode(), value=value,
                                   headers=headers)
        self.producer.flush(30)


def _cli(config, key: str, *args: str):
    """`livelens ...` against the test's API, as an operator's shell would run it with their key."""
    from typer.testing import CliRunner

    from pipelines.cli.main import app

    env = {"LIVELENS_API_KEY": key, "LIVELENS_SERVE__PORT": str(config.serve.port),
           "LIVELENS_DATA_DIR": str(config.data_dir)}
    return CliRunner().invoke(app, list(args), env=env)


def _api(config, key: str | None = None):
    base = f"http://{config.serve.host}:{config.serve.port}"
    headers = {"authorization": f"Bearer {key}"} if key else {}

    def call(method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(method, f"{base}{path}", headers=headers, timeout=60, **kwargs)

    return call


@pytest.mark.timeout(600)  # ~2 min on a quiet 2-core machine; a shared one takes longer
def test_pause_skips_live_segments_resume_stores_again_and_catch_up_stores_the_paused_span_once(deployed,
                                                                                                 sample_video):
    video, _ = sample_video
    config = deployed(http=True, streams=STREAMS)
    call = _api(config)
    plain, caught = Publisher(config, video, "plain"), Publisher(config, video, "caught")
    n = len(plain.media)
    first, paused, last = range(0, n // 3), range(n // 3, 2 * n // 3), range(2 * n // 3, n)

    for publisher in (plain, caught):
        publisher.send(first)
    wait_for(lambda: all(stored_segments(config, s) == len(first) for s in ("plain", "caught")), 120,
             "the first part of both streams")
    # One paused over HTTP, the other by a command on the stream-control topic (with one that is refused).
    response = call("POST", "/v1/streams/plain/pause")
    assert response.status_code == 200 and response.json()["state"] == "paused", response.text
    producer, topic = make_producer(config.kafka), config.kafka.topic("stream_control")
    for command in (messages.StreamCommand(tenant_id="default", stream_id="nowhere", action="pause"),
                    messages.StreamCommand(tenant_id="default", stream_id="caught", action="pause",
                                           requested_by="ops-bot")):
        producer.send(topic, key=command.stream_id.encode(), value=messages.encode(command)).get(30)
    wait_for(lambda: call("GET", "/v1/streams/caught").json()["state"] == "paused", 60, "the pause command applied")
    letter = dead_letters(config, 1)[0]  # a command that cannot be applied: a dead letter with the refusal's code
    assert (letter.stage, letter.code, letter.source_topic) == ("stream_control", "not_found", topic)
    time.sleep(STREAMS["state_ttl_s"] * 2)
    for publisher in (plain, caught):
        publisher.send(paused)
    wait_for(lambda: all(call("GET", f"/v1/streams/{s}").json()["segments_skipped"] == len(paused)
                         for s in ("plain", "caught")), 60, "the paused segments acknowledged and skipped")
    # Nothing of the paused span was stored, and the skips are no dead letters: the sources committed past them.
    assert [stored_segments(config, s) for s in ("plain", "caught")] == [len(first)] * 2

    assert call("POST", "/v1/streams/plain/resume").json()["state"] == "live"
    # plain decodes at a rate of its own from now on: half the configured one.
    own_fps = config.decode.sample_fps / 2
    changed = call("PATCH", "/v1/streams/plain", json={"sample_fps": own_fps}).json()
    assert changed["stream"]["sampling"] == "stream" and changed["stream"]["retention"] == "global", changed
    frames_before = RedisTier(redis_client(config), config.memory).stream_info("default", "plain").frames
    resumed = call("POST", "/v1/streams/caught/resume", params={"catch_up": "true"}).json()
    assert resumed["state"] == "live" and resumed["catch_up_pending"], resumed
    # A resume reaches the sources within streams.state_ttl_s, as a pause does: a segment the source reads
    # sooner may still find the state it cached while skipping the paused span (seen in CI: 4 skipped).
    time.sleep(STREAMS["state_ttl_s"] * 2)
    for publisher in (plain, caught):
        publisher.send(last)
    wait_for(lambda: stored_segments(config, "plain") == len(first) + len(last), 120, "plain after its resume")
    wait_for(lambda: stored_segments(config, "caught") == n, 180, "caught, its paused span caught up")
    wait_for(lambda: not call("GET", "/v1/streams/caught").json()["catch_up_pending"], 30, "the catch-up done")
    assert_each_segment_once(config, "caught", n)
    stored_plain = sorted(int(s.rpartition("-")[2]) for s in segment_ids(config, "plain"))
    assert stored_plain == [*first, *last]
    frames_after = RedisTier(redis_client(config), config.memory).stream_info("default", "plain").frames
    per_segment = plain.media[0].duration_s * config.decode.sample_fps
    assert frames_after - frames_before == pytest.approx(len(last) * per_segment / 2, abs=1), "its own fps"
    trail = call("GET", "/v1/streams/caught/audit").json()
    assert [e["action"] for e in trail][:3] == ["caught_up", "resume", "pause"]
    assert trail[2]["by"].startswith("ops-bot (command ")


@pytest.mark.timeout(600)
def test_delete_keeps_history_purge_erases_it_everywhere_retention_per_stream_and_tenants_apart(deployed,
                                                                                               sample_video, browser):
    video, _ = sample_video
    api_keys = {"acme": "key-acme-0123456789abcdef", "globex": "key-globex-0123456789abcdef"}
    config = deployed(http=True, streams=STREAMS,
                      serve={"port": _free_port(), "api_keys": {k: t for t, k in api_keys.items()},
                             "queries_per_s": 1000})
    acme, globex = _api(config, api_keys["acme"]), _api(config, api_keys["globex"])
    news, brief = Publisher(config, video, "news", "acme"), Publisher(config, video, "brief", "acme")
    n = len(news.media)
    news.send(range(0, n))
    brief.send(range(0, 4))
    Publisher(config, video, "news", "globex").send(range(0, 2))
    wait_for(lambda: stored_segments(config, "news", "acme") == n and stored_segments(config, "brief", "acme") == 4
             and stored_segments(config, "news", "globex") == 2, 150, "every stream stored")

    # Another tenant's stream can be neither read, paused, deleted nor configured: its id names the caller's own.
    for method, path in (("GET", "/v1/streams/brief"), ("POST", "/v1/streams/brief/pause"),
                         ("DELETE", "/v1/streams/brief"), ("PATCH", "/v1/streams/brief")):
        kwargs = {"json": {"retention_s": 1}} if method == "PATCH" else {}
        assert globex(method, path, **kwargs).status_code == 404
        assert globex(method, path, params={"tenant_id": "acme"}, **kwargs).status_code == 403
    assert globex("DELETE", "/v1/streams/news", params={"purge": "true"}).status_code == 200  # globex's own news
    assert acme("GET", "/v1/streams/brief").json()["state"] == "live"
    assert stored_segments(config, "news", "acme") == n
    assert httpx.get(f"http://{config.serve.host}:{config.serve.port}/v1/streams").status_code == 401

    # The dashboard, behind the key: each stream's state, with buttons that pause, resume and delete it.
    browser.goto(f"http://{config.serve.host}:{config.serve.port}/dashboard?key={api_keys['acme']}")
    cell = "document.querySelector('tr[data-stream=\"acme/brief\"] .control')"
    state = f"({cell} && {cell}.querySelector('.state').textContent)"
    for button, after in (("pause", "paused"), ("resume", "live"), ("delete", None), ("delete", "deleted"),
                          ("resume", "live")):
        try:
            browser.wait(f"Boolean({cell} && {cell}.querySelector('button.{button}'))", 90,
                         f"the {button} button")
        except AssertionError:
            print("page:", browser.evaluate("document.getElementById('updated').textContent"),
                  browser.evaluate("document.querySelector('#streams tbody').innerHTML"))
            raise
        browser.evaluate(f"{cell}.querySelector('button.{button}').click()")
        if after is None:  # deleting takes a second click on the armed button
            continue
        browser.wait(f"{state} === '{after}'", 60, f"brief {after} from the page")
        assert acme("GET", "/v1/streams/brief").json()["state"] == after
        if after == "paused":
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            browser.screenshot(ARTIFACTS / "dashboard-stream-control.png")

    # Per-stream retention shorter than the global one evicts that stream alone.
    changed = acme("PATCH", "/v1/streams/brief", json={"retention_s": 1.0}).json()
    assert changed["evicted"] > 0 and changed["stream"]["retention"] == "stream", changed
    listed = {s["stream_id"]: s for s in acme("GET", "/v1/streams").json()}
    assert listed["brief"]["coverage"] is None and listed["news"]["frames"] > 0, listed

    # Delete: ingest stops, the history stays searchable.
    image = frame_at(video, 3.0)
    ask = {"stream_ids": ["news"], "text": "what happened", "generate": False, "top_k": 5}
    before = acme("POST", "/v1/query", json=ask).json()["evidence"]
    assert before and all(e["stream_id"] == "news" for e in before)
    deleted = _cli(config, api_keys["acme"], "streams", "delete", "news", "--json")
    assert deleted.exit_code == 0 and json.loads(deleted.stdout)["state"] == "deleted", deleted.output
    assert _cli(config, api_keys["globex"], "streams", "pause", "brief").exit_code == 2  # not globex's
    assert acme("POST", "/v1/query", json=ask).json()["evidence"] == before
    # A new publishing session of the deleted stream is a new session of it: ingested again.
    Publisher(config, video, "news", "acme").send(range(0, 2))
    wait_for(lambda: stored_segments(config, "news", "acme") == n + 2, 120, "the stream published again")
    assert acme("GET", "/v1/streams/news").json()["state"] == "live"

    # Purge: every query path forgets it at once, by text, by image and by time; its thumbnails are gone.
    thumbnail = before[0]["thumbnail"]
    assert acme("GET", f"/v1/thumbnails/{thumbnail}").status_code == 200
    purged = acme("DELETE", "/v1/streams/news", params={"purge": "true"})
    assert purged.status_code == 200 and purged.json()["state"] == "purged", purged.text
    for body in (ask, {"text": "what happened", "generate": False, "top_k": 50},
                 {"image_jpeg_b64": image, "generate": False, "top_k": 50},
                 {"stream_ids": ["news"], "since_s": 3600, "generate": False, "top_k": 50}):
        evidence = acme("POST", "/v1/query", json=body).json()["evidence"]
        assert all(e["stream_id"] != "news" for e in evidence), body
    assert acme("GET", "/v1/streams/news/timeline").json() == []
    assert acme("GET", f"/v1/thumbnails/{thumbnail}").status_code == 404
    assert "news" not in {s["stream_id"] for s in acme("GET", "/v1/streams").json()}
    leftovers = [k.decode() for k in redis_client(config).scan_iter(match="ll:{acme}:*")
                 if b":news" in k or b"acme/news/" in k]
    assert sorted(leftovers) == ["ll:{acme}:control:news"], leftovers
    # The erasure is audited, without content: who, when, how much.
    audit = acme("GET", "/v1/streams/news/audit").json()
    assert audit[0]["action"] == "purge" and audit[0]["keys"] > 0 and set(audit[0]) <= {
        "id", "at", "stream_id", "action", "by", "archived_files", "alerts", "keys"}, audit[0]
