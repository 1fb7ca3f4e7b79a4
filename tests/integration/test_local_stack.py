"""`livelens up / publish / ask / status / down` as a user runs them, each a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy.local_stack import StackState
from deploy.processes import free_port

pytestmark = pytest.mark.integration

LIVELENS = [sys.executable, "-m", "pipelines.cli"]


def run(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    result = subprocess.run(LIVELENS + args, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"livelens {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_up_publish_ask_status_down(tmp_path: Path):
    # An empty HOME: no ~/.ray/auth_token (or anything else) from earlier runs can help.
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in {"LIVELENS_KAFKA_BOOTSTRAP", "LIVELENS_REDIS_URL", "RAY_ADDRESS", "RAY_AUTH_TOKEN",
                        "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"}}
    env.update(HOME=str(home), LIVELENS_DATA_DIR=str(tmp_path / "stack"), LIVELENS_SERVE__PORT=str(free_port()),
               LIVELENS_PIPELINE__DECODERS="1", HF_HUB_OFFLINE="1")
    video = tmp_path / "news.mp4"
    run(["sample-video", str(video), "--duration", "8"], env)
    try:
        up = run(["up", "--json"], env)
        state = StackState.load(tmp_path / "stack")
        assert state is not None and {p.name for p in state.started} == {"kafka", "redis", "ray"}
        assert all(p.alive() for p in state.started)
        token = Path(state.ray_auth_token_path)
        assert state.ray_auth_token_created and token.is_relative_to(tmp_path / "stack")
        assert token.stat().st_mode & 0o777 == 0o600
        assert token.read_text().strip() not in up.stdout + up.stderr, "up printed the token"
        assert not (home / ".ray" / "auth_token").exists(), "the stack's token must not depend on HOME"
        reported = json.loads(up.stdout)  # one JSON object, addresses whole
        assert reported["services"]["redis"]["address"] == state.redis_url
        assert reported["services"]["kafka"]["address"] == state.kafka_bootstrap
        assert reported["http_api"] == state.http_url and state.http_url.startswith("http://")
        assert reported["prometheus"]["targets"], "up must say where Prometheus scrapes"
        assert reported["prometheus"]["metric_relabel_configs"][0]["replacement"] == "$1"

        run(["publish", str(video), "--stream", "news", "--fast"], env)
        deadline = time.monotonic() + 90
        while True:
            out = json.loads(run(["ask", "what happened", "--stream", "news", "--json"], env).stdout)
            if len(out["evidence"]) >= 5 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert set(out) >= {"answer", "evidence", "latency_ms"}
        assert out["evidence"], "no evidence after publishing"
        for e in out["evidence"]:
            assert e["stream_id"] == "news" and 0 <= e["t_start"] < e["t_end"] <= 8.5
            assert e["wallclock_start"].endswith("Z") or "+" in e["wallclock_start"]

        # Piped, in an 80-column terminal: the table still carries every address whole.
        status = run(["status"], {**env, "COLUMNS": "80"}).stdout
        assert "source-0" in status and "memory-0" in status
        for address in (state.redis_url, state.kafka_bootstrap, state.http_url, *reported["prometheus"]["targets"]):
            assert address in status, f"{address} cut short in:\n{status}"
        status_json = json.loads(run(["status", "--json", "--sample", "0"], env).stdout)
        assert status_json["stack"]["http_api"] == state.http_url
        assert {"source-0", "memory-0"} <= set(status_json["actors"])
        assert "news" in {s["stream_id"] for s in status_json["streams"]["streams"]}
        tiers = json.loads(run(["memory", "news", "--json"], env).stdout)
        assert tiers["stream_id"] == "news" and {t["tier"] for t in tiers["tiers"]} == {"short", "mid", "long"}
        assert sum(t["entries"] for t in tiers["tiers"]) > 0
    finally:
        subprocess.run(LIVELENS + ["down"], env=env, capture_output=True, text=True, timeout=120)
    assert StackState.load(tmp_path / "stack") is None
    assert not token.exists(), "down left the token up created"
    assert not any(p.alive() for p in state.started), "down left a process running"
