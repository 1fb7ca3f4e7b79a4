"""Redis as a dependency that can stop, hang or persist too little: timeouts on every client, and the
persistence settings verified at start, against real redis-servers."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
import redis

from deploy.processes import start_redis
from pipelines.config import RedisConfig
from pipelines.failures import dependency_of
from pipelines.redis_io import DurabilityError, check_durability, redis_client


def test_a_stopped_redis_server_fails_a_call_within_its_timeout_instead_of_hanging(redis_server):
    """SIGSTOP: the server holds its connections open and answers nothing (a black hole). Without a socket
    timeout (today's clients) the call hangs for as long as the server stays stopped."""
    client = redis_client(RedisConfig(url=redis_server.address, socket_timeout_s=1.0, connect_timeout_s=1.0))
    client.set("k", "v")
    os.kill(redis_server.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError) as failure:
            client.get("k")
        assert time.monotonic() - started < 3.0
        assert dependency_of(failure.value) == "redis"  # waited for and retried, never a dead letter
    finally:
        os.kill(redis_server.pid, signal.SIGCONT)
    assert client.get("k") == b"v"  # and the same client works again once the server is back


def test_weaker_persistence_than_configured_is_refused_or_warned_about(tmp_path, redis_server, caplog):
    assert check_durability(redis_client(RedisConfig(url=redis_server.address)),
                            RedisConfig(url=redis_server.address)) is None  # AOF, appendfsync always
    lax = start_redis(tmp_path / "lax", appendfsync="everysec")
    try:
        client = redis_client(RedisConfig(url=lax.address))
        with pytest.raises(DurabilityError, match="appendfsync=everysec"):
            check_durability(client, RedisConfig(url=lax.address))
        with caplog.at_level(logging.ERROR, logger="pipelines.redis_io"):
            problem = check_durability(client, RedisConfig(url=lax.address, durability_check="warn"))
        assert problem and "DURABILITY NOT GUARANTEED" in caplog.text
        # everysec is what this configuration asked for: accepted.
        assert check_durability(client, RedisConfig(url=lax.address, appendfsync="everysec")) is None
        client.config_set("appendonly", "no")
        with pytest.raises(DurabilityError, match="appendonly=no"):
            check_durability(client, RedisConfig(url=lax.address, appendfsync="everysec"))
    finally:
        lax.stop()
