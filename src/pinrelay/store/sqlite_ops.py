"""The SQLite engine's writes, as values: what the relay sends its writer process.

Each write is a msgspec struct (tagged, so one decoder reads any of them) whose
``run`` applies it to the writer's connection inside the group's transaction.
They travel to the writer process in store/sqlite_wire.py's frames; the writes
for channels and broadcasts are in store/sqlite_channel_ops.py.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from pinrelay.core import chat, ratelimit, social
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.quotas import over
from pinrelay.store.base import (
    MAX_CONTACTS,
    MAX_GRANTS,
    MAX_GROUP,
    MAX_SUBSCRIPTIONS,
    PAIRING_KEEP_MS,
    RECEIPT_STORED,
    SUBSCRIPTION_GONE_KEEP_MS,
    UNKNOWN_DEVICE,
    AppendResult,
    PushReceipt,
    Subscription,
)

#: How long an Idempotency-Key is remembered.
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000

_INSERT_SQL = (
    "INSERT INTO messages (pin, cursor, id, data, topic, urgency, sent_ms, expires_ms, kind,"
    " sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


_results_enc = msgspec.msgpack.Encoder()
results_dec = msgspec.msgpack.Decoder(list[AppendResult])


class Op(msgspec.Struct, array_like=True, tag=True):
    #: False for writes whose loss in a crash is harmless (acks, last seen).
    durable: ClassVar[bool] = True

    def run(self, c: sqlite3.Connection) -> Any:
        raise NotImplementedError


class CreateDevice(Op, tag="cd"):
    pin: str
    token_hash: str
    label: str | None
    now_ms: int
    tenant: str | None
    max_devices: int | None = None

    def run(self, c: sqlite3.Connection) -> bool:
        if self.max_devices is not None and self.tenant is not None:
            # In the one writer's transaction: no other create comes between the
            # count (on the devices_tenant index) and the insert.
            sql = "SELECT count(*) FROM devices WHERE tenant = ?"
            if c.execute(sql, (self.tenant,)).fetchone()[0] >= self.max_devices:
                raise over(self.tenant, "devices", f"{self.max_devices} devices")
        cur = c.execute(
            "INSERT OR IGNORE INTO devices (pin, token_hash, label, created_ms, tenant)"
            " VALUES (?, ?, ?, ?, ?)",
            (self.pin, self.token_hash, self.label, self.now_ms, self.tenant),
        )
        return cur.rowcount == 1


class SetDeviceTenant(Op, tag="sdt"):
    pin: str
    tenant: str | None

    def run(self, c: sqlite3.Connection) -> bool:
        _leave_tenant(c, self.pin)
        sql = "UPDATE devices SET tenant = ? WHERE pin = ?"
        return c.execute(sql, (self.tenant, self.pin)).rowcount == 1


def _leave_tenant(c: sqlite3.Connection, pin: str) -> None:
    """What a device leaves behind in a move: its grants and channel memberships
    (its refusals of broadcast classes stay: the owner's wish, not the tenant's)."""
    c.execute("DELETE FROM grants WHERE pin = ?", (pin,))
    c.execute("DELETE FROM channel_members WHERE pin = ?", (pin,))


class RequestMove(Op, tag="rm"):
    pin: str
    tenant: str | None
    expires_ms: int | None

    def run(self, c: sqlite3.Connection) -> bool:
        sql = "UPDATE devices SET move_to = ?, move_expires_ms = ? WHERE pin = ?"
        return c.execute(sql, (self.tenant, self.expires_ms, self.pin)).rowcount == 1


#: A device's pending move to a tenant, unexpired (pin, tenant, now_ms), found and done.
_FIND_MOVE = "SELECT 1 FROM devices WHERE pin = ? AND move_to = ? AND move_expires_ms > ?"
_DO_MOVE = (
    "UPDATE devices SET tenant = move_to, move_to = NULL, move_expires_ms = NULL"
    " WHERE pin = ? AND move_to = ? AND move_expires_ms > ?"
)


class AcceptMove(Op, tag="am"):
    """The device's pending move to ``tenant`` done and used up, in one transaction."""

    pin: str
    tenant: str
    now_ms: int
    max_devices: int | None = None

    def run(self, c: sqlite3.Connection) -> bool:
        args = (self.pin, self.tenant, self.now_ms)
        if c.execute(_FIND_MOVE, args).fetchone() is None:
            return False
        if self.max_devices is not None:
            # As CreateDevice: counted in the writer's transaction.
            sql = "SELECT count(*) FROM devices WHERE tenant = ?"
            if c.execute(sql, (self.tenant,)).fetchone()[0] >= self.max_devices:
                raise over(self.tenant, "devices", f"{self.max_devices} devices")
        c.execute(_DO_MOVE, args)
        _leave_tenant(c, self.pin)
        return True


