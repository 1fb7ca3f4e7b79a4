"""Kafka tools that know nothing of livelens drive it (Debian's kcat), and records in the old framing still work."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from contracts import messages
from pipelines.api.client import Client
from pipelines.kafka.client import ensure_topics
from pipelines.kafka.publish import segment_header
from pipelines.segmenter import iter_segments
from tests.integration.test_pipeline import assert_each_segment_once, stored_segments
from tests.integration.conftest import wait_for
from tests.legacy_records import framed

pytestmark = pytest.mark.integration


# Debian bookworm's kcat links librdkafka 2.0.2, which cannot parse the tagged fields of the local broker's
# (tansu 0.6) ApiVersions v3 reply ("ApiVersionRequest failed: Local: Read underflow") and, since librdkafka 2.0,
# cannot skip that request either. Newer librdkafka parses it (2.16 checked). kcat then runs against a newer
# librdkafka.so.1 of the same ABI: the one in LIVELENS_TEST_LIBRDKAFKA_DIR, else the one bundled in the
# confluent-kafka wheel (a test dependency).
_UNDERFLOW = "ApiVersionRequest failed: Local: Read underflow"


def _newer_librdkafka_dir() -> str:
    configured = os.environ.get("LIVELENS_TEST_LIBRDKAFKA_DIR")
    if configured:
        return configured
    spec = importlib.util.find_spec("confluent_kafka")
    bundled = sorted(Path(spec.origin).parents[1].glob("confluent_kafka.libs/librdkafka-*.so.1")) if spec else []
    if not bundled:
        raise FileNotFoundError("this kcat's librdkafka cannot talk to the local broker and no newer one was found: "
                                "install the test extra (confluent-kafka) or set LIVELENS_TEST_LIBRDKAFKA_DIR")
    # The dynamic loader looks for the soname kcat asks for.
    linked = Path(tempfile.mkdtemp(prefix="librdkafka-")) / "librdkafka.so.1"
    linked.symlink_to(bundled[-1])
    return str(linked.parent)


@functools.cache
def _kcat_env(bootstrap: str) -> dict[str, str]:
    if shutil.which("kcat") is None:
        raise FileNotFoundError("kcat not found; `make setup` installs it (Debian package kcat)")
    probe = subprocess.run(["kcat", "-b", bootstrap, "-L"], capture_output=True, text=True, timeout=30)
    if probe.returncode == 0:
        return dict(os.environ)
    assert _UNDERFLOW in probe.stderr, probe.stderr
    return {**os.environ, "LD_LIBRARY_PATH": _newer_librdkafka_dir()}


def kcat(config, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["kcat", "-b", config.kafka.bootstrap, *args], input=stdin, capture_output=True,
                          text=True, timeout=60, env=_kcat_env(config.kafka.bootstrap))
    assert done.returncode == 0, done.stderr
    return done.stdout


def kcat_read(config, topic: str, want, what: str, timeout_s: float = 90) -> dict:
    """The first record value (JSON) on ``topic`` for which ``want(key, value)`` holds, read with kcat."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = kcat(config, "-C", "-t", config.kafka.topic(topic), "-o", "beginning", "-e", "-q", "-f", "%k\t%s\n")
        for line in out.splitlines():
            key, _, value = line.partition("\t")
            document = json.loads(value)  # every value on these topics is plain JSON
            if want(key, document):
                return document
        time.sleep(1)
    raise AssertionError(f"kcat never read {what} on {topic}")


def test_kcat_ingests_a_segment_file_asks_and_reads_the_answer_and_an_alert(deployed, sample_video, tmp_path: Path):
    video, truth = sample_video
    config = deployed(http=True)
    ensure_topics(config.kafka)
    watched = truth["headlines"][0]["text"]
    standing = Client(config, timeout_s=60).register_standing(text=f"news about {watched.lower()}",
                                                             stream_ids=["news"])

    # Each segment from a file, its metadata in record headers, as any encoder's shell script could do.
    start = datetime.now(UTC)
    segments = list(iter_segments(str(video)))
    for media in segments:
        path = tmp_path / f"news-{media.seq}.ts"
        path.write_bytes(media.payload)
        meta = segment_header(media, stream_id="news", tenant_id="default", start=start)
        kcat(config, "-P", "-t", config.kafka.topic("segments"), "-k", "news", "-H", "livelens.contract=2",
             "-H", f"livelens.segment={meta.model_dump_json(by_alias=True)}", str(path))
    wait_for(lambda: stored_segments(config, "news") == len(segments), 120, "the kcat-produced segments in memory")
    assert_each_segment_once(config, "news", len(segments))

    # A question typed by hand, answered on the answers topic as plain JSON.
    question = {"schema": "query", "version": 1, "tenant_id": "default", "query_id": "asked-with-kcat",
                "stream_ids": ["news"], "text": "what happened", "top_k": 3}
    kcat(config, "-P", "-t", config.kafka.topic("queries"), "-k", "default", stdin=json.dumps(question) + "\n")
    answer = kcat_read(config, "answers", lambda key, a: key == "asked-with-kcat", "the answer")
    assert answer["schema"] == "answer" and answer["error"] is None
    assert answer["evidence"] and all(e["stream_id"] == "news" for e in answer["evidence"])
    messages.Answer.model_validate(answer)

    # The standing query's alert, as a Connect sink or an on-call script would follow it.
    alert = kcat_read(config, "alerts", lambda key, a: a.get("query_id") == standing["query_id"], "the alert")
    assert alert["schema"] == "alert" and alert["kind"] == "standing_query" and alert["stream_id"] == "news"
    messages.Alert.model_validate(alert)


def test_records_in_the_old_framing_still_ingest_and_answer(deployed, sample_video):
    """Wire contract 1, as earlier builds wrote it: a deployment rolls over without draining its topics."""
    video, _ = sample_video
    config = deployed()
    ensure_topics(config.kafka)
    producer = KafkaProducer(bootstrap_servers=config.kafka.bootstrap, max_request_size=2 << 20)
    start = datetime.now(UTC)
    segments = list(iter_segments(str(video)))
    for media in segments:
        # Chunked as the old publisher did, so reassembly of old records is covered too.
        meta = segment_header(media, stream_id="old", tenant_id="default", start=start)
        for chunk_meta, chunk in messages.chunk_segment(meta, media.payload, max(len(media.payload) // 2, 20_000)):
            producer.send(config.kafka.topic("segments"), key=b"old", value=framed(chunk_meta, bytes(chunk)))
    question = messages.Query(tenant_id="default", query_id="asked-the-old-way", stream_ids=["old"],
                              text="what happened", top_k=3)
    producer.flush()
    wait_for(lambda: stored_segments(config, "old") == len(segments), 120, "the old-framing segments in memory")
    assert_each_segment_once(config, "old", len(segments))

    producer.send(config.kafka.topic("queries"), key=b"default", value=framed(question)).get(timeout=30)
    producer.close()
    answers = KafkaConsumer(config.kafka.topic("answers"), bootstrap_servers=config.kafka.bootstrap, group_id=None,
                            auto_offset_reset="earliest", consumer_timeout_ms=90_000)
    answer = next(messages.decode(r.value, expect=messages.Answer)[0] for r in answers if r.key == b"asked-the-old-way")
    answers.close()
    assert answer.error is None and answer.evidence
    assert all(e.stream_id == "old" for e in answer.evidence)
