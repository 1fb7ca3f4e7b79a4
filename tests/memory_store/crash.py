"""Kill redis-server hard and bring it back on the same data dir and port."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import redis

from deploy.processes import ProcessRecord, start_redis


def kill_and_restart(record: ProcessRecord, data_dir: Path) -> ProcessRecord:
    """SIGKILL (no shutdown save: only what the AOF already holds survives), then restart on the same port.
    `stop` waits until the port is closed, so the new server is the one clients reach."""
    record.stop(sig=signal.SIGKILL)
    return start_redis(data_dir, port=record.port)


def wait_loaded(client: redis.Redis, timeout_s: float = 30.0) -> None:
    """Until a restarted redis-server has replayed its AOF (it answers LOADING before that)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.ping()
            return
        except redis.exceptions.BusyLoadingError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