class SetGrant(Op, tag="sg"):
    pin: str
    tenant: str
    granted: bool

    def run(self, c: sqlite3.Connection) -> bool:
        if c.execute("SELECT 1 FROM devices WHERE pin = ?", (self.pin,)).fetchone() is None:
            return False
        if not self.granted:
            c.execute("DELETE FROM grants WHERE pin = ? AND tenant = ?", (self.pin, self.tenant))
            return True
        held = c.execute(
            "SELECT count(*), sum(tenant = ?) FROM grants WHERE pin = ?", (self.tenant, self.pin)
        ).fetchone()
        if held[1]:
            return True
        if held[0] >= MAX_GRANTS:
            raise PinrelayError(
                f"a device may grant at most {MAX_GRANTS} tenants", ErrorCode.CONFLICT
            )
        c.execute("INSERT INTO grants (pin, tenant) VALUES (?, ?)", (self.pin, self.tenant))
        return True


class PutTenant(Op, tag="pt"):
    """Create a tenant (``create``) or replace a live one's fields."""

    id: str
    name: str
    created_ms: int
    suspended: bool
    quotas: bytes
    deleted_ms: int | None
    create: bool

    def run(self, c: sqlite3.Connection) -> bool:
        values = (self.name, int(self.suspended), self.quotas, self.deleted_ms, self.id)
        if self.create:
            try:
                c.execute(
                    "INSERT INTO tenants (name, suspended, quotas, deleted_ms, id, created_ms)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (*values, self.created_ms),
                )
            except sqlite3.IntegrityError:
                raise PinrelayError(f"tenant id {self.id} is taken", ErrorCode.CONFLICT) from None
            return True
        sql = (
            "UPDATE tenants SET name = ?, suspended = ?, quotas = ?, deleted_ms = ?"
            " WHERE id = ? AND deleted_ms IS NULL"
        )
        return c.execute(sql, values).rowcount == 1


class DeleteDevice(Op, tag="dd"):
    pin: str

    def run(self, c: sqlite3.Connection) -> bool:
        c.execute("DELETE FROM messages WHERE pin = ?", (self.pin,))
        c.execute("DELETE FROM contacts WHERE owner = ?", (self.pin,))
        c.execute("DELETE FROM unread WHERE reader = ?", (self.pin,))
        c.execute("DELETE FROM group_members WHERE pin = ?", (self.pin,))
        c.execute("DELETE FROM pairing WHERE pin = ?", (self.pin,))
        c.execute("DELETE FROM grants WHERE pin = ?", (self.pin,))
        c.execute("DELETE FROM channel_members WHERE pin = ?", (self.pin,))
        c.execute("DELETE FROM refusals WHERE pin = ?", (self.pin,))
        c.execute("DELETE FROM marketing WHERE pin = ?", (self.pin,))
        # Its subscriptions answer 410 Gone for a while (the writer's clock: a store's
        # own bookkeeping, like SQLite's).
        c.execute(
            "UPDATE subscriptions SET deleted_ms = ? WHERE pin = ? AND deleted_ms IS NULL",
            (int(time.time() * 1000), self.pin),
        )
        return c.execute("DELETE FROM devices WHERE pin = ?", (self.pin,)).rowcount == 1


class SetToken(Op, tag="st"):
    pin: str
    token_hash: str

    def run(self, c: sqlite3.Connection) -> bool:
        sql = "UPDATE devices SET token_hash = ? WHERE pin = ?"
        return c.execute(sql, (self.token_hash, self.pin)).rowcount == 1


class TouchDevice(Op, tag="td"):
    durable: ClassVar[bool] = False
    pin: str
    now_ms: int

    def run(self, c: sqlite3.Connection) -> None:
        c.execute("UPDATE devices SET last_seen_ms = ? WHERE pin = ?", (self.now_ms, self.pin))


