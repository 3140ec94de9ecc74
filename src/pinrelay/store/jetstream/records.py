"""What the engine stores: a message's payload and the KV records, with their codecs.

Messages are msgpack (compact, on the hot path); KV records are JSON, so an
operator can read them with ``nats kv get``.  Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from pinrelay.core.model import ApiKey, Device, NewMessage, Scope, StoredMessage
from pinrelay.core.social import State
from pinrelay.core.tenants import DEFAULT_TENANT, Quotas, Tenant
from pinrelay.store.base import AppendResult, Rejected, StoreClosed

log = logging.getLogger(__name__)

#: PINs and key ids used as subject tokens and KV keys: nothing NATS would split on.
SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Msg(msgspec.Struct, array_like=True):
    """A stored message's payload (msgpack)."""

    id: str
    data: bytes
    topic: str | None
    urgency: str
    sent_ms: int
    expires_ms: int
    kind: str
    sender: str | None
    #: The device incarnation it was stored for (a recreated device never sees it).
    gen: str
    #: ``<append nonce>.<index>``: finds a batch again after a lost acknowledgement.
    origin: str


class DeviceRec(msgspec.Struct, omit_defaults=True):
    """A device's record.  One written before tenants (layout 1, :mod:`.setup`) has no
    ``tenant`` and reads as the default tenant's: that is the migration of a
    cluster's devices into it, with no rewrite (``null``: tenant-less)."""

    token_hash: str
    created_ms: int
    gen: str
    label: str | None = None
    last_seen_ms: int | None = None
    last_cursor: int = 0
    acked_cursor: int = 0
    tenant: str | None = DEFAULT_TENANT
    #: Other tenants the device lets push to it, sorted (at most MAX_GRANTS).
    grants: list[str] = []
    #: Its pending request to move to another tenant, and when that lapses.
    move_to: str | None = None
    move_expires_ms: int = 0


class KeyRec(msgspec.Struct):
    """An API key's record; one without ``tenant`` (layout 1) is the default tenant's."""

    id: str
    name: str
    scope: str
    key_hash: str
    created_ms: int
    revoked: bool = False
    tenant: str = DEFAULT_TENANT


class TenantRec(msgspec.Struct, omit_defaults=True):
    """A tenant (:mod:`.tenants`), keyed by its id; a tombstone once ``deleted_ms`` is
    set.  ``quotas`` is kept as a plain object: a quota a later version adds must
    not make the record unreadable here (core Quotas refuses unknown fields)."""

    name: str
    created_ms: int
    suspended: bool = False
    quotas: dict[str, Any] = {}
    deleted_ms: int | None = None
    #: The tenant's devices, counted by compare-and-set as they are made, deleted and
    #: moved (:meth:`.tenants.Tenants.count_devices`): the devices quota reads it.
    devices: int = 0


class ContactsRec(msgspec.Struct, omit_defaults=True):
    """A device's contacts (:mod:`.contacts`): other PIN → [state, since_ms]."""

    #: The owner device's gen when written: a record of an earlier device with the
    #: same PIN counts as empty.
    gen: str
    entries: dict[str, tuple[State, int]] = {}


class GroupRec(msgspec.Struct, omit_defaults=True):
    """A chat group (:mod:`.groups`), keyed by its id; members sorted, never empty
    (an empty record stands for "no group" in the cache only)."""

    name: str
    creator: str
    members: list[str] = []
    created_ms: int = 0


class UnreadRec(msgspec.Struct, omit_defaults=True):
    """A chat message delivered and not read yet (:mod:`.unread`); the key names the
    reader and the message."""

    sender: str
    expires_ms: int
    group: str | None = None
    #: Read: its read receipt is stored; kept until ``expires_ms`` so that a receipt
    #: asked for again is known (Chat.delivered), never found by ``find``.
    read: bool = False


class Planned(msgspec.Struct, array_like=True):
    """What a first attempt chose for one message: a takeover must publish the same."""

    id: str | None
    sent_ms: int = 0
    expires_ms: int = 0


