"""Kafka client throughput through livelens's own produce and consume paths, on a local broker (tansu).

    python benchmarks/kafka_io.py [--sizes 50000 500000 2000000] [--procs 1 2] [--mb 200]
                                  [--checksum c python] [--write]
    python benchmarks/kafka_io.py --consumer-sweep [--sizes 500000]

Produce: each process sends random payloads of the given size as video segments (`messages.segment_record`,
chunked at `max_message_bytes` as the publisher does) and sends them with `make_producer` (acks=all,
idempotent), then flushes. Consume: as many processes in one consumer group read them back with
`make_consumer`, parse every record and reassemble chunked segments (`SegmentAssembler`), as the source does
before its DAG. MB/s counts record values (segment bytes); a run's MB/s is the total over its wall time, from the first
record any process sent (or read) to the last (start-up and the group join excluded), so "per process" =
total / processes. MB per CPU-second divides by the CPU time of the client processes (all their threads) over
the same window: on a machine shared with other jobs it is the steadier number, and what one process would
reach with a core of its own.

``--checksum python`` forces kafka-python's pure-Python CRC-32C (what an environment without the `crc32c`
package runs) to show what the C checksum buys. ``--consumer-sweep`` measures one consumer with fetch
sizes, socket buffers and max poll records varied, the measurements behind `make_consumer`'s settings.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from kafka.admin import KafkaAdminClient, NewTopic

from deploy.processes import start_broker
from contracts import messages
from pipelines.config import KafkaConfig
from pipelines.kafka.client import make_consumer, make_producer
from pipelines.kafka.publish import SegmentAssembler

REPO = Path(__file__).resolve().parents[1]

# Consumer settings the sweep compares, each against `make_consumer`'s defaults.
SWEEP: list[tuple[str, dict]] = [
    ("make_consumer defaults", {}),
    ("kafka-python defaults (1 MiB/partition, 50 MiB/fetch, 500 records)",
     dict(max_partition_fetch_bytes=1 << 20, fetch_max_bytes=50 << 20, max_poll_records=500)),
    ("max_partition_fetch_bytes 1 MiB", dict(max_partition_fetch_bytes=1 << 20)),
    ("max_partition_fetch_bytes 16 MiB", dict(max_partition_fetch_bytes=16 << 20)),
    ("fetch_max_bytes 64 MiB", dict(fetch_max_bytes=64 << 20)),
    ("receive_buffer_bytes 4 MiB", dict(receive_buffer_bytes=4 << 20)),
    ("max_poll_records 16", dict(max_poll_records=16)),
]


def force_python_checksum() -> None:
    """What kafka-python runs without the crc32c package: its pure-Python CRC-32C everywhere it checksums."""
    from kafka.record import _crc32c, default_records

    default_records.calc_crc32c = lambda data: _crc32c.crc(data)


def produce(bootstrap: str, topic: str, size: int, total_bytes: int, worker: int, checksum: str, out) -> None:
    if checksum == "python":
        force_python_checksum()
    kafka = KafkaConfig(bootstrap=bootstrap)
    payload = os.urandom(size)
    count = max(1, total_bytes // size)
    producer = make_producer(kafka)
    records = sent = 0
    started = time.monotonic()  # CLOCK_MONOTONIC: comparable across the processes of a run
    cpu = time.process_time()  # every thread of the process: kafka-python does its I/O on its own thread
    for seq in range(count):
        segment = messages.VideoSegment(tenant_id="bench", stream_id=f"w{worker}-s{seq % 64}", seq=seq, codec="h264",
                                        wallclock_start=datetime.now(UTC), media_start_s=0, duration_s=2,
                                        width=1280, height=720, payload_bytes=size)
        for header, chunk in messages.chunk_segment(segment, payload, kafka.max_message_bytes):
            value, headers = messages.segment_record(header, chunk)
            producer.send(topic, key=segment.stream_id.encode(), value=value, headers=headers)
            records += 1
            sent += len(value)
    producer.flush()
    out.put(dict(records=records, bytes=sent, segments=count, first=started, last=time.monotonic(),
                 cpu_s=time.process_time() - cpu))
    producer.close()


def consume(bootstrap: str, topic: str, group: str, expect_records: int, checksum: str, overrides: dict, out) -> None:
    if checksum == "python":
        force_python_checksum()
    kafka = KafkaConfig(bootstrap=bootstrap)
    consumer = make_consumer(kafka, group, [topic], **overrides)
    assemblers: dict = {}
    seen: list[tuple[int, int]] = []
    records = got = segments = 0
    started = last = cpu = cpu_s = None
    idle_since = time.monotonic()
    # A group shares the records; each member stops once the group has read them all (it cannot know its
    # share), so it stops after 3 s without records once it has read some, or at the shared count.
    while True:
        batch = consumer.poll(timeout_ms=200)
        if not batch:
            if (records and time.monotonic() - idle_since > 3) or time.monotonic() - idle_since > 60:
                break
            continue
        if started is None:
            started, cpu = time.monotonic(), time.process_time()
        idle_since = time.monotonic()
        for tp, recs in batch.items():
            assembler = assemblers.setdefault(tp, SegmentAssembler())
            for record in recs:
                segment, chunk = messages.decode(record.value, expect=messages.VideoSegment, headers=record.headers)
                records += 1
                got += len(record.value)
                seen.append((tp.partition, record.offset))
                if assembler.add(segment, chunk, record.offset) is not None:
                    segments += 1
        # As the source does after each poll: a member joining later then resumes where this one stopped.
        consumer.commit()
        last, cpu_s = time.monotonic(), time.process_time() - cpu
        if records >= expect_records:
            break
    out.put(dict(records=records, bytes=got, segments=segments, first=started, last=last,
                 cpu_s=cpu_s or 0.0, seen=seen))
    consumer.close()


def create_topic(bootstrap: str, topic: str, partitions: int = 8) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()


def run(bootstrap: str, size: int, procs: int, total_mb: float, checksum: str, overrides: dict | None = None,
        produce_only: bool = False) -> dict:
    ctx = mp.get_context("spawn")
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic)
    per_proc = int(total_mb * 1e6 / procs)
    out = ctx.Queue()
    workers = [ctx.Process(target=produce, args=(bootstrap, topic, size, per_proc, i, checksum, out))
               for i in range(procs)]
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    # From the first send to the last flush: process start-up and imports are not throughput.
    produce_s = max(r["last"] for r in results) - min(r["first"] for r in results)
    row = dict(size=size, procs=procs, checksum=checksum, produce_s=produce_s,
               produce_mb=sum(r["bytes"] for r in results) / 1e6,
               produce_records=sum(r["records"] for r in results),
               produce_cpu_s=sum(r["cpu_s"] for r in results))
    if produce_only:
        return row
    group = f"bench-{uuid.uuid4().hex[:8]}"
    workers = [ctx.Process(target=consume, args=(bootstrap, topic, group, row["produce_records"], checksum,
                                                 overrides or {}, out)) for _ in range(procs)]
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    # From the first record any member saw to the last: excludes the group join, which is not throughput.
    consume_s = max(r["last"] for r in results if r["last"]) - min(r["first"] for r in results if r["first"])
    row.update(consume_s=consume_s, consume_mb=sum(r["bytes"] for r in results) / 1e6,
               consume_records=sum(r["records"] for r in results),
               consume_segments=sum(r["segments"] for r in results),
               consume_cpu_s=sum(r["cpu_s"] for r in results))
    # Records read twice (a member's uncommitted batch handed to another in the group's first rebalance) are
    # work done and counted; a record never read is a failure.
    row["reread"] = row["consume_records"] - len({s for r in results for s in r["seen"]})
    if row["consume_records"] - row["reread"] != row["produce_records"]:
        raise RuntimeError(f"consumed {row['consume_records'] - row['reread']} records of {row['produce_records']}")
    return row


def describe(row: dict) -> str:
    text = (f"{row['size'] / 1e3:>6.0f} KB x {row['procs']} proc, {row['checksum']:>6} crc: produce "
            f"{row['produce_mb'] / row['produce_s']:7.1f} MB/s {row['produce_records'] / row['produce_s']:7.0f} rec/s "
            f"{row['produce_mb'] / row['produce_cpu_s']:6.0f} MB/cpu-s")
    if "consume_s" in row:
        text += (f"; consume {row['consume_mb'] / row['consume_s']:7.1f} MB/s "
                 f"{row['consume_records'] / row['consume_s']:7.0f} rec/s "
                 f"{row['consume_mb'] / row['consume_cpu_s']:6.0f} MB/cpu-s"
                 + (f" ({row['reread']} re-read)" if row["reread"] else ""))
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 500_000, 2_000_000])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mb", type=float, default=200.0, help="MB produced per run (all processes together).")
    parser.add_argument("--checksum", nargs="+", choices=["c", "python"], default=["c"])
    parser.add_argument("--consumer-sweep", action="store_true")
    parser.add_argument("--write", action="store_true", help="Append the results to BENCHMARKS.md.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="livelens-kafka-bench-"))
    broker = start_broker(work)
    rows, sweep = [], []
    try:
        if args.consumer_sweep:
            for size in args.sizes:
                for name, overrides in SWEEP:
                    row = run(broker.address, size, 1, args.mb, "c", overrides)
                    sweep.append((name, row))
                    print(f"{name:<70} {describe(row)}", flush=True)
        else:
            for checksum in args.checksum:
                for size in args.sizes:
                    for procs in args.procs:
                        # The pure-Python checksum moves ~8 MB/s: a tenth of the volume says as much.
                        mb = args.mb if checksum == "c" else args.mb / 10
                        row = run(broker.address, size, procs, mb, checksum)
                        rows.append(row)
                        print(describe(row), flush=True)
    finally:
        broker.stop()
    if args.write:
        write_markdown(rows, sweep, args)
    return 0


def write_markdown(rows: list[dict], sweep: list[tuple[str, dict]], args) -> None:
    cores = os.cpu_count()
    argv = " ".join(sys.argv[1:])
    lines = ["", f"### Kafka client I/O ({time.strftime('%Y-%m-%d')}, {cores}-core CPU, local tansu broker, "
             "machine shared with other jobs)", "", f"Command: `python benchmarks/kafka_io.py {argv}`", ""]
    if rows:
        lines += ["| segment | processes | checksum | produce MB/s | records/s | MB per CPU-s | consume MB/s | "
                  "records/s | MB/s per process | MB per CPU-s |",
                  "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            c_mbs = r["consume_mb"] / r["consume_s"]
            lines.append(f"| {r['size'] / 1e3:.0f} KB | {r['procs']} | {r['checksum']} | "
                         f"{r['produce_mb'] / r['produce_s']:.1f} | {r['produce_records'] / r['produce_s']:.0f} | "
                         f"{r['produce_mb'] / r['produce_cpu_s']:.0f} | {c_mbs:.1f} | "
                         f"{r['consume_records'] / r['consume_s']:.0f} | {c_mbs / r['procs']:.1f} | "
                         f"{r['consume_mb'] / r['consume_cpu_s']:.0f} |")
    if sweep:
        lines += ["| consumer setting | segment | consume MB/s | records/s | MB per CPU-s |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, r in sweep:
            lines.append(f"| {name} | {r['size'] / 1e3:.0f} KB | {r['consume_mb'] / r['consume_s']:.1f} | "
                         f"{r['consume_records'] / r['consume_s']:.0f} | {r['consume_mb'] / r['consume_cpu_s']:.0f} |")
    lines.append("")
    with open(REPO / "BENCHMARKS.md", "a") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
