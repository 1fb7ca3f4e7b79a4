"""Is kafka-python checksumming record batches in C?

kafka-python computes the CRC-32C of every record batch it writes and reads. With the
`crc32c` package (kafka-python's ``crc32c`` extra, a livelens dependency) that runs in C,
with SSE4.2 where the CPU has it; without it kafka-python quietly falls back to a pure-Python
loop that caps a process at about 8 MB/s of records, whatever their size (BENCHMARKS.md,
"Kafka client I/O"): a 20th of the wire. A pipeline that works at a 20th of its speed fails
late and far from the cause, so every process that builds a Kafka client checks once, logs
an error naming the fix and exports ``livelens_kafka_fast_checksum`` (1 or 0).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Literal

from kafka.record import _crc32c as python_crc32c
from kafka.record import util as record_util

from pipelines import metrics
from pipelines.metric_specs import KAFKA_FAST_CHECKSUM

log = logging.getLogger(__name__)

Implementation = Literal["c", "python"]

_logged = False
_logged_lock = threading.Lock()


def checksum_implementation() -> Implementation:
    """What kafka-python's record batches are checksummed with in this process."""
    # `calc_crc32c` binds its implementation as a default argument when kafka.record.util is imported;
    # that binding, not the module attribute, is what every record batch goes through.
    (bound,) = record_util.calc_crc32c.__defaults__
    return "python" if bound is python_crc32c.crc else "c"


def check_fast_checksum(role: str) -> bool:
    """True when record batches are checksummed in C. Otherwise logs an error (once per process)
    saying how to fix it. Either way sets ``livelens_kafka_fast_checksum{role}``."""
    global _logged
    fast = checksum_implementation() == "c"
    # Only Ray processes export metrics; a plain one (the publisher CLI) would pay seconds importing Ray for a
    # gauge nobody scrapes.
    # Another thread may be importing Ray at this moment: its module is then listed but not yet filled in.
    is_initialized = getattr(sys.modules.get("ray"), "is_initialized", None)
    if is_initialized is not None and is_initialized():
        metrics.set_gauge(KAFKA_FAST_CHECKSUM, 1.0 if fast else 0.0, role=role)
    with _logged_lock:
        if _logged:
            return fast
        _logged = True
    if fast:
        log.info("kafka-python checksums record batches in C (crc32c package)")
    else:
        log.error(
            "SLOW KAFKA: kafka-python is checksumming every record batch in pure Python because the `crc32c` "
            "package is missing from this environment; this process will move about 8 MB/s of records instead "
            "of 150+ MB/s. Fix: pip install 'kafka-python[crc32c]' (livelens depends on it; an environment "
            "built without its dependencies lacks it)."
        )
    return fast
