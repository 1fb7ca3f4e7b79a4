"""`livelens up / status / down`: the embedded stack on one machine.

`up` starts what is not already configured (a Kafka-protocol broker, redis-server
with AOF, a Ray head), each on a free port under the data dir, and records them
in `<data_dir>/stack.json`. `down` stops exactly the processes recorded there.
Anything configured through LIVELENS_KAFKA_BOOTSTRAP, LIVELENS_REDIS_URL or
RAY_ADDRESS is used as it is and never stopped. The Ray head it starts uses the
stack's own auth token (deploy.ray_token), recorded here for every later driver.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from deploy.processes import ProcessRecord, start_broker, start_ray_head, start_redis
from deploy.ray_token import ensure_token


@dataclass
class StackState:
    kafka_bootstrap: str
    redis_url: str
    ray_address: str
    ray_dashboard: str = ""
    http_url: str = ""
    # The token file of the Ray head `up` started ("" for an external Ray), and whether `up` wrote it.
    ray_auth_token_path: str = ""
    ray_auth_token_created: bool = False
    started: list[ProcessRecord] = field(default_factory=list)

    @staticmethod
    def path(data_dir: Path) -> Path:
        return Path(data_dir) / "stack.json"

    def save(self, data_dir: Path) -> None:
        target = self.path(data_dir)
        tmp = target.with_suffix(".tmp")
        body = {**self.__dict__, "started": [p.to_dict() for p in self.started]}
        tmp.write_text(json.dumps(body, indent=2))
        tmp.replace(target)

    @classmethod
    def load(cls, data_dir: Path) -> StackState | None:
        path = cls.path(data_dir)
        if not path.exists():
            return None
        body = json.loads(path.read_text())
        body["started"] = [ProcessRecord(**p) for p in body.get("started", [])]
        return cls(**body)


def up(data_dir: Path, *, kafka_bootstrap: str | None, redis_url: str | None, ray_address: str | None,
       appendfsync: str = "always", num_cpus: int | None = None) -> StackState:
    """Start the missing services. Idempotent: a running stack is returned as it is."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    existing = StackState.load(data_dir)
    if existing and all(p.alive() for p in existing.started):
        return existing
    if existing:
        down(data_dir)  # half-dead stack from a crash: start clean rather than mix
    started: list[ProcessRecord] = []
    token_path, token_created = "", False
    try:
        if not kafka_bootstrap:
            started.append(start_broker(data_dir))
            kafka_bootstrap = started[-1].address
        if not redis_url:
            started.append(start_redis(data_dir, appendfsync=appendfsync))
            redis_url = started[-1].address
        dashboard = ""
        if not ray_address:
            token, token_created = ensure_token(data_dir)
            token_path = str(token)
            record, dash_port = start_ray_head(data_dir, token, num_cpus=num_cpus)
            started.append(record)
            ray_address, dashboard = record.address, f"http://127.0.0.1:{dash_port}"
    except Exception:
        for record in reversed(started):
            record.stop()
        if token_created:
            Path(token_path).unlink(missing_ok=True)
        raise
    state = StackState(kafka_bootstrap=kafka_bootstrap, redis_url=redis_url, ray_address=ray_address,
                       ray_dashboard=dashboard, ray_auth_token_path=token_path,
                       ray_auth_token_created=token_created, started=started)
    state.save(data_dir)
    return state


def down(data_dir: Path) -> list[str]:
    """Stop what `up` started (Ray first: its actors hold clients of the others). Returns their names."""
    state = StackState.load(Path(data_dir).resolve())
    if state is None:
        return []
    order = sorted(state.started, key=lambda p: {"ray": 0, "kafka": 1, "redis": 2}.get(p.name, 3))
    for record in order:
        record.stop()
    if state.ray_auth_token_created:
        Path(state.ray_auth_token_path).unlink(missing_ok=True)
    StackState.path(Path(data_dir).resolve()).unlink(missing_ok=True)
    return [p.name for p in order]
