"""Erasing a stream: every key the registry in `memory_store.keys` names for it, at once.

Retention deletes a stream's entries bit by bit; a purge (`MemoryStore.erase_stream`) must leave nothing:
the tiers, the frames, thumbnails and event tokens, the stream's members of the tenant's id sets (so no
index rebuild brings an entry back), the clip ledger, segment markers, backfill manifests, standing-query
firing state, moderation room state, settings. Keys are found by the registry, not by a list written
here, so a tier that registers its keys (`keys.register_stream_keys`) is erased with the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from memory_store import keys

_BATCH = 500


@dataclass(frozen=True)
class Erased:
    """What an erase deleted: keys that existed, entry ids (to drop from the indexes), per-stream fields."""

    keys: int
    ids: tuple[int, ...]
    fields: int


def stream_ids(client: redis.Redis, tenant_id: str, stream_id: str) -> list[int]:
    """Index ids of the stream's entries in every registered id set."""
    found: set[int] = set()
    for id_set in keys.entry_sets(tenant_id):
        for _, score in client.zscan_iter(id_set, match=keys.entry_member_pattern(tenant_id, stream_id),
                                          count=_BATCH):
            found.add(int(score))
    return sorted(found)


def _scoped_keys(client: redis.Redis, tenant_id: str, stream_id: str) -> list[str]:
    found = list(keys.stream_keys(tenant_id, stream_id))
    for pattern in keys.stream_key_patterns(tenant_id, stream_id):
        # A glob's '*' also matches ':', and stream ids may hold one: "cam" must not take "cam:2"'s markers.
        # What follows the stream id in a prefixed key (a segment id, a digest, a pause id) never has one.
        head = pattern[:-1].replace("\\", "")
        for key in client.scan_iter(match=pattern, count=_BATCH):
            name = key.decode()
            if "/" in head or ":" not in name[len(head):]:
                found.append(name)
    return found


def erase_stream(client: redis.Redis, tenant_id: str, stream_id: str) -> Erased:
    """Delete everything of the stream in Redis. Idempotent: a second call finds nothing."""
    ids = stream_ids(client, tenant_id, stream_id)
    doomed = _scoped_keys(client, tenant_id, stream_id)
    fields = 0
    with client.pipeline(transaction=False) as pipe:
        for i in range(0, len(doomed), _BATCH):
            pipe.unlink(*doomed[i:i + _BATCH])
        for id_set in keys.entry_sets(tenant_id):
            members = [m for m, _ in client.zscan_iter(id_set, match=keys.entry_member_pattern(tenant_id, stream_id),
                                                        count=_BATCH)]
            for i in range(0, len(members), _BATCH):
                pipe.zrem(id_set, *members[i:i + _BATCH])
        for stream_set in keys.stream_sets(tenant_id):
            pipe.srem(stream_set, stream_id)
        for pattern in keys.stream_field_patterns(tenant_id):
            for key in client.scan_iter(match=pattern, count=_BATCH):
                pipe.hdel(key, stream_id)
                fields += 1
        results = pipe.execute()
    unlinks = (len(doomed) + _BATCH - 1) // _BATCH
    return Erased(sum(results[:unlinks]), tuple(ids), fields)
