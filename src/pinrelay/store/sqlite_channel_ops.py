"""The SQLite engine's writes for channels and broadcasts (core/channels.py).

Ops as in store/sqlite_ops.py: each runs in the writer's one transaction, so a
check and the write it guards (a tenant's channel count and the insert, a
device's memberships and the join, a device's day count and its admission)
see no other write between them.
"""

from __future__ import annotations

import sqlite3
from typing import ClassVar

import msgspec

from pinrelay.core.channels import MAX_MEMBERSHIPS
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.makegood import MAKEGOOD_CHANNEL
from pinrelay.store.sqlite_ops import Op

#: The schema (migration 8): channels with tombstones, memberships, consent,
#: the daily marketing count, broadcasts with their progress, counts, the audit log;
#: and the relays' stored-bytes ledgers (core/ledger.py), which came with them.
SCHEMA = """
    CREATE TABLE channels (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        klass TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        deleted_ms INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX channels_tenant ON channels (tenant) WHERE deleted_ms IS NULL;
    CREATE TABLE channel_members (
        channel TEXT NOT NULL,
        pin TEXT NOT NULL,
        PRIMARY KEY (channel, pin)
    ) WITHOUT ROWID;
    CREATE INDEX channel_members_pin ON channel_members (pin);
    CREATE TABLE refusals (
        pin TEXT NOT NULL,
        klass TEXT NOT NULL,
        PRIMARY KEY (pin, klass)
    ) WITHOUT ROWID;
    CREATE TABLE marketing (
        pin TEXT PRIMARY KEY,
        day INTEGER NOT NULL,
        count INTEGER NOT NULL,
        last_broadcast TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE broadcasts (
        id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        data BLOB NOT NULL,
        topic TEXT,
        urgency TEXT NOT NULL,
        after_pin TEXT NOT NULL,
        members INTEGER NOT NULL,
        stored INTEGER NOT NULL,
        skipped INTEGER NOT NULL,
        done_ms INTEGER,
        updated_ms INTEGER NOT NULL,
        pending TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID;
    CREATE INDEX broadcasts_unfinished ON broadcasts (created_ms) WHERE done_ms IS NULL;
    CREATE TABLE broadcast_counts (
        id TEXT NOT NULL,
        node TEXT NOT NULL,
        delivered INTEGER NOT NULL,
        acked INTEGER NOT NULL,
        PRIMARY KEY (id, node)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT,
        action TEXT NOT NULL,
        channel TEXT NOT NULL,
        broadcast TEXT
    );
    CREATE INDEX audit_tenant ON audit (tenant, at_ms);
    CREATE INDEX audit_at ON audit (at_ms);
    CREATE TABLE ledgers (
        node TEXT PRIMARY KEY,
        body BLOB NOT NULL
    ) WITHOUT ROWID;
"""

_DEVICE = "SELECT 1 FROM devices WHERE pin = ?"


class CreateChannel(Op, tag="cch"):
    id: str
    tenant: str
    name: str
    klass: str
    created_ms: int
    max_channels: int

    def run(self, c: sqlite3.Connection) -> None:
        sql = "SELECT count(*) FROM channels WHERE tenant = ? AND deleted_ms IS NULL"
        if c.execute(sql, (self.tenant,)).fetchone()[0] >= self.max_channels:
            raise PinrelayError(
                f"tenant {self.tenant} holds {self.max_channels} channels, its most",
                ErrorCode.CONFLICT,
            )
        try:
            c.execute(
                "INSERT INTO channels (id, tenant, name, klass, created_ms) VALUES (?, ?, ?, ?, ?)",
                (self.id, self.tenant, self.name, self.klass, self.created_ms),
            )
        except sqlite3.IntegrityError:
            raise PinrelayError(f"channel id {self.id} is taken", ErrorCode.CONFLICT) from None


class DeleteChannel(Op, tag="dch"):
    id: str
    now_ms: int

    def run(self, c: sqlite3.Connection) -> bool:
        sql = "UPDATE channels SET deleted_ms = ? WHERE id = ? AND deleted_ms IS NULL"
        if c.execute(sql, (self.now_ms, self.id)).rowcount != 1:
            return False
        c.execute("DELETE FROM channel_members WHERE channel = ?", (self.id,))
        return True


