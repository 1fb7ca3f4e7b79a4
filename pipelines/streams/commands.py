"""The stream-control topic: typed commands (`contracts.messages.StreamCommand`) applied by `StreamControl`.

For automation that lives on Kafka: the same operations as `/v1/streams/...` and `livelens streams`. A command
is applied, then its offset committed (a crash in between applies it again: every operation is idempotent).
A command that cannot be applied (malformed, an unknown stream, a conflict) becomes a dead letter with the
refusal's code; infrastructure trouble (Redis, the memory actors) retries it from the last commit.

Who may send commands is who may write to the topic: restrict it with the broker's ACLs (docs/security.md).
"""

from __future__ import annotations

import logging
import threading

from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from contracts import messages
from pipelines.config import LivelensConfig
from pipelines.kafka import dead_letters
from pipelines.kafka.client import ensure_topics, make_consumer, make_producer
from pipelines.query.engine import QueryError
from pipelines.streams.control import StreamControl

log = logging.getLogger(__name__)


def apply(control: StreamControl, command: messages.StreamCommand) -> None:
    """Apply one command (QueryError when it is refused)."""
    t, s, by = command.tenant_id, command.stream_id, f"{command.requested_by} (command {command.command_id})"
    if command.action == "pause":
        control.pause(t, s, by=by)
    elif command.action == "resume":
        control.resume(t, s, by=by, catch_up=command.catch_up)
    elif command.action in ("delete", "purge"):
        control.delete(t, s, by=by, purge=command.action == "purge")
    else:
        control.set(t, s, by=by, retention_s=command.retention_s, clear_retention=command.clear_retention,
                    sample_fps=command.sample_fps, clear_sample_fps=command.clear_sample_fps)


class StreamCommandConsumer:
    def __init__(self, config: LivelensConfig, control: StreamControl):
        self.config = config
        self.control = control
        self.applied = 0
        self.refused = 0

    def run(self, stop: threading.Event) -> None:
        kafka = self.config.kafka
        while not stop.is_set():
            consumer = producer = None
            try:
                ensure_topics(kafka)
                producer = make_producer(kafka)
                consumer = make_consumer(kafka, kafka.control_group, [kafka.topic("stream_control")],
                                         max_poll_records=16)
                while not stop.is_set():
                    for tp, records in consumer.poll(timeout_ms=200).items():
                        for record in records:
                            self._handle(producer, tp, record)
                            producer.flush()  # its dead letter, if any, before its offset
                            consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "", -1)})
            except KafkaError as exc:
                log.warning("stream-control consumer: Kafka error (%s); reconnecting", exc)
                stop.wait(1.0)
            except Exception:  # Redis or the memory actors: the command is applied again from the last commit
                log.exception("stream-control consumer: a command failed; retrying from the last commit")
                stop.wait(2.0)
            finally:
                for client in (consumer, producer):
                    if client is not None:
                        try:
                            client.close()
                        except Exception:  # a dead broker's client may fail to close; nothing to save
                            log.debug("close failed", exc_info=True)

    def _handle(self, producer, tp, record) -> None:
        try:
            command, _ = messages.decode(record.value, expect=messages.StreamCommand)
            apply(self.control, command)
        except (messages.MessageError, QueryError) as exc:
            code, reason = (exc.code, exc.reason) if isinstance(exc, messages.MessageError) else (exc.code, exc.message)
            letter = dead_letters.dead_letter(tp, [record.offset], stage="stream_control", code=code, reason=reason,
                                              record_bytes=len(record.value or b""))
            dead_letters.send(producer, self.config.kafka, letter)
            self.refused += 1
            log.warning("stream command at %s[%d]@%d refused: %s %s", tp.topic, tp.partition, record.offset, code,
                        reason[:200])
            return
        self.applied += 1
