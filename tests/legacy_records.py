"""Records as earlier builds wrote them (wire contract 1): every value framed as a 4-byte big-endian length,
the model as JSON, then the payload. livelens only reads these now; the tests write them to prove it does."""

from __future__ import annotations

import struct

from contracts.messages import Message


def framed(message: Message, payload: bytes = b"") -> bytes:
    header = message.model_dump_json(by_alias=True).encode()
    return struct.pack(">I", len(header)) + header + payload
