"""Operator snapshots at rest: their JSON encoding, and the Redis store of evicted streams' state.

`pack` / `unpack` turn what `operators.state` snapshots return (dicts, lists, tuples, numbers, strings, numpy
arrays) into JSON and back: no pickle is ever read from Redis. The backfill manifest stores its chain's state
this way, and so does `EvictedStates`.

`EvictedStates` keeps the state of a stream a live actor evicted (pipelines/ingest/idle.py) under
``ll:{t}:evicted:<stream>:<stage>`` for `pipeline.evicted_state_ttl_s`: long enough for a stream that paused
to come back and continue (its compressor compares with its last frame, its event goes on), bounded so that
streams that never return cost nothing after it. `take` reads and deletes in one GETDEL: a state is restored
at most once, so an actor that restarts later never goes back to it after the stream moved on. Purging a
stream erases it with the stream's other keys (memory_store.keys registers ``evicted``).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import redis

from memory_store import keys


def pack(state: Any) -> bytes:
    """Operator snapshots (dicts, lists, tuples, numbers, strings, numpy arrays) as JSON: no pickle from Redis."""

    def encode(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return {"__ndarray__": base64.b64encode(np.ascontiguousarray(value).tobytes()).decode(),
                    "dtype": value.dtype.str, "shape": list(value.shape)}
        if isinstance(value, dict):
            return {k: encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, np.generic):
            return value.item()
        return value

    return json.dumps(encode(state)).encode()


def unpack(data: bytes) -> Any:
    def decode(value: dict[str, Any]) -> Any:
        if "__ndarray__" in value:
            flat = np.frombuffer(base64.b64decode(value["__ndarray__"]), dtype=np.dtype(value["dtype"]))
            return flat.reshape(value["shape"]).copy()
        return value

    return json.loads(data, object_hook=decode)


class EvictedStates:
    """One live stage's store of evicted streams' state (``stage``: encode, compress, ocr, transcript)."""

    def __init__(self, client: redis.Redis, stage: str, ttl_s: float):
        if ttl_s <= 0:
            raise ValueError(f"evicted state kept for {ttl_s} s: use a positive time, or no store")
        self.r, self.stage, self.ttl_ms = client, stage, int(ttl_s * 1000)

    def put(self, tenant_id: str, stream_id: str, state: Any) -> None:
        self.r.set(keys.evicted_state(tenant_id, stream_id, self.stage), pack(state), px=self.ttl_ms)

    def take(self, tenant_id: str, stream_id: str) -> Any | None:
        """The stream's kept state, deleted as it is read; None when there is none (never evicted, or expired)."""
        data = self.r.getdel(keys.evicted_state(tenant_id, stream_id, self.stage))
        return None if data is None else unpack(data)

    def drop(self, tenant_id: str, stream_id: str) -> None:
        self.r.delete(keys.evicted_state(tenant_id, stream_id, self.stage))
