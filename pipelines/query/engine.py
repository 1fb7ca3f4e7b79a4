"""Answering queries: embed the question, retrieve evidence from memory, hand it to the answerer.

The same `QueryEngine` serves both doors: the queries topic (`QueryConsumer`,
answers to the answers topic) and HTTP (`pipelines.api.http`).
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from kafka.structs import OffsetAndMetadata

from contracts import messages
from memory_store import keys
from memory_store.client import MemoryClient
from operators.frames import StageError
from pipelines import metrics
from pipelines.clips import with_clip_urls
from pipelines.config import LivelensConfig
from pipelines.failures import Backoff, dependency_of
from pipelines.kafka import dead_letters, tenancy
from pipelines.kafka.client import ensure_topics, make_consumer, make_producer
from pipelines.query.clients import Answering, QueryEncoder
from pipelines.query.spoken import said_around, source_of, spoken_hits

log = logging.getLogger(__name__)


# Cosine (all-MiniLM-L6-v2) above which on-screen text counts as matching the question. Paraphrases of a
# headline score ~0.5-0.8, unrelated headlines ~0.0-0.2; below this, visual evidence is the better answer.
TEXT_MATCH_MIN_SCORE = 0.35


# Questions about the present ("what is on screen right now"): the recency gate answers them from the newest
# seconds of each stream. Matched as words, so "nowhere" or "known" do not trip it.
_ABOUT_NOW = re.compile(r"\b(right now|now|currently|at the moment|at present|live right now)\b", re.IGNORECASE)


def is_about_now(text: str) -> bool:
    return bool(_ABOUT_NOW.search(text))


# first / last occurrence: a hit counts as a match when it scores at least this share of the best one.
OCCURRENCE_SHARE = 0.9


def pick_occurrence(hits: list[Any], which: str, k: int) -> list[Any]:
    """The earliest (or latest) k of the hits that match about as well as the best one."""
    if not hits:
        return []
    best = max(h.score for h in hits)
    matching = sorted((h for h in hits if h.score >= best * OCCURRENCE_SHARE), key=lambda h: h.wallclock_start)
    return matching[:k] if which == "first" else matching[-k:]


def adaptive_cut(hits: list[Any]) -> list[Any]:
    """Adaptive k (methods.md section 5), as livelens reads it: when the scores are flat (coefficient of
    variation <= 0.05) the ranking says little, so all top-k stay; when they are peaked (CV >= 0.3) only the
    hits above mean + std stay; in between the cut moves linearly from the mean - std to the mean + std."""
    if len(hits) < 3:
        return hits
    scores = np.array([h.score for h in hits], dtype=np.float64)
    mean, std = scores.mean(), scores.std()
    cv = std / abs(mean) if mean else 0.0
    if cv <= 0.05:
        return hits
    weight = min(1.0, (cv - 0.05) / 0.25)
    cut = mean + (2 * weight - 1) * std
    kept = [h for h in hits if h.score >= cut]
    return kept or hits[:1]


class QueryError(Exception):
    """A query that cannot be answered as asked. ``code`` is stable (HTTP error bodies, dead letters)."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status


