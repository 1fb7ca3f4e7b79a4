"""Redis clients built one way for every livelens process: URL plus the credentials and TLS settings that
RedisConfig keeps apart from it (docs/security.md)."""

from __future__ import annotations

import logging

import redis

from pipelines.config import RedisConfig

log = logging.getLogger(__name__)


def redis_client(config: RedisConfig) -> redis.Redis:
    if not config.url:
        raise RuntimeError("no Redis URL: set LIVELENS_REDIS_URL or run `livelens up`")
    return redis.Redis.from_url(config.url, **redis_options(config))


def redis_options(config: RedisConfig) -> dict:
    """Keyword arguments for redis.Redis.from_url; TLS ones only for a rediss:// URL (plain connections
    refuse them)."""
    # Explicit timeouts: without them a stopped or black-holed server hangs a call for ever (the kernel's TCP
    # timeout is many minutes); with them the caller gets redis.TimeoutError and waits and retries.
    # health_check_interval pings a connection idle for 30 s before reusing it, so a half-open one (the
    # server was killed and restarted meanwhile) is noticed before a command is sent on it.
    options: dict = dict(socket_timeout=config.socket_timeout_s, socket_connect_timeout=config.connect_timeout_s,
                         socket_keepalive=True, health_check_interval=30)
    if config.username:
        options["username"] = config.username
    if config.password is not None:
        options["password"] = config.password.get_secret_value()
    if config.url and config.url.startswith("rediss://"):
        options.update(ssl_ca_certs=config.ssl_ca_certs, ssl_certfile=config.ssl_certfile,
                       ssl_keyfile=config.ssl_keyfile, ssl_cert_reqs="required")
    elif config.ssl_ca_certs or config.ssl_certfile:
        raise ValueError("redis TLS files are set but the URL is not rediss://: use rediss:// to encrypt")
    return options


class DurabilityError(RuntimeError):
    """The Redis server does not persist the way `redis.appendfsync` says it must."""


def check_durability(client: redis.Redis, config: RedisConfig) -> str | None:
    """Verify, not assume, that an acknowledged write survives a crash of redis-server: AOF on, fsync at least
    as strict as `redis.appendfsync`. Returns the problem (None when all is well); with `durability_check:
    refuse` raises DurabilityError instead, with `warn` logs it loudly."""
    if config.durability_check == "off":
        return None
    try:
        settings = {**client.config_get("appendonly"), **client.config_get("appendfsync")}
    except redis.exceptions.ResponseError as exc:  # CONFIG disabled or renamed (managed services)
        problem = (f"cannot read the Redis persistence settings ({exc}); set redis.durability_check: off if the "
                   "server is known to persist every write")
    else:
        strict = {"always": ("always",), "everysec": ("always", "everysec")}[config.appendfsync]
        if settings.get("appendonly") != "yes" or settings.get("appendfsync") not in strict:
            problem = (f"Redis at {config.url} runs appendonly={settings.get('appendonly')} "
                       f"appendfsync={settings.get('appendfsync')}, but redis.appendfsync is {config.appendfsync}: "
                       "an acknowledged segment (its Kafka offset committed) could be lost in a crash of redis-server. "
                       f"Run redis-server with --appendonly yes --appendfsync {config.appendfsync}")
        else:
            return None
    if config.durability_check == "refuse":
        raise DurabilityError(problem + " (or set redis.durability_check: warn to run anyway)")
    log.error("DURABILITY NOT GUARANTEED: %s", problem)
    return problem
