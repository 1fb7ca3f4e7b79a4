"""What `livelens up / status` print: whole addresses in a narrow terminal, and one JSON object for scripts."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from deploy.local_stack import StackState
from deploy.processes import ProcessRecord
from pipelines.cli.output import print_json, stack_body, stack_table

LONG = "redis://very-long-host-name.internal.example.com:46379/0"
TARGETS = ["10.0.0.12:44217", "10.0.0.13:44217"]


def state() -> StackState:
    redis = ProcessRecord(name="redis", pid=123456, port=46379, address=LONG,
                          log="/home/someone/projects/livelens/.livelens/logs/redis.log")
    return StackState(kafka_bootstrap="broker-0.kafka.example.com:9092", redis_url=LONG,
                      ray_address="127.0.0.1:61234", ray_dashboard="http://127.0.0.1:8265",
                      http_url="http://127.0.0.1:48765", started=[redis])


@pytest.mark.parametrize("width", [40, 60, 80, 200])
def test_table_never_cuts_an_address_short(width):
    console = Console(width=width, record=True, force_terminal=True)
    console.print(stack_table(state(), TARGETS))
    text = console.export_text()
    assert "…" not in text
    # Folded cells continue on the next lines of the same column: the address reads whole down the column.
    flat = "".join(line.split("│")[2].strip() for line in text.splitlines() if line.count("│") >= 5)
    for address in (LONG, "broker-0.kafka.example.com:9092", "http://127.0.0.1:48765/docs", *TARGETS):
        assert address in flat, f"{address} not whole at width {width}:\n{text}"


def test_json_is_one_object_with_every_address(capsys):
    print_json(stack_body(state(), TARGETS))
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    body = json.loads(out)
    redis = body["services"]["redis"]
    assert isinstance(redis.pop("alive"), bool)  # whether some process has that pid here: not this test's business
    assert redis == {"address": LONG, "started_by_up": True, "pid": 123456,
                     "log": "/home/someone/projects/livelens/.livelens/logs/redis.log"}
    assert body["services"]["kafka"]["started_by_up"] is False and body["services"]["kafka"]["pid"] is None
    assert body["http_api"] == "http://127.0.0.1:48765"
    assert body["prometheus"]["targets"] == TARGETS
    relabel = body["prometheus"]["metric_relabel_configs"][0]
    assert (relabel["regex"], relabel["replacement"]) == ("ray_(livelens_.*)", "$1")
    assert body["prometheus"]["scrape_config"]["scrape_configs"][0]["static_configs"] == [{"targets": TARGETS}]
