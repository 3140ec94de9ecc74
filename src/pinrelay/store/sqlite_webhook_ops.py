"""The SQLite engine's webhooks: subscriptions, their outbox and leases
(core/webhooks.py, DECISIONS 56).

Writes are ops of the writer process (store/sqlite_ops.py), so a subscription's
count check and insert, and an outbox entry's "insert unless present", each run in
one transaction.  Records are kept whole as JSON beside the columns reads filter
and sort on; reads run on the store's reader connection.  One relay holds a SQLite
store, so its lease is always its own; the table keeps the contract the cluster's
engine has (Store.lease_webhook).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.webhooks import OutboxEntry, Webhook
from pinrelay.store.sqlite_ops import Op

#: The schema (a migration of its own, appended to store/sqlite.py's MIGRATIONS).
SCHEMA = """
    CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        tenant TEXT,
        created_ms INTEGER NOT NULL,
        body BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE webhook_outbox (
        webhook TEXT NOT NULL,
        key TEXT NOT NULL,
        done_ms INTEGER,
        body BLOB NOT NULL,
        PRIMARY KEY (webhook, key)
    ) WITHOUT ROWID;
    CREATE INDEX webhook_outbox_done ON webhook_outbox (done_ms) WHERE done_ms IS NOT NULL;
    CREATE TABLE webhook_leases (
        webhook TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        until_ms INTEGER NOT NULL
    ) WITHOUT ROWID
"""

_enc = msgspec.json.Encoder()
_hook_dec = msgspec.json.Decoder(Webhook)
_entry_dec = msgspec.json.Decoder(OutboxEntry)


class PutWebhook(Op, tag="pwh"):
    body: bytes
    max_per_tenant: int

    def run(self, c: sqlite3.Connection) -> None:
        hook = _hook_dec.decode(self.body)
        sql = "SELECT count(*) FROM webhooks WHERE tenant IS ?"
        if c.execute(sql, (hook.tenant,)).fetchone()[0] >= self.max_per_tenant:
            raise PinrelayError(
                f"at most {self.max_per_tenant} webhooks: delete one first", ErrorCode.CONFLICT
            )
        c.execute(
            "INSERT INTO webhooks (id, tenant, created_ms, body) VALUES (?, ?, ?, ?)",
            (hook.id, hook.tenant, hook.created_ms, self.body),
        )


class DeleteWebhook(Op, tag="dwh"):
    webhook: str

    def run(self, c: sqlite3.Connection) -> bool:
        gone = c.execute("DELETE FROM webhooks WHERE id = ?", (self.webhook,)).rowcount == 1
        c.execute("DELETE FROM webhook_outbox WHERE webhook = ?", (self.webhook,))
        c.execute("DELETE FROM webhook_leases WHERE webhook = ?", (self.webhook,))
        return gone


class EnqueueWebhooks(Op, tag="ewh"):
    #: (webhook, key, done_ms, body) of each entry.
    rows: list[tuple[str, str, int | None, bytes]]

    def run(self, c: sqlite3.Connection) -> None:
        c.executemany(
            "INSERT OR IGNORE INTO webhook_outbox (webhook, key, done_ms, body)"
            " SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = ?1)",
            self.rows,
        )


class WebhookDone(Op, tag="owh"):
    webhook: str
    key: str
    now_ms: int

    def run(self, c: sqlite3.Connection) -> None:
        c.execute(
            "UPDATE webhook_outbox SET done_ms = ? WHERE webhook = ? AND key = ?"
            " AND done_ms IS NULL",
            (self.now_ms, self.webhook, self.key),
        )


class LeaseWebhook(Op, tag="lwh"):
    #: A lease lost in a crash is taken again by the relay that restarts.
    durable: ClassVar[bool] = False

    webhook: str
    owner: str
    now_ms: int
    ttl_ms: int

    def run(self, c: sqlite3.Connection) -> bool:
        sql = "SELECT owner, until_ms FROM webhook_leases WHERE webhook = ?"
        row = c.execute(sql, (self.webhook,)).fetchone()
        if row is not None and row[0] != self.owner and row[1] > self.now_ms:
            return False
        c.execute(
            "INSERT OR REPLACE INTO webhook_leases (webhook, owner, until_ms) VALUES (?, ?, ?)",
            (self.webhook, self.owner, self.now_ms + self.ttl_ms),
        )
        return True


class PruneWebhooks(Op, tag="xwh"):
    before_ms: int

    def run(self, c: sqlite3.Connection) -> int:
        sql = "DELETE FROM webhook_outbox WHERE done_ms IS NOT NULL AND done_ms < ?"
        return c.execute(sql, (self.before_ms,)).rowcount


WebhookOp = (
    PutWebhook | DeleteWebhook | EnqueueWebhooks | WebhookDone | LeaseWebhook | PruneWebhooks
)


class SqliteWebhooks:
    """Webhooks over the store's writer and reader (a mixin of SqliteStore)."""

    async def _write(self, op: Any) -> Any:
        raise NotImplementedError

    def _read(self) -> sqlite3.Connection:
        raise NotImplementedError

    async def put_webhook(self, webhook: Webhook, max_per_tenant: int) -> None:
        await self._write(PutWebhook(_enc.encode(webhook), max_per_tenant))

    async def get_webhook(self, webhook_id: str) -> Webhook | None:
        row = self._read().execute("SELECT body FROM webhooks WHERE id = ?", (webhook_id,))
        found = row.fetchone()
        return None if found is None else _hook_dec.decode(found[0])

    async def list_webhooks(self) -> list[Webhook]:
        rows = self._read().execute("SELECT body FROM webhooks ORDER BY created_ms, id")
        return [_hook_dec.decode(r[0]) for r in rows.fetchall()]

    async def delete_webhook(self, webhook_id: str) -> bool:
        return bool(await self._write(DeleteWebhook(webhook_id)))

    async def enqueue_webhooks(self, entries: Sequence[OutboxEntry]) -> None:
        if entries:
            rows = [(e.webhook, e.key, e.done_ms, _enc.encode(e)) for e in entries]
            await self._write(EnqueueWebhooks(rows))

    async def pending_webhooks(self, webhook_id: str, limit: int) -> list[OutboxEntry]:
        sql = (
            "SELECT body FROM webhook_outbox WHERE webhook = ? AND done_ms IS NULL"
            " ORDER BY key LIMIT ?"
        )
        rows = self._read().execute(sql, (webhook_id, limit)).fetchall()
        return [_entry_dec.decode(r[0]) for r in rows]

    async def webhook_done(self, webhook_id: str, key: str, now_ms: int) -> None:
        await self._write(WebhookDone(webhook_id, key, now_ms))

    async def lease_webhook(self, webhook_id: str, owner: str, now_ms: int, ttl_ms: int) -> bool:
        return bool(await self._write(LeaseWebhook(webhook_id, owner, now_ms, ttl_ms)))

    async def prune_webhooks(self, before_ms: int) -> int:
        return int(await self._write(PruneWebhooks(before_ms)))