class CreateKey(Op, tag="ck"):
    id: str
    name: str
    scope: str
    key_hash: str
    created_ms: int
    revoked: bool
    tenant: str

    def run(self, c: sqlite3.Connection) -> None:
        c.execute(
            "INSERT INTO api_keys (id, name, scope, key_hash, created_ms, revoked, tenant)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self.id,
                self.name,
                self.scope,
                self.key_hash,
                self.created_ms,
                int(self.revoked),
                self.tenant,
            ),
        )


class RevokeKey(Op, tag="rk"):
    key_id: str

    def run(self, c: sqlite3.Connection) -> bool:
        sql = "UPDATE api_keys SET revoked = 1 WHERE id = ? AND revoked = 0"
        return c.execute(sql, (self.key_id,)).rowcount == 1


class AckMany(Op, tag="ak"):
    # An ack lost in a crash means a redelivery, which clients drop: no fsync.
    durable: ClassVar[bool] = False
    acks: list[tuple[str, int]]

    def run(self, c: sqlite3.Connection) -> None:
        c.executemany("DELETE FROM messages WHERE pin = ? AND cursor <= ?", self.acks)
        c.executemany(
            "UPDATE devices SET acked_cursor = max(acked_cursor, ?2) WHERE pin = ?1", self.acks
        )


class Sweep(Op, tag="sw"):
    now_ms: int
    limit: int

    def run(self, c: sqlite3.Connection) -> int:
        # Expired chat messages stay for expired_chats(): their senders are told first.
        n = c.execute(
            "DELETE FROM messages WHERE (pin, cursor) IN (SELECT pin, cursor FROM messages"
            " WHERE expires_ms <= ? AND kind != 'chat' LIMIT ?)",
            (self.now_ms, self.limit),
        ).rowcount
        c.execute(
            "DELETE FROM idempotency WHERE created_ms <= ?", (self.now_ms - IDEMPOTENCY_TTL_MS,)
        )
        c.execute("DELETE FROM unread WHERE expires_ms <= ?", (self.now_ms,))
        c.execute("DELETE FROM pairing WHERE expires_ms <= ?", (self.now_ms - PAIRING_KEEP_MS,))
        c.execute("DELETE FROM budgets WHERE empty_at_ms <= ?", (self.now_ms,))
        c.execute(
            "DELETE FROM subscriptions WHERE deleted_ms <= ?",
            (self.now_ms - SUBSCRIPTION_GONE_KEEP_MS,),
        )
        c.execute("DELETE FROM push_receipts WHERE expires_ms <= ?", (self.now_ms,))
        return int(n)


def _entry(c: sqlite3.Connection, owner: str, other: str) -> social.State | None:
    row = c.execute(
        "SELECT state FROM contacts WHERE owner = ? AND other = ?", (owner, other)
    ).fetchone()
    return None if row is None else row[0]


def _set_entry(
    c: sqlite3.Connection, owner: str, other: str, state: str | None, now_ms: int
) -> None:
    if state is None:
        c.execute("DELETE FROM contacts WHERE owner = ? AND other = ?", (owner, other))
    else:
        c.execute(
            "INSERT INTO contacts (owner, other, state, since_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (owner, other) DO UPDATE SET state = excluded.state,"
            " since_ms = CASE WHEN state = excluded.state THEN since_ms"
            " ELSE excluded.since_ms END",
            (owner, other, state, now_ms),
        )


class Forget(Op, tag="fg"):
    keys: list[tuple[str, int]]

    def run(self, c: sqlite3.Connection) -> int:
        cur = c.executemany("DELETE FROM messages WHERE pin = ? AND cursor = ?", self.keys)
        return cur.rowcount


