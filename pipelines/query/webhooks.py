"""Standing-query webhooks: where they may go, and their delivery off the commit path (docs/security.md).

- Destination: the host is resolved and every address checked; loopback, private, link-local, shared,
  reserved and cloud-metadata addresses are refused unless WebhookConfig.allow names the host or a
  network holding them. The connection then goes to the checked address (the Host header and TLS name
  stay the URL's), so DNS that changes between the check and the connect cannot redirect it, and
  redirects are not followed.
- Delivery: from a bounded, durable outbox in Redis drained by worker threads (pipelines/query/outbox.py), so
  a slow or dead endpoint never holds up the segment that fired (its alert is already on the alerts topic)
  and a queued delivery outlives the actor that queued it. Each alert is retried with jittered exponential
  backoff within a total deadline (`deliver`); what cannot be delivered goes to a dead letter.
- Every POST carries ``X-Livelens-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
  with the tenant's signing secret, looked up when it is sent (so a queued delivery holds no secret and a
  rotated one applies at once), and ``Idempotency-Key: <alert_id>``, the same on every retry.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipelines.config import WebhookConfig

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata services: some are in ranges is_global already refuses (169.254/16), listed anyway
# so that an allow-listed link-local or private network never opens them.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16"))


class WebhookRefused(ValueError):
    """The URL may not be called: the reason is safe to show to the tenant who registered it."""


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked address the connection goes to


def check_destination(url: str, config: WebhookConfig,
                      resolve: Callable[[str, int], list[str]] | None = None) -> Destination:
    """The URL's destination, once every address its host resolves to is allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("a webhook must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise WebhookRefused("a webhook URL must not carry credentials (the signature authenticates livelens)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise WebhookRefused("the webhook URL's port is not a number in 1-65535") from None
    host = parts.hostname.lower().rstrip(".")
    addresses = (resolve or _resolve)(host, port)
    if not addresses:
        raise WebhookRefused(f"{host} does not resolve")
    host_allowed = host in {entry.lower() for entry in config.allow}
    networks = _allowed_networks(config)
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if address in METADATA_ADDRESSES:
            raise WebhookRefused(f"{host} resolves to a cloud metadata address")
        if not address.is_global and not host_allowed and not any(address in n for n in networks):
            raise WebhookRefused(f"{host} resolves to an internal address ({_kind(address)}); an operator can "
                                 "allow it in webhooks.allow")
    path = parts.path or "/"
    return Destination(parts.scheme, host, port, path + (f"?{parts.query}" if parts.query else ""), addresses[0])


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise WebhookRefused(f"{host} does not resolve ({exc.strerror})") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def _allowed_networks(config: WebhookConfig) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for entry in config.allow:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            continue  # a host name, matched by name
    return networks


def _kind(address: IPAddress) -> str:
    for kind in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{kind}"):
            return kind.replace("_", "-")
    return "not globally routable"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class Delivery:
    """One alert to POST: ``body`` is the alert's JSON, ``idempotency_key`` its id."""

    tenant_id: str
    query_id: str
    url: str
    body: bytes
    idempotency_key: str
    stream_id: str = ""


class DeliveryFailed(Exception):
    def __init__(self, code: str, reason: str, retryable: bool):
        super().__init__(reason)
        self.code, self.reason, self.retryable = code, reason, retryable


def post_once(delivery: Delivery, config: WebhookConfig, timeout_s: float,
              resolve: Callable[[str, int], list[str]] | None = None) -> int:
    """One POST to the checked address; the response status, or DeliveryFailed."""
    secret = config.signing_secrets.get(delivery.tenant_id)
    if secret is None:
        raise DeliveryFailed("webhook_unsigned", f"tenant {delivery.tenant_id} has no webhooks.signing_secrets "
                             "entry: unsigned webhooks are not sent", retryable=False)
    try:
        destination = check_destination(delivery.url, config, resolve)
    except WebhookRefused as exc:
        raise DeliveryFailed("webhook_refused", str(exc), retryable=False) from None
    connection = _connection(destination, timeout_s)
    timestamp = int(time.time())
    headers = {"content-type": "application/json", "user-agent": "livelens-webhook/1",
               "idempotency-key": delivery.idempotency_key,
               "x-livelens-signature": sign(secret.get_secret_value(), timestamp, delivery.body)}
    try:
        connection.request("POST", destination.path, body=delivery.body, headers=headers)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryFailed("webhook_unreachable", f"{type(exc).__name__}: {exc}", retryable=True) from None
    finally:
        connection.close()


def _connection(destination: Destination, timeout_s: float) -> http.client.HTTPConnection:
    if destination.scheme == "https":
        return _PinnedHTTPSConnection(destination, timeout_s)
    return _PinnedHTTPConnection(destination, timeout_s)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, destination: Destination, timeout_s: float):
        super().__init__(destination.host, destination.port, timeout=timeout_s)
        self._address = destination.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, destination: Destination, timeout_s: float):
        super().__init__(destination.host, destination.port, timeout=timeout_s,
                         context=ssl.create_default_context())
        self._address = destination.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def deliver(delivery: Delivery, config: WebhookConfig, *, sleep: Callable[[float], None] = time.sleep,
            resolve: Callable[[str, int], list[str]] | None = None) -> int:
    """Attempts until a 2xx, a permanent refusal, ``attempts`` or ``deadline_s``; the attempts it took.
    4xx answers other than 408 and 429 are permanent: the endpoint understood and said no."""
    deadline = time.monotonic() + config.deadline_s
    failure = DeliveryFailed("webhook_failed", "no attempt made", retryable=False)
    for attempt in range(1, config.attempts + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            status = post_once(delivery, config, min(config.attempt_timeout_s, left), resolve)
            if 200 <= status < 300:
                return attempt
            failure = DeliveryFailed("webhook_rejected", f"HTTP {status}",
                                     retryable=status >= 500 or status in (408, 429))
        except DeliveryFailed as exc:
            failure = exc
        if not failure.retryable or attempt == config.attempts:
            break
        backoff = config.backoff_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
        if time.monotonic() + backoff >= deadline:
            break
        sleep(backoff)
    raise DeliveryFailed(failure.code, f"{failure.reason} (after {attempt} attempt(s))", failure.retryable)