class JoinChannel(Op, tag="jch"):
    pin: str
    channel: str
    joined: bool

    def run(self, c: sqlite3.Connection) -> bool:
        if c.execute(_DEVICE, (self.pin,)).fetchone() is None:
            return False
        if not self.joined:
            sql = "DELETE FROM channel_members WHERE channel = ? AND pin = ?"
            c.execute(sql, (self.channel, self.pin))
            return True
        held = c.execute(
            "SELECT count(*), sum(channel = ?) FROM channel_members WHERE pin = ?",
            (self.channel, self.pin),
        ).fetchone()
        if held[1]:
            return True
        if held[0] >= MAX_MEMBERSHIPS:
            raise PinrelayError(
                f"a device is a member of at most {MAX_MEMBERSHIPS} channels", ErrorCode.CONFLICT
            )
        sql = "INSERT INTO channel_members (channel, pin) VALUES (?, ?)"
        c.execute(sql, (self.channel, self.pin))
        return True


class SetRefusal(Op, tag="srf"):
    pin: str
    klass: str
    refused: bool

    def run(self, c: sqlite3.Connection) -> bool:
        if c.execute(_DEVICE, (self.pin,)).fetchone() is None:
            return False
        if self.refused:
            sql = "INSERT OR IGNORE INTO refusals (pin, klass) VALUES (?, ?)"
        else:
            sql = "DELETE FROM refusals WHERE pin = ? AND klass = ?"
        c.execute(sql, (self.pin, self.klass))
        return True


class Admit(Op, tag="adm"):
    """Which of ``pins`` take the broadcast, counted against the day's cap in the
    same transaction (Store.admit).  A PIN with no device is not admitted."""

    pins: list[str]
    klass: str
    broadcast: str
    day: int
    cap: int | None

    def run(self, c: sqlite3.Connection) -> list[str]:
        pins = _json_list(self.pins)
        devices = {
            r[0]
            for r in c.execute(
                "SELECT pin FROM devices WHERE pin IN (SELECT value FROM json_each(?))", (pins,)
            )
        }
        refused = {
            r[0]
            for r in c.execute(
                "SELECT pin FROM refusals WHERE klass = ?"
                " AND pin IN (SELECT value FROM json_each(?))",
                (self.klass, pins),
            )
        }
        #: pin -> (day, count, last broadcast counted)
        counted: dict[str, tuple[int, int, str]] = {}
        if self.cap is not None:
            counted = {
                r[0]: (r[1], r[2], r[3])
                for r in c.execute(
                    "SELECT pin, day, count, last_broadcast FROM marketing"
                    " WHERE pin IN (SELECT value FROM json_each(?))",
                    (pins,),
                )
            }
        admitted: list[str] = []
        updates: list[tuple[str, int, int, str]] = []
        for pin in self.pins:
            if pin not in devices or pin in refused:
                continue
            if self.cap is None:
                admitted.append(pin)
                continue
            day, count, last = counted.get(pin, (self.day, 0, ""))
            if last == self.broadcast:  # counted before: a resumed fan-out
                admitted.append(pin)
                continue
            if day != self.day:
                count = 0
            if count >= self.cap:
                continue
            counted[pin] = (self.day, count + 1, self.broadcast)
            updates.append((pin, self.day, count + 1, self.broadcast))
            admitted.append(pin)
        c.executemany(
            "INSERT OR REPLACE INTO marketing (pin, day, count, last_broadcast)"
            " VALUES (?, ?, ?, ?)",
            updates,
        )
        return admitted


def _json_list(values: list[str]) -> str:
    return msgspec.json.encode(values).decode()


class PutBroadcast(Op, tag="pbc"):
    """Insert, or update unless that would move the record back (Store.put_broadcast)."""

    id: str
    channel: str
    tenant: str
    key_id: str | None
    created_ms: int
    expires_ms: int
    data: bytes
    topic: str | None
    urgency: str
    after: str
    members: int
    stored: int
    skipped: int
    done_ms: int | None
    updated_ms: int
    #: The pending page's PINs, comma-separated ("": none).
    pending: str

    def run(self, c: sqlite3.Connection) -> bool:
        cur = c.execute(
            "INSERT INTO broadcasts (id, channel, tenant, key_id, created_ms, expires_ms, data,"
            " topic, urgency, after_pin, members, stored, skipped, done_ms, updated_ms, pending)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET channel = excluded.channel,"
            " tenant = excluded.tenant, key_id = excluded.key_id,"
            " created_ms = excluded.created_ms, expires_ms = excluded.expires_ms,"
            " data = excluded.data, topic = excluded.topic, urgency = excluded.urgency,"
            " after_pin = excluded.after_pin, members = excluded.members,"
            " stored = excluded.stored, skipped = excluded.skipped,"
            " done_ms = excluded.done_ms, updated_ms = excluded.updated_ms,"
            " pending = excluded.pending"
            # Never back (two relays resuming one fan-out): not below the stored
            # point, and a finished fan-out stays finished.
            " WHERE after_pin <= excluded.after_pin"
            " AND (done_ms IS NULL OR excluded.done_ms IS NOT NULL)",
            (
                self.id,
                self.channel,
                self.tenant,
                self.key_id,
                self.created_ms,
                self.expires_ms,
                self.data,
                self.topic,
                self.urgency,
                self.after,
                self.members,
                self.stored,
                self.skipped,
                self.done_ms,
                self.updated_ms,
                self.pending,
            ),
        )
        return cur.rowcount == 1