class ContactAction(Op, tag="ca"):
    """Both entries of a pair, read and written in one transaction (core/social.py)."""

    actor: str
    other: str
    action: str
    now_ms: int
    #: The notice to append to ``other`` if the transition tells it something.
    notice: Item

    def run(
        self, c: sqlite3.Connection
    ) -> tuple[str | None, str | None, str | None, AppendResult | None]:
        mine = _entry(c, self.actor, self.other)
        theirs = _entry(c, self.other, self.actor)
        exists = c.execute("SELECT 1 FROM devices WHERE pin = ?", (self.other,)).fetchone()
        step = social.transition(social.Action(self.action), mine, theirs, exists is not None)
        if mine is None and step.mine is not None:
            (count,) = c.execute(
                "SELECT count(*) FROM contacts WHERE owner = ?", (self.actor,)
            ).fetchone()
            if count >= MAX_CONTACTS:
                raise PinrelayError(
                    f"a device holds at most {MAX_CONTACTS} contacts", ErrorCode.CONFLICT
                )
        if step.mine != mine:
            _set_entry(c, self.actor, self.other, step.mine, self.now_ms)
        if step.theirs != theirs:
            _set_entry(c, self.other, self.actor, step.theirs, self.now_ms)
        appended = None
        if step.notify is not None:
            notice = msgspec.structs.replace(self.notice, data=chat.contact_data(step.notify))
            (appended,) = _append_all(c, [notice])
        return step.mine, step.theirs, step.notify, appended


class CreateGroup(Op, tag="cg"):
    id: str
    name: str
    creator: str
    members: list[str]
    created_ms: int

    def run(self, c: sqlite3.Connection) -> None:
        c.execute(
            "INSERT INTO groups (id, name, creator, created_ms) VALUES (?, ?, ?, ?)",
            (self.id, self.name, self.creator, self.created_ms),
        )
        c.executemany(
            "INSERT OR IGNORE INTO group_members (grp, pin) VALUES (?, ?)",
            [(self.id, pin) for pin in self.members],
        )


class ChangeMembers(Op, tag="cm"):
    group: str
    add: list[str]
    remove: list[str]

    def run(self, c: sqlite3.Connection) -> bool:
        if c.execute("SELECT 1 FROM groups WHERE id = ?", (self.group,)).fetchone() is None:
            return False
        c.executemany(
            "INSERT OR IGNORE INTO group_members (grp, pin) VALUES (?, ?)",
            [(self.group, pin) for pin in self.add],
        )
        c.executemany(
            "DELETE FROM group_members WHERE grp = ? AND pin = ?",
            [(self.group, pin) for pin in self.remove],
        )
        (count,) = c.execute(
            "SELECT count(*) FROM group_members WHERE grp = ?", (self.group,)
        ).fetchone()
        if count > MAX_GROUP:
            raise PinrelayError(f"a group has at most {MAX_GROUP} members", ErrorCode.CONFLICT)
        if count == 0:
            c.execute("DELETE FROM groups WHERE id = ?", (self.group,))
        return True


#: An expiry no entry reaches (the year 2286).
_FOREVER_MS = 10**13
#: An unread entry: (reader, id, sender, expires_ms, group).
UnreadRow = tuple[str, str, str, int, str | None]
_PUT_UNREAD_SQL = (
    "INSERT OR IGNORE INTO unread (reader, id, sender, expires_ms, grp) VALUES (?, ?, ?, ?, ?)"
)


class PutUnread(Op, tag="pu"):
    entries: list[UnreadRow]

    def run(self, c: sqlite3.Connection) -> None:
        c.executemany(_PUT_UNREAD_SQL, self.entries)


#: An entry read is kept until it expires (a delivered receipt repeated later is
#: known), its expiry brought forward to the one given: (expires_ms, reader, id).
_MARK_READ_SQL = (
    "UPDATE unread SET is_read = 1, expires_ms = min(expires_ms, ?)"
    " WHERE reader = ? AND id = ? AND NOT is_read"
)


class DropUnread(Op, tag="du"):
    # Store.drop_unread: marks the entries read, kept to their own expiry (Chat.read
    # marks them in its Append instead).  Lost in a crash, they are found unread: no fsync.
    durable: ClassVar[bool] = False
    reader: str
    ids: list[str]

    def run(self, c: sqlite3.Connection) -> None:
        c.executemany(_MARK_READ_SQL, [(_FOREVER_MS, self.reader, i) for i in self.ids])


class CreatePairing(Op, tag="cp"):
    code_hash: str
    pin: str
    expires_ms: int

    def run(self, c: sqlite3.Connection) -> None:
        try:
            c.execute(
                "INSERT INTO pairing (code_hash, pin, expires_ms) VALUES (?, ?, ?)",
                (self.code_hash, self.pin, self.expires_ms),
            )
        except sqlite3.IntegrityError:
            raise PinrelayError("that pairing code exists", ErrorCode.CONFLICT) from None
        # In the same transaction: of a device's codes, only the newest can be used.
        c.execute(
            "UPDATE pairing SET replaced = 1 WHERE pin = ? AND used_ms IS NULL AND code_hash != ?",
            (self.pin, self.code_hash),
        )


