"""Secrets kept out of output: URL credentials split off, placeholder keys refused, redaction for display.

Config fields that hold secrets are pydantic ``SecretStr`` (pipelines/config.py): they print as
``**********`` in `livelens config`, reprs and logs, and only the client factories
(pipelines/kafka/client.py, pipelines/redis_io.py) and the key checks read their values.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit, urlunsplit

REDACTED = "**********"

# Example values that docs, k8s/secrets.yaml and tutorials ship, and the usual stand-ins: a deployment that
# kept one would be open to anyone who read the same page.
PLACEHOLDER_KEYS = frozenset({
    "change-me", "changeme", "change_me", "replace-me", "replaceme", "replace-with-a-long-random-key",
    "your-api-key", "your_api_key", "api-key", "apikey", "secret", "password", "test", "example", "key",
    "default", "admin", "<api-key>", "<key>", "xxx", "xxxx", "todo",
})


def check_not_placeholder(key: str) -> None:
    if not key.strip():
        raise ValueError("an empty API key would match an empty Authorization header: set a real key")
    if key.strip().lower() in PLACEHOLDER_KEYS:
        raise ValueError(f"the API key {key!r} is a known placeholder: generate one "
                         "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without user info, its username, its password); both None when it carries none."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url, None, None
    return urlunsplit(_without_userinfo(parts)), parts.username or None, parts.password


def redact_url(url: str | None) -> str | None:
    """The URL with any password masked, for display."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}{REDACTED}@{_hostport(parts)}"))


def _without_userinfo(parts: SplitResult) -> SplitResult:
    return parts._replace(netloc=_hostport(parts))


def _hostport(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host
