"""kafka-python must checksum record batches in C: the pure-Python fallback caps a process at ~8 MB/s."""

from __future__ import annotations

import logging

import pytest
from kafka.record import _crc32c as python_crc32c
from kafka.record import util as record_util

from pipelines.kafka import checksum as kafka_checksum


def test_installed_environment_checksums_in_c():
    """Fails where `crc32c` (kafka-python's crc32c extra, a livelens dependency) is missing."""
    assert kafka_checksum.checksum_implementation() == "c", (
        "kafka-python falls back to its pure-Python CRC-32C: pip install 'kafka-python[crc32c]'")
    # And the C one computes CRC-32C (RFC 3720's check value), not some other checksum.
    (bound,) = record_util.calc_crc32c.__defaults__
    assert bound(b"123456789") == python_crc32c.crc(b"123456789") == 0xE3069283


@pytest.fixture
def fresh_check(monkeypatch):
    """The check logs once per process; each case starts from a process that has not checked yet."""
    monkeypatch.setattr(kafka_checksum, "_logged", False)


@pytest.mark.parametrize(
    ("implementation", "fast", "level", "says"),
    [
        ("c", True, logging.INFO, "in C"),
        ("python", False, logging.ERROR, "pip install 'kafka-python[crc32c]'"),
    ],
)
def test_check_reports_the_implementation_in_use(fresh_check, monkeypatch, caplog, implementation, fast, level, says):
    if implementation == "python":
        # What kafka.record.util binds when `import crc32c` fails.
        slow = lambda memview, _crc32c=python_crc32c.crc: _crc32c(memview)  # noqa: E731
        monkeypatch.setattr(record_util, "calc_crc32c", slow)
    caplog.set_level(logging.INFO, logger=kafka_checksum.__name__)
    assert kafka_checksum.check_fast_checksum("producer") is fast
    assert kafka_checksum.check_fast_checksum("consumer") is fast
    logged = [r for r in caplog.records if r.name == kafka_checksum.__name__]
    assert len(logged) == 1, "once per process, however many clients it builds"
    assert logged[0].levelno == level and says in logged[0].getMessage()