class TakeBudget(Op, tag="tb"):
    """One try against a budget (Store.take_budget): read and counted in one
    transaction, so tries from anywhere see each other."""

    key: str
    limit: int
    period_ms: int
    now_ms: int

    def run(self, c: sqlite3.Connection) -> int:
        row = c.execute("SELECT empty_at_ms FROM budgets WHERE key = ?", (self.key,)).fetchone()
        wait, empty_at = ratelimit.take(
            None if row is None else int(row[0]), self.now_ms, self.limit, self.period_ms
        )
        if empty_at is not None:
            c.execute(
                "INSERT INTO budgets (key, empty_at_ms) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET empty_at_ms = excluded.empty_at_ms",
                (self.key, empty_at),
            )
        return wait


class RedeemPairing(Op, tag="rp"):
    """Use a pairing code once: read and marked used in one transaction."""

    code_hash: str
    now_ms: int

    def run(self, c: sqlite3.Connection) -> tuple[str, str | None]:
        row = c.execute(
            "SELECT pin, expires_ms, used_ms, replaced FROM pairing WHERE code_hash = ?",
            (self.code_hash,),
        ).fetchone()
        if row is None:
            return "unknown", None
        pin, expires_ms, used_ms, replaced = row
        if used_ms is not None:
            return "used", None
        if expires_ms <= self.now_ms:
            return "expired", None
        if replaced:
            return "replaced", None
        c.execute(
            "UPDATE pairing SET used_ms = ? WHERE code_hash = ?", (self.now_ms, self.code_hash)
        )
        return "redeemed", str(pin)


class CreateSubscription(Op, tag="cs"):
    sub: Subscription

    def run(self, c: sqlite3.Connection) -> None:
        sub = self.sub
        (live,) = c.execute(
            "SELECT count(*) FROM subscriptions WHERE pin = ? AND deleted_ms IS NULL", (sub.pin,)
        ).fetchone()
        if live >= MAX_SUBSCRIPTIONS:
            raise PinrelayError(
                f"a device holds at most {MAX_SUBSCRIPTIONS} subscriptions", ErrorCode.CONFLICT
            )
        try:
            c.execute(
                "INSERT INTO subscriptions (id, pin, created_ms, p256dh, auth, vapid_key)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (sub.id, sub.pin, sub.created_ms, sub.p256dh, sub.auth, sub.vapid_key),
            )
        except sqlite3.IntegrityError:
            raise PinrelayError("that subscription id exists", ErrorCode.CONFLICT) from None


class DeleteSubscription(Op, tag="ds"):
    pin: str
    sub_id: str
    now_ms: int

    def run(self, c: sqlite3.Connection) -> bool:
        return (
            c.execute(
                "UPDATE subscriptions SET deleted_ms = ? WHERE id = ? AND pin = ?"
                " AND deleted_ms IS NULL",
                (self.now_ms, self.sub_id, self.pin),
            ).rowcount
            == 1
        )


class PutPushReceipts(Op, tag="pr"):
    receipts: list[PushReceipt]

    def run(self, c: sqlite3.Connection) -> None:
        c.executemany(
            "INSERT OR REPLACE INTO push_receipts (key, state, at_ms, expires_ms)"
            " VALUES (?, ?, ?, ?)",
            [(r.key, r.state, r.at_ms, r.expires_ms) for r in self.receipts],
        )


class Item(msgspec.Struct, array_like=True):
    """One message of an append: stored if ``reason`` is None, else passed through."""

    pin: str
    id: str | None
    reason: str | None = None
    data: bytes = b""
    topic: str | None = None
    urgency: str = "normal"
    sent_ms: int = 0
    expires_ms: int = 0
    kind: str = "push"
    sender: str | None = None


