"""Fixtures of the memory-store tests: a client of the test's own redis-server, and stores on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from deploy.processes import ProcessRecord
from memory_store.config import MemoryConfig
from memory_store.service import MemoryStore

StoreFactory = Callable[..., MemoryStore]


@pytest.fixture
def client(redis_server: ProcessRecord) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.address)
    yield client
    client.close()


@pytest.fixture
def open_store(client: redis.Redis, tmp_path: Path) -> StoreFactory:
    """A new MemoryStore on the test's Redis, as a restarted memory actor would build it."""

    def open_(snapshots: bool = True, **config) -> MemoryStore:
        return MemoryStore(client, MemoryConfig(**config), index_dir=tmp_path / "faiss" if snapshots else None)

    return open_
