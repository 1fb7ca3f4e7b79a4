"""Kill redis-server hard and bring it back on the same data dir and port."""

from __future__ import annotations

import signal
from pathlib import Path

from deploy.processes import ProcessRecord, start_redis


def kill_and_restart(record: ProcessRecord, data_dir: Path) -> ProcessRecord:
    """SIGKILL (no shutdown save: only what the AOF already holds survives), then restart on the same port.
    `stop` waits until the port is closed, so the new server is the one clients reach."""
    record.stop(sig=signal.SIGKILL)
    return start_redis(data_dir, port=record.port)
