"""Redis clients built one way for every livelens process: URL plus the credentials and TLS settings that
RedisConfig keeps apart from it (docs/security.md)."""

from __future__ import annotations

import redis

from pipelines.config import RedisConfig


def redis_client(config: RedisConfig) -> redis.Redis:
    if not config.url:
        raise RuntimeError("no Redis URL: set LIVELENS_REDIS_URL or run `livelens up`")
    return redis.Redis.from_url(config.url, **redis_options(config))


def redis_options(config: RedisConfig) -> dict:
    """Keyword arguments for redis.Redis.from_url; TLS ones only for a rediss:// URL (plain connections
    refuse them)."""
    options: dict = {}
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
