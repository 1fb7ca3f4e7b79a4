"""Real services for the tests: a Kafka-protocol broker, redis-server, the shared clips.

Each service is the same process the local stack starts (deploy.processes), on a
free port under a temp dir, so a test can kill and restart it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.processes import ProcessRecord, start_broker, start_redis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("LIVELENS_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def real_video_dir() -> Path:
    path = shared_dir() / "data" / "real-video"
    if not path.is_dir():
        raise FileNotFoundError(f"the shared clips are missing: {path} (set LIVELENS_SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessRecord]:
    """One broker for the session; tests isolate themselves with their own topic prefix."""
    record = start_broker(tmp_path_factory.mktemp("broker"))
    yield record
    record.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ProcessRecord]:
    """A fresh redis-server (AOF, appendfsync always) per test, so tests can kill and restart it."""
    record = start_redis(tmp_path)
    yield record
    record.stop()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from operators.tiny_models import build_tiny_clip, build_tiny_llm, build_tiny_vlm

    root = tmp_path_factory.mktemp("models")
    return {"clip": build_tiny_clip(root / "clip"), "vlm": build_tiny_vlm(root / "vlm"), "llm": build_tiny_llm(root / "llm")}


@pytest.fixture(scope="session")
def muxjs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mux.js from npm, fetched at test time (tests/transcripts/media.py): real CEA-608-captioned streams and an
    independent CEA-608 decoder. deploy/install_system_packages.sh installs node and npm."""
    import shutil

    from tests.transcripts.media import fetch_muxjs

    missing = [tool for tool in ("npm", "node") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed: run deploy/install_system_packages.sh")
    return fetch_muxjs(tmp_path_factory.mktemp("muxjs"))