class Append(Op, tag="ap"):
    items: list[Item]
    #: Idempotency: (key, fingerprint, created_ms), or None.
    idem: tuple[str, str, int] | None = None
    #: Only devices of this tenant, or that granted it (None: any device).
    tenant: str | None = None
    #: Unread entries: the first len(unread) items are their delivered receipts,
    #: each stored only if its entry is new (Chat.delivered).
    unread: list[UnreadRow] = []
    #: Entries read, (expires_ms, reader, id): the first len(read) items are their
    #: read receipts, each stored only if its entry is still unread (marked here).
    read: list[tuple[int, str, str]] = []

    def run(self, c: sqlite3.Connection) -> tuple[list[AppendResult], bool]:
        idem = self.idem
        if idem is not None:
            row = c.execute(
                "SELECT fingerprint, result FROM idempotency WHERE key = ?", (idem[0],)
            ).fetchone()
            if row is not None:
                if row[0] != idem[1]:
                    raise PinrelayError(
                        "Idempotency-Key was used with a different request", ErrorCode.CONFLICT
                    )
                return results_dec.decode(row[1]), True
        items = self.items
        if self.unread:
            items = _first_telling(c, items, _PUT_UNREAD_SQL, self.unread)
        if self.read:
            items = _first_telling(c, items, _MARK_READ_SQL, self.read)
        results = _append_all(c, items, self.tenant)
        if idem is not None:
            c.execute(
                "INSERT INTO idempotency (key, fingerprint, result, created_ms)"
                " VALUES (?, ?, ?, ?)",
                (idem[0], idem[1], _results_enc.encode(results), idem[2]),
            )
        return results, False


def _first_telling(
    c: sqlite3.Connection, items: list[Item], sql: str, args: Sequence[tuple[Any, ...]]
) -> list[Item]:
    """Run ``sql`` once per ``args``; ``items[i]``, the receipt that ``args[i]``'s
    change tells of, becomes a Rejected where nothing changed: that receipt is
    stored already (a repeated ack or read, or two reads at once)."""
    kept = list(items)
    for i, arg in enumerate(args):
        if not c.execute(sql, arg).rowcount:
            kept[i] = Item(items[i].pin, items[i].id, RECEIPT_STORED)
    return kept


class Stop(Op, tag="stop"):
    """Not a write: the writer commits what came before, answers, and exits."""


_BUMP_SQL = "UPDATE devices SET last_cursor = last_cursor + ?1 WHERE pin = ?2 RETURNING last_cursor"
#: A device of another tenant is left alone, as a PIN with no device is.
_BUMP_TENANT_SQL = (
    "UPDATE devices SET last_cursor = last_cursor + ?1 WHERE pin = ?2"
    " AND (tenant = ?3 OR EXISTS (SELECT 1 FROM grants WHERE pin = ?2 AND tenant = ?3))"
    " RETURNING last_cursor"
)


def _append_all(
    c: sqlite3.Connection, items: list[Item], tenant: str | None = None
) -> list[AppendResult]:
    """Append in order; one cursor update per device, one INSERT statement for all."""
    wanted: dict[str, int] = {}
    for m in items:
        if m.reason is None:
            wanted[m.pin] = wanted.get(m.pin, 0) + 1
    next_cursor: dict[str, int] = {}
    sql = _BUMP_SQL if tenant is None else _BUMP_TENANT_SQL
    for pin, count in wanted.items():
        args = (count, pin) if tenant is None else (count, pin, tenant)
        row = c.execute(sql, args).fetchone()
        if row is not None:
            next_cursor[pin] = int(row[0]) - count + 1
    results: list[AppendResult] = []
    rows: list[tuple[object, ...]] = []
    for m in items:
        if m.reason is not None:
            results.append(AppendResult(pin=m.pin, id=m.id, reason=m.reason))
            continue
        cursor = next_cursor.get(m.pin)
        if cursor is None:
            results.append(AppendResult(pin=m.pin, id=m.id, reason=UNKNOWN_DEVICE))
            continue
        next_cursor[m.pin] = cursor + 1
        if m.topic is not None:
            # DESIGN, "Expiry and collapse": the newer message replaces the stored one
            # (including one earlier in this batch, so flush the rows queued so far).
            c.executemany(_INSERT_SQL, rows)
            rows.clear()
            c.execute("DELETE FROM messages WHERE pin = ? AND topic = ?", (m.pin, m.topic))
        rows.append(
            (
                m.pin,
                cursor,
                m.id,
                m.data,
                m.topic,
                m.urgency,
                m.sent_ms,
                m.expires_ms,
                m.kind,
                m.sender,
            )
        )
        results.append(AppendResult(pin=m.pin, id=m.id, cursor=cursor, expires_ms=m.expires_ms))
    c.executemany(_INSERT_SQL, rows)
    return results
