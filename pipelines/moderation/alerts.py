"""The alert log and the moderation audit log, in Redis: what reviewers read, acknowledge and audit.

Per tenant (every key carries the tenant as a hash tag, so a Redis Cluster keeps a tenant on one slot):

    <prefix>:{tenant}:alerts          Stream, newest alerts, capped (XADD MAXLEN ~ max_alerts); each entry holds
                                      alert_id, update, stream_id and the alert's JSON
    <prefix>:{tenant}:alert-index     sorted set: alert_id -> millisecond part of its newest entry's id
    <prefix>:{tenant}:alert-acks      hash: alert_id -> AlertAck JSON
    <prefix>:{tenant}:audit:{room}    Stream per room (stream), capped: every decision, verdict, acknowledgement

Alerts arrive at least once (a replayed segment produces its alerts again), so ``record`` is idempotent
on (alert_id, update): an update the log already has, or an older one, is not appended again. A
moderation episode is one alert_id whose updates (escalation, resolution) are appended as they come;
``recent`` shows each alert once, as its newest update. When the stream's cap trims an alert's last
entry away, the same script drops it from the index and its acknowledgement, so neither grows without
bound.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis

from contracts import messages

# KEYS: alerts stream, index, acks. ARGV: alert_id, update, alert JSON, maxlen, stream_id.
# Returns the entry id of the alert's newest record (the existing one when this update is not newer).
_RECORD = """
local function newest(ms)
  local rows = redis.call('XRANGE', KEYS[1], ms .. '-0', ms .. '-18446744073709551615')
  for i = #rows, 1, -1 do
    local f = rows[i][2]
    local fields = {}
    for j = 1, #f, 2 do fields[f[j]] = f[j + 1] end
    if fields['alert_id'] == ARGV[1] then return rows[i][1], tonumber(fields['update']) end
  end
  return nil, nil
end
local ms = redis.call('ZSCORE', KEYS[2], ARGV[1])
if ms then
  local id, update = newest(string.format('%d', tonumber(ms)))
  if id and update >= tonumber(ARGV[2]) then return id end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'alert_id', ARGV[1], 'update', ARGV[2],
                      'stream_id', ARGV[5], 'alert', ARGV[3])
redis.call('ZADD', KEYS[2], string.match(id, '^(%d+)-'), ARGV[1])
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first_ms = string.match(first[1][1], '^(%d+)-')
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. first_ms)
-- alerts of the oldest remaining millisecond whose entries were trimmed from its start
local kept = {}
for _, row in ipairs(redis.call('XRANGE', KEYS[1], first_ms .. '-0', first_ms .. '-18446744073709551615')) do
  for j = 1, #row[2], 2 do
    if row[2][j] == 'alert_id' then kept[row[2][j + 1]] = true end
  end
end
for _, alert_id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], first_ms, first_ms)) do
  if not kept[alert_id] then table.insert(gone, alert_id) end