class CountBroadcasts(Op, tag="cbc"):
    # PROTOCOL: a relay that dies may lose its last second of counts; so may a
    # machine that loses power (no fsync of its own; the next durable commit's covers it).
    durable: ClassVar[bool] = False
    node: str
    #: (broadcast id, delivered, acked)
    counts: list[tuple[str, int, int]]
    #: Names the call; the batch a row last took adds nothing again ("": always adds).
    batch: str = ""

    def run(self, c: sqlite3.Connection) -> None:
        c.executemany(
            "INSERT INTO broadcast_counts (id, node, delivered, acked, batch)"
            " VALUES (?1, ?4, ?2, ?3, ?5)"
            " ON CONFLICT (id, node) DO UPDATE SET delivered = delivered + excluded.delivered,"
            " acked = acked + excluded.acked, batch = excluded.batch"
            " WHERE excluded.batch = '' OR broadcast_counts.batch != excluded.batch",
            [(bid, d, a, self.node, self.batch) for bid, d, a in self.counts],
        )


class AppendAudit(Op, tag="aud"):
    at_ms: int
    tenant: str
    key_id: str | None
    action: str
    channel: str
    broadcast: str | None

    def run(self, c: sqlite3.Connection) -> None:
        c.execute(
            "INSERT INTO audit (at_ms, tenant, key_id, action, channel, broadcast)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (self.at_ms, self.tenant, self.key_id, self.action, self.channel, self.broadcast),
        )


class PruneBroadcasts(Op, tag="pbr"):
    """Forget up to ``limit`` broadcasts done and expired before ``before_ms`` (not
    make-goods: their codes name them), with their counts; how many."""

    before_ms: int
    limit: int

    def run(self, c: sqlite3.Connection) -> int:
        ids = [
            (r[0],)
            for r in c.execute(
                "SELECT id FROM broadcasts WHERE done_ms IS NOT NULL AND done_ms < ?1"
                " AND expires_ms < ?1 AND channel != ?2 LIMIT ?3",
                (self.before_ms, MAKEGOOD_CHANNEL, self.limit),
            ).fetchall()
        ]
        c.executemany("DELETE FROM broadcast_counts WHERE id = ?", ids)
        c.executemany("DELETE FROM broadcasts WHERE id = ?", ids)
        return len(ids)


class PruneAudit(Op, tag="pau"):
    """Forget up to ``limit`` audit lines written before ``before_ms``; how many."""

    before_ms: int
    limit: int

    def run(self, c: sqlite3.Connection) -> int:
        cur = c.execute(
            "DELETE FROM audit WHERE seq IN"
            " (SELECT seq FROM audit WHERE at_ms < ? ORDER BY at_ms LIMIT ?)",
            (self.before_ms, self.limit),
        )
        return cur.rowcount


class PutLedger(Op, tag="pld"):
    """A relay's stored-bytes ledger (core/ledger.py), replaced whole.  Like counts,
    no fsync of its own: a relay that dies loses its last seconds anyway."""

    durable: ClassVar[bool] = False
    node: str
    body: bytes

    def run(self, c: sqlite3.Connection) -> None:
        c.execute(
            "INSERT INTO ledgers (node, body) VALUES (?, ?)"
            " ON CONFLICT (node) DO UPDATE SET body = excluded.body",
            (self.node, self.body),
        )


ChannelOp = (
    PutLedger
    | CreateChannel
    | DeleteChannel
    | JoinChannel
    | SetRefusal
    | Admit
    | PutBroadcast
    | CountBroadcasts
    | AppendAudit
    | PruneBroadcasts
    | PruneAudit
)
