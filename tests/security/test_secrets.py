"""Secrets are secret types, kept out of `livelens config`, `livelens status`, reprs and errors; Kafka and
Redis clients get their credentials and TLS settings from one factory each."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from pipelines.config import KafkaConfig, LivelensConfig, RedisConfig
from pipelines.kafka.client import client_security
from pipelines.redis_io import redis_options
from pipelines.secrets import redact_url, split_url_credentials

API_KEY, ADMIN_KEY = "ka-7Gq2rXw9Lm4Tz8Vb", "adm-Zr8Kf2Lx6Pv1Mt4N"
REDIS_PASSWORD, SASL_PASSWORD, HOOK_SECRET = "rp-Hj3Ks9Ld2", "sp-Vn5Bx8Cq1", "wh-Tg7Rf4Ea6"
SECRETS = (API_KEY, ADMIN_KEY, REDIS_PASSWORD, SASL_PASSWORD, HOOK_SECRET)


@pytest.fixture
def secret_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no livelens.toml, no local stack
    monkeypatch.setenv("LIVELENS_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LIVELENS_SERVE__API_KEYS", f'{{"{API_KEY}": "acme"}}')
    monkeypatch.setenv("LIVELENS_SERVE__ADMIN_API_KEY", ADMIN_KEY)
    monkeypatch.setenv("LIVELENS_REDIS_URL", f"redis://ingest:{REDIS_PASSWORD}@redis-1:6379/0")
    monkeypatch.setenv("LIVELENS_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LIVELENS_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("LIVELENS_KAFKA__SASL_USERNAME", "livelens")
    monkeypatch.setenv("LIVELENS_KAFKA__SASL_PASSWORD", SASL_PASSWORD)
    monkeypatch.setenv("LIVELENS_WEBHOOKS__SIGNING_SECRETS", f'{{"acme": "{HOOK_SECRET}"}}')


def _run(*args: str):
    from pipelines.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_livelens_config_prints_no_secret(secret_env):
    result = _run("config")
    assert result.exit_code == 0, result.output
    assert not [s for s in SECRETS if s in result.output]
    assert '"acme"' in result.output and "redis-1:6379" in result.output  # what is not secret still shows


def test_livelens_status_prints_no_secret(secret_env):
    result = _run("status")
    assert "redis-1:6379" in result.output  # no local stack: it says what is configured...
    assert not [s for s in SECRETS if s in result.output]  # ...without the password


def test_secrets_stay_out_of_reprs_and_validation_errors(secret_env):
    config = LivelensConfig()
    assert not [s for s in SECRETS if s in repr(config) or s in str(config)]
    for bad in [dict(redis={"url": f"redis://:{REDIS_PASSWORD}@h:1/0", "appendfsync": "never"}),
                dict(serve={"api_keys": {API_KEY: "acme", "change-me": "globex"}}),
                dict(kafka={"security_protocol": "PLAINTEXT", "sasl_mechanism": "PLAIN",
                            "sasl_password": SASL_PASSWORD}),
                dict(webhooks={"signing_secrets": {"acme": HOOK_SECRET}, "attempts": 0})]:
        with pytest.raises(ValidationError) as raised:
            LivelensConfig(**bad)
        assert not [s for s in SECRETS if s in str(raised.value)], raised.value


@pytest.mark.parametrize("url, clean, user, password", [
    ("redis://:pw@h:6379/0", "redis://h:6379/0", None, "pw"),
    ("rediss://bob:p%40ss@h:6380/1", "rediss://h:6380/1", "bob", "p%40ss"),
    ("redis://h:6379/0", "redis://h:6379/0", None, None),
    ("redis://[::1]:6379/0", "redis://[::1]:6379/0", None, None),
    ("redis://u:pw@[::1]:6379/0", "redis://[::1]:6379/0", "u", "pw"),
])
def test_url_credentials_are_split_off(url, clean, user, password):
    assert split_url_credentials(url) == (clean, user, password)
    assert password is None or password not in redact_url(url)


def test_redis_credentials_move_out_of_the_url_into_the_client_options():
    config = RedisConfig(url=f"redis://ingest:{REDIS_PASSWORD}@redis-1:6379/0")
    assert config.url == "redis://redis-1:6379/0" and config.username == "ingest"
    assert isinstance(config.password, SecretStr)
    options = redis_options(config)
    assert {k: options[k] for k in ("username", "password")} == {"username": "ingest", "password": REDIS_PASSWORD}
    assert REDIS_PASSWORD not in str({k: v for k, v in options.items() if k != "password"})
    with pytest.raises(ValidationError, match="both"):
        RedisConfig(url="redis://:a@h/0", password="b")


def test_redis_tls_options_need_a_rediss_url():
    tls = RedisConfig(url="rediss://h:6380/0", password="x", ssl_ca_certs="/ca.pem")
    assert redis_options(tls)["ssl_ca_certs"] == "/ca.pem" and redis_options(tls)["ssl_cert_reqs"] == "required"
    with pytest.raises(ValueError, match="rediss"):
        redis_options(RedisConfig(url="redis://h:6379/0", ssl_ca_certs="/ca.pem"))


@pytest.mark.parametrize("settings, expected", [
    ({}, {"security_protocol": "PLAINTEXT"}),
    ({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "u",
      "sasl_password": "p"},
     {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "u",
      "sasl_plain_password": "p"}),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p",
      "ssl_cafile": "/ca.pem"},
     {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_plain_username": "u",
      "sasl_plain_password": "p", "ssl_cafile": "/ca.pem", "ssl_certfile": None, "ssl_keyfile": None,
      "ssl_check_hostname": True, "ssl_password": None}),
    ({"security_protocol": "SSL", "ssl_cafile": "/ca.pem", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem",
      "ssl_password": "kp"},
     {"security_protocol": "SSL", "ssl_cafile": "/ca.pem", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem",
      "ssl_check_hostname": True, "ssl_password": "kp"}),
])
def test_kafka_security_options(settings, expected):
    assert client_security(KafkaConfig(**settings)) == expected


@pytest.mark.parametrize("settings, error", [
    ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism, sasl_username, sasl_password"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"}, "needs sasl_password"),
    ({"sasl_mechanism": "PLAIN"}, "security_protocol is PLAINTEXT"),
    ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"},
     "sasl_mechanism"),
])
def test_incomplete_kafka_security_is_refused(settings, error):
    with pytest.raises(ValidationError, match=error):
        KafkaConfig(**settings)


def test_every_kafka_client_livelens_builds_carries_the_security_options(monkeypatch):
    """The factories hand SASL settings to kafka-python (a client that dropped them would connect in
    plaintext)."""
    from kafka import KafkaConsumer, KafkaProducer

    from pipelines.kafka.client import make_consumer, make_producer

    seen: list[dict] = []

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("built")  # nothing to connect to: the options are what this test checks

    monkeypatch.setattr(KafkaProducer, "__init__", spy)
    monkeypatch.setattr(KafkaConsumer, "__init__", spy)
    monkeypatch.setattr(KafkaProducer, "__del__", lambda self: None)  # closes what the spy never opened
    kafka = KafkaConfig(bootstrap="127.0.0.1:1", security_protocol="SASL_PLAINTEXT",
                        sasl_mechanism="SCRAM-SHA-512", sasl_username="u", sasl_password="p")
    for build in (lambda: make_producer(kafka), lambda: make_consumer(kafka, "g", ["t"])):
        with pytest.raises(RuntimeError, match="built"):
            build()
    assert len(seen) == 2
    assert all(s["sasl_mechanism"] == "SCRAM-SHA-512" and s["sasl_plain_password"] == "p" for s in seen)


def test_no_kafka_client_is_built_outside_the_factories_without_the_security_options():
    """Source check: a KafkaConsumer / KafkaProducer / KafkaAdminClient built anywhere in the package
    passes client_security()."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    calls = []
    for path in [*root.glob("pipelines/**/*.py"), *root.glob("deploy/**/*.py"), *root.glob("operators/**/*.py")]:
        source = path.read_text()
        for match in re.finditer(r"Kafka(Consumer|Producer|AdminClient)\(", source):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(source)):
                depth += {"(": 1, ")": -1}.get(source[end], 0)
                if depth == 0:
                    break
            calls.append((path.relative_to(root).as_posix(), source[match.start():end + 1]))
    assert len(calls) >= 6
    # The factories build theirs from `options`, which client_security() fills (the test above).
    unchecked = [(name, call) for name, call in calls if "client_security(" not in call
                 and not (name == "pipelines/kafka/client.py" and call.endswith("(**options)"))]
    assert unchecked == []


def test_a_redis_acl_user_from_the_url_connects_and_a_wrong_password_does_not(redis_server):
    """Against a real redis-server with an ACL user: the credentials split off the URL reach the client."""
    import redis

    from pipelines.redis_io import redis_client

    admin = redis.Redis.from_url(redis_server.address)
    admin.acl_setuser("ingest", enabled=True, passwords=[f"+{REDIS_PASSWORD}"], keys=["ll:*"],
                      commands=["+@all"])
    host_port = redis_server.address.removeprefix("redis://")
    config = RedisConfig(url=f"redis://ingest:{REDIS_PASSWORD}@{host_port}")
    assert REDIS_PASSWORD not in config.url
    client = redis_client(config)
    assert client.acl_whoami() == "ingest" and client.set("ll:{t}:probe", b"1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("other:key", b"1")  # the ACL user's key pattern holds
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis_client(RedisConfig(url=f"redis://{host_port}", username="ingest", password="wrong")).ping()
