"""The SQLite engine's channels and broadcasts (Store, "channels and broadcasts").

A mixin of :class:`~pinrelay.store.sqlite.SqliteStore`: writes go to its writer
process as the ops of store/sqlite_channel_ops.py (each check in the same
transaction as the write it guards); reads run on its reader connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from pinrelay.core.channels import (
    AuditEntry,
    Broadcast,
    BroadcastCounts,
    Channel,
    ChannelClass,
)
from pinrelay.core.ledger import Ledger
from pinrelay.store import sqlite_channel_ops as ops
from pinrelay.store.sqlite_wire import AnyOp

_ledger_enc = msgspec.json.Encoder()
_ledger_dec = msgspec.json.Decoder(Ledger)
_CHANNEL_SQL = "SELECT id, tenant, name, klass, created_ms, deleted_ms FROM channels"
_BROADCAST_SQL = (
    "SELECT id, channel, tenant, key_id, created_ms, expires_ms, data, topic, urgency,"
    " after_pin, members, stored, skipped, done_ms, updated_ms, pending FROM broadcasts"
)
_AUDIT_SQL = "SELECT at_ms, tenant, key_id, action, channel, broadcast FROM audit"


def _channel(row: tuple[Any, ...]) -> Channel:
    return Channel(
        id=row[0],
        tenant=row[1],
        name=row[2],
        klass=row[3],
        created_ms=row[4],
        deleted_ms=row[5],
    )


def _broadcast(row: tuple[Any, ...]) -> Broadcast:
    return Broadcast(
        id=row[0],
        channel=row[1],
        tenant=row[2],
        key_id=row[3],
        created_ms=row[4],
        expires_ms=row[5],
        data=bytes(row[6]),
        topic=row[7],
        urgency=row[8],
        after=row[9],
        members=row[10],
        stored=row[11],
        skipped=row[12],
        done_ms=row[13],
        updated_ms=row[14],
        pending=tuple(row[15].split(",")) if row[15] else (),
    )


def _audit(row: tuple[Any, ...]) -> AuditEntry:
    return AuditEntry(
        at_ms=row[0],
        tenant=row[1],
        key_id=row[2],
        action=row[3],
        channel=row[4],
        broadcast=row[5],
    )


class SqliteChannels:
    """Channels, consent, broadcasts and the audit log, over the store's writer
    and reader (which :class:`~pinrelay.store.sqlite.SqliteStore` provides)."""

    async def _write(self, op: AnyOp) -> Any:
        raise NotImplementedError

    def _read(self) -> sqlite3.Connection:
        raise NotImplementedError

    # --- channels and members ---------------------------------------------------
    async def create_channel(self, channel: Channel, max_channels: int) -> None:
        await self._write(
            ops.CreateChannel(
                channel.id,
                channel.tenant,
                channel.name,
                channel.klass,
                channel.created_ms,
                max_channels,
            )
        )

    async def get_channel(self, channel_id: str) -> Channel | None:
        row = self._read().execute(_CHANNEL_SQL + " WHERE id = ?", (channel_id,)).fetchone()
        return None if row is None else _channel(row)

    async def list_channels(self, tenant: str | None) -> list[Channel]:
        sql = _CHANNEL_SQL + " WHERE deleted_ms IS NULL"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + " AND tenant = ?", (tenant,)
        sql += " ORDER BY id"
        return [_channel(r) for r in self._read().execute(sql, args).fetchall()]

    async def delete_channel(self, channel_id: str, now_ms: int) -> bool:
        return bool(await self._write(ops.DeleteChannel(channel_id, now_ms)))

    async def join_channel(self, pin: str, channel_id: str, joined: bool) -> bool:
        return bool(await self._write(ops.JoinChannel(pin, channel_id, joined)))

    async def channels_of(self, pin: str) -> list[str]:
        sql = "SELECT channel FROM channel_members WHERE pin = ? ORDER BY channel"
        return [r[0] for r in self._read().execute(sql, (pin,)).fetchall()]

    async def channel_members(self, channel_id: str, after: str, limit: int) -> list[str]:
        sql = "SELECT pin FROM channel_members WHERE channel = ? AND pin > ? ORDER BY pin LIMIT ?"
        return [r[0] for r in self._read().execute(sql, (channel_id, after, limit)).fetchall()]

    # --- consent and admission ----------------------------------------------------
    async def set_refusal(self, pin: str, klass: ChannelClass, refused: bool) -> bool:
        return bool(await self._write(ops.SetRefusal(pin, klass, refused)))

    async def refusals_of(self, pin: str) -> list[ChannelClass]:
        sql = "SELECT klass FROM refusals WHERE pin = ? ORDER BY klass"
        return [r[0] for r in self._read().execute(sql, (pin,)).fetchall()]

    async def admit(
        self,
        pins: Sequence[str],
        klass: ChannelClass,
        broadcast_id: str,
        day: int,
        cap: int | None,
    ) -> list[str]:
        if not pins:
            return []
        admitted = await self._write(ops.Admit(list(pins), klass, broadcast_id, day, cap))
        return [str(p) for p in admitted]

    # --- broadcasts -----------------------------------------------------------------
    async def put_broadcast(self, broadcast: Broadcast) -> bool:
        b = broadcast
        op = ops.PutBroadcast(
            b.id,
            b.channel,
            b.tenant,
            b.key_id,
            b.created_ms,
            b.expires_ms,
            b.data,
            b.topic,
            b.urgency,
            b.after,
            b.members,
            b.stored,
            b.skipped,
            b.done_ms,
            b.updated_ms,
            ",".join(b.pending),
        )
        return bool(await self._write(op))

    async def get_broadcast(self, broadcast_id: str) -> Broadcast | None:
        row = self._read().execute(_BROADCAST_SQL + " WHERE id = ?", (broadcast_id,)).fetchone()
        return None if row is None else _broadcast(row)

    async def unfinished_broadcasts(self) -> list[Broadcast]:
        sql = _BROADCAST_SQL + " WHERE done_ms IS NULL ORDER BY created_ms, id"
        return [_broadcast(r) for r in self._read().execute(sql).fetchall()]

    async def count_broadcasts(
        self, node: str, counts: Mapping[str, BroadcastCounts], batch: str = ""
    ) -> None:
        rows = [(bid, c.delivered, c.acked) for bid, c in counts.items() if c.delivered or c.acked]
        if rows:
            await self._write(ops.CountBroadcasts(node, rows, batch))

    async def broadcast_counts(self, broadcast_id: str) -> BroadcastCounts:
        sql = "SELECT sum(delivered), sum(acked) FROM broadcast_counts WHERE id = ?"
        delivered, acked = self._read().execute(sql, (broadcast_id,)).fetchone()
        return BroadcastCounts(int(delivered or 0), int(acked or 0))

    async def prune_broadcasts(self, before_ms: int, limit: int) -> int:
        return int(await self._write(ops.PruneBroadcasts(before_ms, limit)))

    async def prune_audit(self, before_ms: int, limit: int) -> int:
        return int(await self._write(ops.PruneAudit(before_ms, limit)))

    # --- stored-bytes ledgers (core/ledger.py) --------------------------------------
    async def put_ledger(self, node: str, ledger: Ledger) -> None:
        await self._write(ops.PutLedger(node, _ledger_enc.encode(ledger)))

    async def ledgers(self) -> dict[str, Ledger]:
        rows = self._read().execute("SELECT node, body FROM ledgers").fetchall()
        return {node: _ledger_dec.decode(body) for node, body in rows}

    # --- the audit log --------------------------------------------------------------
    async def append_audit(self, entry: AuditEntry) -> None:
        e = entry
        await self._write(
            ops.AppendAudit(e.at_ms, e.tenant, e.key_id, e.action, e.channel, e.broadcast)
        )

    async def audit(
        self, tenant: str | None, before_ms: int | None, limit: int
    ) -> list[AuditEntry]:
        where: list[str] = []
        args: list[object] = []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if before_ms is not None:
            where.append("at_ms < ?")
            args.append(before_ms)
        sql = _AUDIT_SQL
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY at_ms DESC, seq DESC LIMIT ?"
        args.append(limit)
        return [_audit(r) for r in self._read().execute(sql, args).fetchall()]
