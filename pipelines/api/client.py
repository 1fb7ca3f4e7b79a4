"""A small client for asking livelens questions, over HTTP or over the queries/answers topics."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from contracts import messages
from pipelines.config import LivelensConfig
from pipelines.kafka.checksum import check_fast_checksum
from pipelines.kafka.client import client_security, ensure_topics, make_producer, require_bootstrap


def image_b64(path: Path) -> str:
    """An example image as the query wants it: JPEG, base64."""
    import io

    from PIL import Image

    with Image.open(path) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode()


class StreamRefused(RuntimeError):
    """The API refused a stream operation: ``code`` and ``status`` as its error body gives them."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    def __init__(self, config: LivelensConfig, *, http_url: str | None = None, timeout_s: float = 60.0,
                 api_key: str | None = None):
        self.config = config
        self.http_url = http_url or f"http://{config.serve.host}:{config.serve.port}"
        self.timeout_s = timeout_s
        # The key of an API with serve.api_keys: the key decides the tenant (docs/security.md).
        self.headers = {"authorization": f"Bearer {api_key}"} if api_key else {}

    def stream(self, method: str, stream_id: str | None = None, action: str = "", *, tenant_id: str = "default",
               params: dict | None = None, json: dict | None = None):
        """One call of the stream routes (/v1/streams[/{stream}[/{action}]]); StreamRefused when refused."""
        path = "/v1/streams" + (f"/{stream_id}" if stream_id else "") + (f"/{action}" if action else "")
        response = httpx.request(method, f"{self.http_url}{path}", params={"tenant_id": tenant_id, **(params or {})},
                                 json=json, headers=self.headers, timeout=self.timeout_s)
        if response.status_code != 200:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": response.text[:500]}
            raise StreamRefused(response.status_code, error["code"], error["message"])
        return response.json()

    def ask_http(self, query: messages.Query) -> messages.Answer:
        body = {
            "tenant_id": query.tenant_id, "stream_ids": query.stream_ids, "text": query.text,
            "image_jpeg_b64": query.image_jpeg_b64, "top_k": query.top_k, "generate": query.generate,
            "occurrence": query.occurrence, "adaptive_k": query.adaptive_k,
            "since_s": query.scope.since_s,
            "start": query.scope.start.isoformat() if query.scope.start else None,
            "end": query.scope.end.isoformat() if query.scope.end else None,
        }
        response = httpx.post(f"{self.http_url}/v1/query", json=body, timeout=self.timeout_s)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
        return messages.Answer.model_validate(response.json())

    def ask_kafka(self, query: messages.Query) -> messages.Answer:
        """Produce to the queries topic and wait for the answer with the same query_id."""
        kafka = self.config.kafka
        answers = kafka.topic("answers", query.tenant_id)
        ensure_topics(kafka, tenant_id=query.tenant_id)
        check_fast_checksum("consumer")
        consumer = KafkaConsumer(bootstrap_servers=require_bootstrap(kafka), enable_auto_commit=False,
                                 group_id=None, **client_security(kafka))
        try:
            partitions = consumer.partitions_for_topic(answers) or set()
            tps = [TopicPartition(answers, p) for p in partitions]
            consumer.assign(tps)
            consumer.seek_to_end(*tps)
            for tp in tps:
                consumer.position(tp)  # resolve the end offsets now, before the answer can arrive
            producer = make_producer(kafka)
            producer.send(kafka.topic("queries", query.tenant_id), key=query.tenant_id.encode(),
                          value=messages.encode(query)).get(30)
            producer.close()
            deadline = time.monotonic() + self.timeout_s
            while time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    for record in records:
                        answer, _ = messages.decode(record.value, expect=messages.Answer)
                        if answer.query_id == query.query_id:
                            return answer
            raise TimeoutError(f"no answer to {query.query_id} within {self.timeout_s:.0f} s")
        finally:
            consumer.close()

    def register_standing(self, *, tenant_id: str = "default", text: str = "", image_jpeg_b64: str | None = None,
                          stream_ids: list[str] | None = None, min_score: float | None = None,
                          rearm_s: float = 10.0, webhook: str | None = None) -> dict:
        body = dict(tenant_id=tenant_id, text=text, image_jpeg_b64=image_jpeg_b64, stream_ids=stream_ids or [],
                    min_score=min_score, rearm_s=rearm_s, webhook=webhook)
        response = httpx.post(f"{self.http_url}/v1/standing-queries", json=body, timeout=self.timeout_s)
        if response.status_code != 201:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def delete_standing(self, query_id: str, *, tenant_id: str = "default") -> None:
        response = httpx.delete(f"{self.http_url}/v1/standing-queries/{query_id}", params={"tenant_id": tenant_id},
                                timeout=self.timeout_s)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")

    def alerts(self, *, tenant_id: str = "default", room_id: str | None = None, limit: int = 50) -> list[messages.Alert]:
        """Recent alerts, newest first (GET /v1/alerts)."""
        params = {"tenant_id": tenant_id, "limit": limit} | ({"room_id": room_id} if room_id else {})
        return [messages.Alert.model_validate(a) for a in self._get("/v1/alerts", params)]

    def ack_alert(self, alert_id: str, *, by: str, note: str = "", tenant_id: str = "default") -> messages.Alert:
        response = httpx.post(f"{self.http_url}/v1/alerts/{alert_id}/ack", params={"tenant_id": tenant_id},
                              json={"by": by, "note": note}, timeout=self.timeout_s)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
        return messages.Alert.model_validate(response.json())

    def audit(self, room_id: str, *, tenant_id: str = "default", limit: int = 100) -> list[dict]:
        """A room's moderation audit trail, newest first."""
        return self._get(f"/v1/rooms/{room_id}/audit", {"tenant_id": tenant_id, "limit": limit})

    def _get(self, path: str, params: dict):
        response = httpx.get(f"{self.http_url}{path}", params=params, timeout=self.timeout_s)
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:500]}")
        return response.json()

    def follow_alerts(self, *, tenant_id: str | None = None, query_id: str | None = None,
                      from_beginning: bool = False, timeout_s: float | None = None) -> Iterator[messages.Alert]:
        """Alerts as they arrive on the alerts topic (the tenant's own with kafka.tenant_topics): those of
        ``tenant_id`` and of one standing query, when given."""
        kafka = self.config.kafka
        ensure_topics(kafka, tenant_id=tenant_id)
        check_fast_checksum("consumer")
        consumer = KafkaConsumer(kafka.topic("alerts", tenant_id), bootstrap_servers=require_bootstrap(kafka),
                                 group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest" if from_beginning else "latest",
                                 **client_security(kafka))
        deadline = time.monotonic() + timeout_s if timeout_s else None
        try:
            while deadline is None or time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    for record in records:
                        alert, _ = messages.decode(record.value, expect=messages.Alert)
                        if query_id in (None, alert.query_id) and tenant_id in (None, alert.tenant_id):
                            yield alert
        finally:
            consumer.close()