class IdemRec(msgspec.Struct, omit_defaults=True):
    fingerprint: str
    nonce: str
    started_s: float
    done: bool = False
    results: list[AppendResult] = []
    #: The first attempt's ids and times, one per message: a takeover publishes
    #: exactly what its owner did, so whichever copy JetStream keeps, the answer's
    #: ids are the stored ones (even once the device acked them and they are gone).
    planned: list[Planned] = []


msg_enc = msgspec.msgpack.Encoder()
json_enc = msgspec.json.Encoder()
_msg_dec = msgspec.msgpack.Decoder(Msg)
device_dec = msgspec.json.Decoder(DeviceRec)
key_dec = msgspec.json.Decoder(KeyRec)
idem_dec = msgspec.json.Decoder(IdemRec)
contacts_dec = msgspec.json.Decoder(ContactsRec)
unread_dec = msgspec.json.Decoder(UnreadRec)
group_dec = msgspec.json.Decoder(GroupRec)
tenant_dec = msgspec.json.Decoder(TenantRec)
_QUOTAS = frozenset(Quotas.__struct_fields__)


def decode_msg(seq: int, payload: bytes) -> Msg | None:
    """A stored message, or None (logged) for something else published on our subjects."""
    try:
        return _msg_dec.decode(payload)
    except msgspec.DecodeError:
        log.warning("skipping sequence %d: not a pinrelay message", seq)
        return None


def stored(pin: str, seq: int, m: Msg) -> StoredMessage:
    """The message as the Store protocol hands it out; its cursor is its sequence."""
    return StoredMessage(
        pin, m.id, m.data, m.topic, m.urgency, m.sent_ms, m.expires_ms, m.kind, m.sender, seq
    )


def hash_key(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def to_device(pin: str, r: DeviceRec) -> Device:
    return Device(
        pin,
        r.token_hash,
        r.label,
        r.created_ms,
        r.last_seen_ms,
        r.last_cursor,
        r.acked_cursor,
        r.tenant,
    )


def to_key(r: KeyRec) -> ApiKey:
    return ApiKey(r.id, r.name, Scope(r.scope), r.key_hash, r.created_ms, r.revoked, r.tenant)


def key_rec(key: ApiKey) -> KeyRec:
    return KeyRec(
        key.id, key.name, key.scope.value, key.key_hash, key.created_ms, key.revoked, key.tenant
    )


def to_tenant(tenant_id: str, r: TenantRec) -> Tenant:
    known = {k: v for k, v in r.quotas.items() if k in _QUOTAS}
    return Tenant(
        id=tenant_id,
        name=r.name,
        created_ms=r.created_ms,
        suspended=r.suspended,
        quotas=msgspec.convert(known, Quotas),
        deleted_ms=r.deleted_ms,
    )


def tenant_rec(t: Tenant, created_ms: int | None = None) -> TenantRec:
    """``t``'s record (``created_ms``: the stored one, kept by an update)."""
    return TenantRec(
        t.name,
        t.created_ms if created_ms is None else created_ms,
        t.suspended,
        msgspec.to_builtins(t.quotas),
        t.deleted_ms,
    )


def plan(messages: Sequence[NewMessage | Rejected]) -> list[Planned]:
    """The ids and times a first attempt chose, one per message."""
    return [
        Planned(m.id, m.sent_at_ms, m.expires_at_ms) if isinstance(m, NewMessage) else Planned(m.id)
        for m in messages
    ]


def as_planned(
    messages: Sequence[NewMessage | Rejected], planned: list[Planned]
) -> list[NewMessage | Rejected]:
    """``messages`` with the ids and times a first attempt chose for them."""
    if len(planned) != len(messages):  # same fingerprint, so only a corrupt record
        raise StoreClosed("idempotency record does not match its request")
    out: list[NewMessage | Rejected] = []
    for m, p in zip(messages, planned, strict=True):
        if isinstance(m, NewMessage) and p.id is not None:
            m = msgspec.structs.replace(
                m, id=p.id, sent_at_ms=p.sent_ms, expires_at_ms=p.expires_ms
            )
        out.append(m)
    return out
