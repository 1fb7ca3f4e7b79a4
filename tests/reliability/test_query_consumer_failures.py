"""The Kafka query consumer on a real broker and redis-server: a query our code fails on is a dead letter and
the queries behind it are answered (today's consumer thread died on it and Kafka queries stopped for good)."""

from __future__ import annotations

import base64
import io
import threading
import uuid

import numpy as np
from kafka import KafkaConsumer, KafkaProducer
from PIL import Image

from contracts import messages
from memory_store.service import MemoryStore
from pipelines.config import LivelensConfig
from pipelines.query.engine import QueryConsumer, QueryEngine
from pipelines.redis_io import redis_client
from tests.reliability.records import read_dead_letters


class _EncoderThatCrashesOnImages:
    """A query encoder (pipelines/query/clients.py QueryEncoder) whose image path fails the way a model's
    processor can on an image that passed the header checks: not a StageError, not infrastructure."""

    def embed_text(self, texts):
        return np.ones((len(texts), 8), dtype=np.float32)

    def embed_images(self, images):
        raise RuntimeError("the processor cannot resize a 1x1 image")

    encode_images = embed_images


def _tiny_png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (1, 1)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_a_query_the_engine_crashes_on_is_dead_lettered_and_the_next_is_answered(tmp_path, kafka_broker,
                                                                                   redis_server):
    tag = uuid.uuid4().hex[:8]
    config = LivelensConfig(data_dir=tmp_path, redis=dict(url=redis_server.address), ocr=dict(enabled=False),
                            kafka=dict(bootstrap=kafka_broker.address, topic_prefix=f"q{tag}.", partitions=1,
                                       query_group=f"q-{tag}"),
                            pipeline=dict(retry_initial_s=0.05, retry_max_s=0.2))
    memory = MemoryStore(redis_client(config.redis), config.memory, index_dir=None)
    consumer = QueryConsumer(config, QueryEngine(config, memory, _EncoderThatCrashesOnImages(), answerer=None))
    producer = KafkaProducer(bootstrap_servers=config.kafka.bootstrap)
    poison = messages.Query(tenant_id="default", query_id="poison", image_jpeg_b64=_tiny_png(), generate=False)
    good = messages.Query(tenant_id="default", query_id="good", text="what happened", generate=False)
    for query in (poison, good):
        producer.send(config.kafka.topic("queries"), key=query.query_id.encode(), value=messages.encode(query))
    producer.flush()
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        answers = KafkaConsumer(config.kafka.topic("answers"), bootstrap_servers=config.kafka.bootstrap,
                                auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=30_000)
        answer = messages.decode(next(iter(answers)).value, expect=messages.Answer)[0]
        answers.close()
        assert answer.query_id == "good" and answer.error is None
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=30)
    letters = read_dead_letters(config)
    assert [(d.stage, d.code, d.tenant_id) for d in letters] == [("query", "query_failed", "default")]
    assert "cannot resize" in letters[0].reason