end
for i = 1, #gone, 500 do  -- in chunks: unpack() of thousands of values overflows Lua's stack
  redis.call('ZREM', KEYS[2], unpack(gone, i, math.min(i + 499, #gone)))
  redis.call('HDEL', KEYS[3], unpack(gone, i, math.min(i + 499, #gone)))
end
return id
"""

_PAGE = 500  # entries read per XREVRANGE while collecting recent alerts


class AlertLog:
    """Recent alerts per tenant, their acknowledgements, and the per-room audit trail.

    prefix: the first part of every key (livelens's keys start with ``ll``).
    max_alerts / max_audit: approximate caps of each tenant's alert stream and each room's audit stream.
    """

    def __init__(self, client: redis.Redis, prefix: str = "ll", *, max_alerts: int = 10_000,
                 max_audit: int = 10_000):
        self.client = client
        self.prefix = prefix
        self.max_alerts = max_alerts
        self.max_audit = max_audit
        self._record = client.register_script(_RECORD)

    # -- alerts ------------------------------------------------------------------------------

    def record(self, alert: messages.Alert) -> str:
        """Append ``alert`` (without any ack) unless the log has this update of it already; returns the
        alert_id."""
        body = alert.model_copy(update={"ack": None}).model_dump_json(by_alias=True)
        self._record(keys=self._alert_keys(alert.tenant_id),
                     args=[alert.alert_id, alert.update, body, self.max_alerts, alert.stream_id])
        return alert.alert_id

    def recent(self, tenant_id: str, *, room_id: str | None = None, stream_id: str | None = None,
               limit: int = 50) -> list[messages.Alert]:
        """The newest ``limit`` alerts, newest first, each as its latest update, with its ack when it has one.

        room_id and stream_id name the same thing (moderation calls a stream a room); either filters.
        """
        if room_id is not None and stream_id is not None and room_id != stream_id:
            raise ValueError(f"room_id {room_id!r} and stream_id {stream_id!r} differ: a room is a stream")
        wanted = room_id or stream_id
        stream_key = self._key(tenant_id, "alerts")
        seen: set[str] = set()
        found: list[messages.Alert] = []
        upper = "+"
        while len(found) < limit:
            rows = self.client.xrevrange(stream_key, max=upper, min="-", count=_PAGE)
            for entry_id, fields in rows:
                alert_id = fields[b"alert_id"].decode()
                if alert_id in seen:
                    continue  # an older update of an alert already taken
                seen.add(alert_id)
                if wanted is None or fields[b"stream_id"].decode() == wanted:
                    found.append(messages.Alert.model_validate_json(fields[b"alert"]))
                    if len(found) == limit:
                        break
            if len(rows) < _PAGE:
                break
            upper = "(" + rows[-1][0].decode()
        return self._with_acks(tenant_id, found)

    def get(self, tenant_id: str, alert_id: str) -> messages.Alert | None:
        """The newest update of one alert, with its ack; None when unknown (or trimmed away)."""
        ms = self.client.zscore(self._key(tenant_id, "alert-index"), alert_id)
        if ms is None:
            return None
        rows = self.client.xrange(self._key(tenant_id, "alerts"), min=f"{int(ms)}-0",
                                  max=f"{int(ms)}-18446744073709551615")
        for _, fields in reversed(rows):
            if fields[b"alert_id"].decode() == alert_id:
                return self._with_acks(tenant_id, [messages.Alert.model_validate_json(fields[b"alert"])])[0]
        return None

    def ack(self, tenant_id: str, alert_id: str, by: str, note: str = "") -> bool:
        """Acknowledge an alert (the first acknowledgement is kept; every one is audited). False: no such alert."""
        alert = self.get(tenant_id, alert_id)
        if alert is None:
            return False
        ack = messages.AlertAck(by=by, note=note)
        first = self.client.hsetnx(self._key(tenant_id, "alert-acks"), alert_id, ack.model_dump_json())
        self.audit(tenant_id, alert.stream_id, {"event": "ack", "alert_id": alert_id, "by": by, "note": note,
                                                "first": bool(first), "state": alert.state})
        return True

    def forget_stream(self, tenant_id: str, stream_id: str) -> int:
        """Delete every alert of one stream, with its acks (a purge: alerts carry thumbnails and text). Returns
        the alerts deleted. The room's audit trail is a key of the stream: the purge erases it with the rest."""
        stream_key = self._key(tenant_id, "alerts")
        entries, alert_ids, upper = [], set(), "+"
        while True:
            rows = self.client.xrevrange(stream_key, max=upper, min="-", count=_PAGE)
            for entry_id, fields in rows:
                if fields[b"stream_id"].decode() == stream_id:
                    entries.append(entry_id)
                    alert_ids.add(fields[b"alert_id"].decode())
            if len(rows) < _PAGE:
                break
            upper = "(" + rows[-1][0].decode()
        if entries:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.xdel(stream_key, *entries)
                pipe.zrem(self._key(tenant_id, "alert-index"), *alert_ids)
                pipe.hdel(self._key(tenant_id, "alert-acks"), *alert_ids)
                pipe.execute()
        return len(alert_ids)

    # -- audit -------------------------------------------------------------------------------

    def audit(self, tenant_id: str, room_id: str, event: dict[str, Any]) -> str:
        """Append one decision to the room's audit trail; returns the entry id. ``at`` (ISO 8601, UTC) is added
        when the event has none."""
        body = {"at": datetime.now(UTC).isoformat(), **event}
        entry = self.client.xadd(self._key(tenant_id, f"audit:{room_id}"), {"event": json.dumps(body, default=str)},
                                 maxlen=self.max_audit, approximate=True)
        return entry.decode()

    def audit_trail(self, tenant_id: str, room_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The room's newest ``limit`` audit events, newest first, each with its entry ``id``."""
        rows = self.client.xrevrange(self._key(tenant_id, f"audit:{room_id}"), count=limit)
        return [{"id": entry_id.decode(), **json.loads(fields[b"event"])} for entry_id, fields in rows]

    # -- keys --------------------------------------------------------------------------------

    def _key(self, tenant_id: str, name: str) -> str:
        return f"{self.prefix}:{{{tenant_id}}}:{name}"

    def _alert_keys(self, tenant_id: str) -> list[str]:
        return [self._key(tenant_id, "alerts"), self._key(tenant_id, "alert-index"),
                self._key(tenant_id, "alert-acks")]

    def _with_acks(self, tenant_id: str, alerts: list[messages.Alert]) -> list[messages.Alert]:
        if not alerts:
            return alerts
        acks = self.client.hmget(self._key(tenant_id, "alert-acks"), [a.alert_id for a in alerts])
        return [a if raw is None else a.model_copy(update={"ack": messages.AlertAck.model_validate_json(raw)})
                for a, raw in zip(alerts, acks)]