def _iso(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def decode_image(b64: str, max_pixels: int) -> np.ndarray:
    """A query's example image: JPEG, PNG or WebP, size checked from its header (pipelines/query/images.py)."""
    from pipelines.query.images import ImageRefused, decode_query_image

    try:
        return decode_query_image(base64.b64decode(b64, validate=True), max_pixels)
    except ImageRefused as exc:
        raise QueryError("bad_image", f"image_jpeg_b64: {exc}") from None
    except ValueError as exc:  # binascii.Error: not base64
        raise QueryError("bad_image", f"image_jpeg_b64 is not base64: {exc}") from None


class QueryEngine:
    """Retrieval plus answer over three typed collaborators: memory, the query encoder and the answerer.

    In a deployment they are the Ray clients of the running actors (pipelines/ray/query.py builds the engine);
    in a test or a script, the store, the encoder and the answerer themselves.
    """

    def __init__(self, config: LivelensConfig, memory: MemoryClient, encoder: QueryEncoder, answerer: Answering):
        self.config = config
        self.memory = memory
        self.encoder = encoder
        self.answerer = answerer
        self.text_embedder = None
        # On-screen text and transcript lines are embedded with one model; questions search both with it.
        if config.ocr.enabled or config.transcript.enabled:
            from operators.ocr import TextEmbedder

            self.text_embedder = TextEmbedder()

    def embed(self, query: messages.Query) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(the query vector in the index's space, the example image's tokens for the rerank); the vector is
        None for a text-less, image-less query ("what is on now"), the tokens None unless there is an image."""
        try:
            if query.image_jpeg_b64:
                tokens, vectors = self.encoder.encode_images(
                    decode_image(query.image_jpeg_b64, self.config.query.max_image_pixels))
                return vectors[0], tokens[0]
            if query.text.strip():
                return self.encoder.embed_text([query.text])[0], None
        except StageError as exc:
            raise QueryError(exc.code, exc.reason) from None
        return None, None

    def _now_window(self, query: messages.Query, t_from: float | None) -> tuple[float | None, dict[str, float]]:
        """Recency gate: for a question about now, the earliest start any stream's window allows and, per
        stream, where its window starts (its newest stored frame minus ``query.now_window_s``)."""
        if not is_about_now(query.text):
            return t_from, {}
        window = self.config.query.now_window_s
        infos = self.memory.streams(query.tenant_id)
        starts = {i.stream_id: i.last_wallclock - window for i in infos
                  if not query.stream_ids or i.stream_id in query.stream_ids}
        if not starts:
            return t_from, {}
        earliest = min(starts.values())
        return (earliest if t_from is None else max(t_from, earliest)), starts

    def _rerank(self, query: messages.Query, hits: list[Any], query_tokens: np.ndarray) -> list[Any]:
        from operators.late_interaction import Candidate, LateInteractionReranker

        records = self.memory.frames(query.tenant_id, [h.frame_key for h in hits])
        reranker = LateInteractionReranker(tokens_per_frame=len(query_tokens), weight=self.config.query.rerank_weight)
        return reranker.rerank(query_tokens, [Candidate(h, r.tokens if r else None) for h, r in zip(hits, records)])

    def evidence(self, query: messages.Query) -> list[Any]:
        """Up to top_k hits: on-screen text and transcript lines (what was said) that match a text question,
        by score; else the visual index; the newest frames for a question with neither text nor image."""
        t_from, t_to = query.scope.resolve()
        t_from, now_starts = self._now_window(query, t_from)
        streams = query.stream_ids or None
        # first / last occurrence: look wider, keep what matches about as well as the best, then pick by time.
        depth = query.top_k if query.occurrence == "best" else max(10 * query.top_k, 50)
        text_hits = []
        if self.text_embedder is not None and query.text.strip() and not query.image_jpeg_b64:
            vector = self.text_embedder.embed([query.text])[0]
            text_hits = [h for h in self.memory.search_text(query.tenant_id, vector, stream_ids=streams,
                                                            t_from=t_from, t_to=t_to, k=depth)
                         if h.score >= TEXT_MATCH_MIN_SCORE]
            text_hits += spoken_hits(self.memory, query.tenant_id, vector, stream_ids=streams, t_from=t_from,
                                     t_to=t_to, k=depth, min_score=TEXT_MATCH_MIN_SCORE)
            text_hits = sorted(text_hits, key=lambda h: (-h.score, h.wallclock_start))[:depth]
        # On-screen text that matches is the evidence a person can check; the visual search is then not needed.
        vector, query_tokens = (None, None) if text_hits else self.embed(query)
        if vector is None and not text_hits:
            from memory_store.service import Hit

            # Nothing to match against: "what is on now" is answered by the newest frames, scored by recency;
            # a query scoped in time ("what was on between 9 and 10") by the newest frames inside its scope.
            records = self.memory.recent(query.tenant_id, streams, query.top_k, t_from=t_from, t_to=t_to)
            return [Hit(r.frame_key, r.stream_id, r.seq, r.pts_s, r.t_end_s, r.wallclock_start, r.wallclock_end,
                        1.0, r.thumbnail) for r in records]
        if text_hits:
            hits = text_hits
        else:
            rerank = query_tokens is not None and self.config.query.rerank_weight > 0
            wide = max(depth, self.config.query.rerank_depth) if rerank else depth
            hits = self.memory.search(query.tenant_id, vector, stream_ids=streams, t_from=t_from, t_to=t_to,
                                      k=wide)
            if rerank and hits:
                hits = self._rerank(query, hits, query_tokens)[:depth]
        if now_starts:
            hits = [h for h in hits if h.wallclock_start >= now_starts.get(h.stream_id, float("-inf"))]
        if query.occurrence != "best":
            return pick_occurrence(hits, query.occurrence, query.top_k)
        return adaptive_cut(hits) if query.adaptive_k else hits

    def run(self, query: messages.Query) -> messages.Answer:
        with metrics.query(query):
            return self._run(query)

    def _run(self, query: messages.Query) -> messages.Answer:
        started = time.perf_counter()
        hits = sorted(self.evidence(query), key=lambda h: (h.wallclock_start, h.stream_id))
        # The stored frames behind the hits: their on-screen text for every piece of evidence, and their
        # kept tokens for an answer model that reads them.
        # A transcript hit is a line, not a frame: its record is None, its words are its own.
        records = self.memory.frames(query.tenant_id, [h.frame_key for h in hits])
        texts = [getattr(h, "text", "") or (r.text if r else "") for h, r in zip(hits, records)]
        evidence = [
            messages.Evidence(stream_id=h.stream_id, frame_key=h.frame_key, t_start=h.t_start, t_end=h.t_end,
                              wallclock_start=_iso(h.wallclock_start), wallclock_end=_iso(h.wallclock_end),
                              score=float(h.score), segment_seq=h.seq, thumbnail=h.thumbnail, text=text,
                              lines=getattr(h, "lines", None) or (r.lines if r else []),
                              source=source_of(h) or ("ocr" if text else None),
                              confidence=getattr(h, "confidence", None),
                              words=[dict(zip(("text", "start_s", "end_s", "confidence"), w))
                                     for w in getattr(h, "words", [])])
            for h, r, text in zip(hits, records, texts)
        ]
        evidence = with_clip_urls(self.config, query.tenant_id, evidence)
        text, extractive, model = "", True, ""
        if query.generate:
            result = self._answer(query, hits, records, texts)
            text, extractive, model = result.text, result.extractive, result.model
        return messages.Answer(tenant_id=query.tenant_id, query_id=query.query_id, answer=text,
                               extractive=extractive, model=model, evidence=evidence,
                               latency_ms=(time.perf_counter() - started) * 1000)

    def _answer(self, query: messages.Query, hits: list[Any], records: list[Any], texts: list[str]):
        from operators.answer import EvidenceItem

        transcripts = self.config.transcript.enabled
        items = [
            EvidenceItem(stream_id=h.stream_id, t_start=h.t_start, t_end=h.t_end,
                         wallclock_start=_iso(h.wallclock_start).isoformat(), score=float(h.score),
                         tokens=r.tokens if r else None, positions=r.positions if r else None,
                         text=(r.text if r else "") if source_of(h) not in (None, "ocr") else text,
                         said=said_around(self.memory, query.tenant_id, h) if transcripts else "")
            for h, r, text in zip(hits, records, texts)
        ]
        question = query.text or ("When was this image on screen?" if query.image_jpeg_b64 else "What is on screen now?")
        return self.answerer.answer(question, items)

    # -- standing queries --------------------------------------------------------------------

    def register_standing(self, tenant_id: str, *, text: str = "", image_jpeg_b64: str | None = None,
                          stream_ids: list[str] | None = None, min_score: float | None = None,
                          rearm_s: float = 10.0, webhook: str | None = None, limit: int | None = None):
        """Embed the query once and register it. Text matches on-screen text and transcript lines; an image
        matches frames. With ``limit``, only while the tenant has fewer standing queries (checked and added in one
        Redis step)."""
        from pipelines.query.standing import StandingQuery, StandingQuotaFull

        if webhook:
            self._check_webhook(tenant_id, webhook)
        text_vector = image_vector = None
        if image_jpeg_b64:
            image_vector = self.encoder.embed_images(
                decode_image(image_jpeg_b64, self.config.query.max_image_pixels))[0].tolist()
        elif text.strip():
            if self.text_embedder is None:
                raise QueryError("ocr_disabled", "standing text queries match on-screen text and what was said: "
                                 "enable ocr or transcript")
            text_vector = self.text_embedder.embed([text])[0].tolist()
        else:
            raise QueryError("empty_query", "a standing query needs text or an example image")
        query = StandingQuery(tenant_id=tenant_id, stream_ids=stream_ids or [], text=text, text_vector=text_vector,
                              image_vector=image_vector, min_score=min_score, rearm_s=rearm_s, webhook=webhook)
        try:
            return self._standing_registry().register(query, limit=limit)
        except StandingQuotaFull as exc:
            raise QueryError("quota_exceeded", str(exc), 429) from None

    def _check_webhook(self, tenant_id: str, url: str) -> None:
        """At registration, so the tenant learns at once; checked again on every delivery (DNS changes)."""
        from pipelines.query.webhooks import WebhookRefused, check_destination

        if tenant_id not in self.config.webhooks.signing_secrets:
            raise QueryError("webhook_unsigned", f"tenant {tenant_id} has no webhook signing secret: ask the operator "
                             "to set webhooks.signing_secrets, so that the receiver can check who sent an alert")
        try:
            check_destination(url, self.config.webhooks)
        except WebhookRefused as exc:
            raise QueryError("webhook_refused", str(exc)) from None

    def list_standing(self, tenant_id: str):
        return self._standing_registry().list(tenant_id)

    def delete_standing(self, tenant_id: str, query_id: str) -> bool:
        return self._standing_registry().delete(tenant_id, query_id)

    def _standing_registry(self):
        from pipelines.query.standing import StandingRegistry
        from pipelines.redis_io import redis_client

        return StandingRegistry(redis_client(self.config.redis))

    def timeline(self, tenant_id: str, stream_id: str, t_from: float | None, t_to: float | None,
                 limit: int) -> list[Any]:
        return self.memory.timeline(tenant_id, _checked_stream(stream_id), t_from, t_to, limit)

    def transcript(self, tenant_id: str, stream_id: str, t_from: float | None, t_to: float | None,
                   limit: int) -> list[Any]:
        """The stream's transcript lines starting in [t_from, t_to] (epoch s), oldest first."""
        return self.memory.transcript(tenant_id, _checked_stream(stream_id), t_from, t_to, limit)

    def streams(self, tenant_id: str) -> list[Any]:
        return self.memory.streams(tenant_id)

    def thumbnail(self, tenant_id: str, key: str) -> bytes | None:
        """None when there is no such thumbnail of this tenant (other tenants' keys included)."""
        if keys.thumbnail_tenant(key) != tenant_id:
            return None
        try:
            return self.memory.thumbnail(key)
        except ValueError:
            return None


def _checked_stream(stream_id: str) -> str:
    """A stream id from a request, refused (422) unless it is one memory could hold."""
    from memory_store.keys import check_id

    try:
        check_id("stream", stream_id)
    except ValueError as exc:
        raise QueryError("invalid_request", str(exc), 422) from None
    return stream_id


class QueryConsumer:
    """Queries topic in, answers topic out. An offset is committed after its answer is acknowledged.

    Supervised like the ingest source: a broker or a dependency away (memory, the encoder) makes the loop drop
    its clients, wait with capped backoff and resume from the committed offset; a query that our code fails on
    (a malformed image that slipped past its checks, a bug) is a dead letter, never a dead consumer."""

    def __init__(self, config: LivelensConfig, engine: QueryEngine):
        self.config = config
        self.engine = engine
        self.answered = 0
        self.dead_letters = 0
        self.reconnects = 0
        self._backoff = Backoff(config.pipeline.retry_initial_s, config.pipeline.retry_max_s)

    def run(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            consumer = producer = None
            try:
                ensure_topics(self.config.kafka)
                producer = make_producer(self.config.kafka)
                consumer = make_consumer(self.config.kafka, self.config.kafka.query_group, [], max_poll_records=16)
                topics = tenancy.TopicWatch(self.config.kafka, "queries")  # every tenant's, with tenant topics
                topics.subscribe(consumer)
                failures = 0
                while not stop.is_set():
                    topics.refresh(consumer)
                    if not topics.topics:  # no tenant has a queries topic yet
                        stop.wait(0.1)
                        continue
                    for tp, records in consumer.poll(timeout_ms=100).items():
                        sends = [self._handle(producer, tp, record) for record in records]
                        # Answers first, then the offset: a crash in between re-answers, never loses. The flush is
                        # bounded and every send checked, so a send the broker refused is never committed past.
                        producer.flush(timeout=self.config.kafka.ack_timeout_s)
                        for future in sends:
                            future.get(timeout=self.config.kafka.ack_timeout_s)
                        consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "", -1)})
            except Exception as exc:
                # Producer and consumer are both rebuilt: one that failed is not trusted again.
                failures += 1
                self.reconnects += 1
                delay = self._backoff.delay(failures)
                dependency = dependency_of(exc)
                if dependency is None:
                    log.exception("query consumer: unexpected error; rebuilding its clients in %.1f s", delay)
                else:
                    log.warning("query consumer: waiting for %s (%s); reconnecting in %.1f s", dependency, exc, delay)
                stop.wait(delay)
            finally:
                for client in (consumer, producer):
                    if client is not None:
                        try:
                            client.close(timeout=5) if client is producer else client.close()
                        except Exception:  # a dead broker's client may fail to close; nothing to save
                            log.debug("close failed", exc_info=True)

    def _handle(self, producer, tp, record):
        """Answer one query record; returns the send's future (the answer's, or its dead letter's)."""
        try:
            query, _ = messages.decode(record.value, expect=messages.Query)
        except messages.MessageError as exc:
            return self._dead_letter(producer, tp, record, exc.code, exc.reason)
        if refused := tenancy.refusal(self.config.kafka, "queries", tp.topic, query.tenant_id):
            # Never answered: running it would read the claimed tenant's memory for whoever wrote the topic.
            return self._dead_letter(producer, tp, record, tenancy.TENANT_MISMATCH, refused.reason,
                                     tenant_id=refused.owner)
        try:
            answer = self.engine.run(query)
        except QueryError as exc:
            answer = messages.Answer(tenant_id=query.tenant_id, query_id=query.query_id, answer="",
                                     extractive=True, error=f"{exc.code}: {exc.message}")
        except Exception as exc:
            if dependency_of(exc) is not None:
                raise  # memory, the encoder or Redis away: not the query's fault; the loop waits and re-reads it
            log.exception("query consumer: query %s failed; dead-lettered", query.query_id)
            return self._dead_letter(producer, tp, record, "query_failed", f"{type(exc).__name__}: {exc}",
                                     tenant_id=query.tenant_id)
        future = producer.send(self.config.kafka.topic("answers", query.tenant_id), key=query.query_id.encode(),
                               value=messages.encode(answer))
        self.answered += 1
        return future

    def _dead_letter(self, producer, tp, record, code: str, reason: str, tenant_id: str | None = None):
        # Not waited for here: the consumer checks every send before it commits the batch's offsets.
        letter = dead_letters.dead_letter(tp, [record.offset], stage="query", code=code, reason=reason,
                                          record_bytes=len(record.value or b""), tenant_id=tenant_id)
        self.dead_letters += 1
        return dead_letters.send(producer, self.config.kafka, letter)
