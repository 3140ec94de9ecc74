"""Embedded engine: SQLite in WAL mode, one writer process with group commit.

Writes go to the store's writer, a child process (store/sqlite_writer.py): it
takes everything that arrived while the previous commit was syncing, runs it in one
transaction and commits it with one fsync (``synchronous=FULL``: a commit survives
power loss, not just a crash).  Each awaiting caller is answered only after that
commit (DESIGN, "Durable acceptance").

When the writer has nothing in hand, the few small writes of one turn of the loop
(a chat message, its receipt, an ack) are committed on the loop instead, on a
connection of the relay's own, the same way and with the same fsync: a quiet relay's
write then costs no hop to another process and back (docs/DECISIONS.md, entry 67).

Reads run on the event-loop thread on their own connection: in WAL mode they
never wait for the writer, and a read of one window of messages takes tens of
microseconds, less than a thread hop (docs/DECISIONS.md, "Inline reads").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from pinrelay import faults, lockfile
from pinrelay.core.errors import PinrelayError
from pinrelay.core.model import Accepted, ApiKey, Device, NewMessage, Scope, StoredMessage
from pinrelay.core.social import Action, State, Transition
from pinrelay.core.tenants import DEFAULT_TENANT, Quotas, Tenant
from pinrelay.store import sqlite_ops as ops
from pinrelay.store import sqlite_wire as wire
from pinrelay.store.base import (
    AppendResult,
    CommitObserver,
    Contact,
    Group,
    IdempotencyKey,
    Move,
    PushReceipt,
    Redemption,
    Rejected,
    StoreClosed,
    StoreStats,
    Subscription,
    Unread,
    check_budget,
    to_results,
)
from pinrelay.store.sqlite_channels import SqliteChannels
from pinrelay.store.sqlite_credit_ops import SqliteCredits
from pinrelay.store.sqlite_figure_ops import SqliteFigures
from pinrelay.store.sqlite_incident_ops import SqliteIncidents
from pinrelay.store.sqlite_link import WriterLink
from pinrelay.store.sqlite_schema import MIGRATIONS
from pinrelay.store.sqlite_webhook_ops import SqliteWebhooks
from pinrelay.store.sqlite_writer import CHECKPOINT_EVERY_S, Writer

log = logging.getLogger(__name__)

__all__ = ["MIGRATIONS", "SqliteStore", "connect", "migrate"]

_DEVICE_SQL = (
    "SELECT pin, token_hash, label, created_ms, last_seen_ms, last_cursor, acked_cursor,"
    " tenant FROM devices"
)
_KEY_SQL = "SELECT id, name, scope, key_hash, created_ms, revoked, tenant FROM api_keys"
_TENANT_SQL = "SELECT id, name, created_ms, suspended, quotas, deleted_ms FROM tenants"
_quotas_dec = msgspec.json.Decoder(Quotas)
_SUB_SQL = "SELECT id, pin, created_ms, p256dh, auth, vapid_key, deleted_ms FROM subscriptions"
_READ_SQL = (
    "SELECT pin, id, data, topic, urgency, sent_ms, expires_ms, kind, sender, cursor"
    " FROM messages WHERE pin = ? AND cursor > ? AND expires_ms > ? ORDER BY cursor LIMIT ?"
)
#: How long the writer process may take to start, or to finish once asked to stop.
WRITER_START_S = 30.0
WRITER_STOP_S = 30.0
#: How long :meth:`SqliteStore.open` waits for the database's lock.
LOCK_WAIT_S = 2.0


def _row_to_message(row: tuple[Any, ...]) -> StoredMessage:
    return StoredMessage(*row)


def _item(m: NewMessage) -> ops.Item:
    return ops.Item(
        m.pin,
        m.id,
        None,
        m.data,
        m.topic,
        m.urgency,
        m.sent_at_ms,
        m.expires_at_ms,
        m.kind,
        m.sender,
    )


def _unread_rows(entries: Sequence[Unread]) -> list[ops.UnreadRow]:
    return [(e.reader, e.id, e.sender, e.expires_ms, e.group) for e in entries]


def _read_rows(read: Sequence[Unread]) -> list[tuple[int, str, str]]:
    return [(e.expires_ms, e.reader, e.id) for e in read]


def _row_to_device(row: tuple[Any, ...]) -> Device:
    return Device(*row)


def _row_to_key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(row[0], row[1], Scope(row[2]), row[3], row[4], bool(row[5]), row[6])


def _row_to_tenant(row: tuple[Any, ...]) -> Tenant:
    return Tenant(
        id=row[0],
        name=row[1],
        created_ms=row[2],
        suspended=bool(row[3]),
        quotas=_quotas_dec.decode(row[4]),
        deleted_ms=row[5],
    )


def _put_tenant(tenant: Tenant, *, create: bool) -> ops.PutTenant:
    return ops.PutTenant(
        tenant.id,
        tenant.name,
        tenant.created_ms,
        tenant.suspended,
        msgspec.json.encode(tenant.quotas),
        tenant.deleted_ms,
        create,
    )


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; return the schema version."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise RuntimeError(
            f"database schema version {version} is newer than this pinrelay ({len(MIGRATIONS)})"
        )
    for number in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _spawn_writer(
    path: Path, fd: int, lock_fd: int, checkpoint_every_s: float
) -> subprocess.Popen[bytes]:
    """The writer gets the socket and, without using it, the store's lock: the lock
    lasts until both processes have ended (lockfile, rule 1)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "pinrelay.store.sqlite_writer", str(fd), str(path)]
    argv += [str(os.getpid()), repr(checkpoint_every_s)]
    return subprocess.Popen(argv, pass_fds=(fd, lock_fd), stdin=subprocess.DEVNULL, env=env)


def lock_path(path: Path) -> Path:
    """The store's lock file: beside the database file the path leads to (symlinks
    resolved), so two paths to one database meet at one lock."""
    real = path.resolve()
    return real.with_name(real.name + ".lock")


class SqliteStore(SqliteChannels, SqliteIncidents, SqliteCredits, SqliteFigures, SqliteWebhooks):
    """The embedded default engine: one file, ``<data>/pinrelay.db``."""

    atomic_receipts = True

    def __init__(
        self,
        path: Path,
        observer: CommitObserver | None = None,
        *,
        inline_commits: bool = True,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        self.path = path
        self.inline_commits = inline_commits
        #: How often the writer checkpoints while it has no request (DECISIONS 77).
        self.checkpoint_every_s = checkpoint_every_s
        self._observer = observer
        self._proc: subprocess.Popen[bytes] | None = None
        self._link: WriterLink | None = None
        self._reader: sqlite3.Connection | None = None
        self._inline: Writer | None = None
        self._lock: lockfile.Lock | None = None

    # --- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._open)
            await self._start_writer()
        except BaseException:
            await self.close()
            raise

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One store per database file (SQLite lets two writers take turns, and each
        # would hand out cursors and forget acknowledged messages for itself).  The
        # wait: the writer of a relay killed a moment ago may still be on its way out.
        self._lock = lockfile.acquire(
            lock_path(self.path), f"database {self.path}", wait_s=LOCK_WAIT_S
        )
        # The database holds token hashes: create it private to the relay's user
        # (SQLite gives the -wal and -shm files the main file's mode).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        conn = connect(self.path)
        try:
            migrate(conn)
        finally:
            conn.close()
        self._reader = connect(self.path)
        if self.inline_commits:
            conn = connect(self.path)
            # Never wait on the loop for the lock: while the writer process has it,
            # writes are its to commit.
            conn.execute("PRAGMA busy_timeout=0")
            # Nor checkpoint there: the writer process does, beside these commits
            # (sqlite_writer.CHECKPOINT_EVERY_S).
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._inline = Writer(conn)
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                p.chmod(0o600)

    async def _start_writer(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            # Forked from the loop's thread, on purpose: it lives as long as the relay,
            # and PR_SET_PDEATHSIG fires when the thread that forked the child ends.
            assert self._lock is not None
            self._proc = _spawn_writer(
                self.path, theirs.fileno(), self._lock.fileno(), self.checkpoint_every_s
            )
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        _, self._link = await loop.create_unix_connection(
            lambda: WriterLink(self._observer, self._inline), sock=ours
        )
        try:
            await asyncio.wait_for(asyncio.shield(self._link.ready), WRITER_START_S)
        except TimeoutError:
            raise StoreClosed("the store's writer process did not start") from None

    async def close(self) -> None:
        link, self._link = self._link, None
        proc, self._proc = self._proc, None
        if link is not None:
            with contextlib.suppress(PinrelayError, TimeoutError):
                if not link.lost:
                    await asyncio.wait_for(link.send(ops.Stop()), WRITER_STOP_S)
            if link.transport is not None:
                link.transport.close()
        if proc is not None:
            try:
                await asyncio.to_thread(proc.wait, WRITER_STOP_S)
            except subprocess.TimeoutExpired:
                log.warning("the store's writer process did not stop; killing it")
                proc.kill()
                await asyncio.to_thread(proc.wait)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._inline is not None:
            self._inline.conn.close()
            self._inline = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @property
    def inline_committed(self) -> int:
        """Groups committed on the loop so far (metrics: pinrelay_store_inline_commits)."""
        return 0 if self._link is None else self._link.inline_commits

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid (for tests and benchmarks)."""
        return None if self._proc is None else self._proc.pid

    def healthy(self) -> bool:
        link, proc = self._link, self._proc
        return link is not None and not link.lost and proc is not None and proc.poll() is None

    async def _write(self, op: wire.AnyOp) -> Any:
        link = self._link
        if link is None:
            raise StoreClosed("store is closed")
        return await link.send(op)

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StoreClosed("store is closed")
        return self._reader

    # --- tenants ---------------------------------------------------------------
    async def create_tenant(self, tenant: Tenant) -> None:
        await self._write(_put_tenant(tenant, create=True))

    async def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = self._read().execute(_TENANT_SQL + " WHERE id = ?", (tenant_id,)).fetchone()
        return None if row is None else _row_to_tenant(row)

    async def list_tenants(self) -> list[Tenant]:
        rows = self._read().execute(_TENANT_SQL + " ORDER BY id").fetchall()
        return [_row_to_tenant(r) for r in rows]

    async def update_tenant(self, tenant: Tenant) -> bool:
        return bool(await self._write(_put_tenant(tenant, create=False)))

    # --- devices -------------------------------------------------------------
    async def create_device(
        self,
        pin: str,
        token_hash: str,
        label: str | None,
        now_ms: int,
        tenant: str | None = DEFAULT_TENANT,
        max_devices: int | None = None,
    ) -> Device | None:
        op = ops.CreateDevice(pin, token_hash, label, now_ms, tenant, max_devices)
        if not await self._write(op):
            return None
        return Device(pin, token_hash, label, now_ms, None, 0, 0, tenant)

    async def get_device(self, pin: str) -> Device | None:
        row = self._read().execute(_DEVICE_SQL + " WHERE pin = ?", (pin,)).fetchone()
        return None if row is None else _row_to_device(row)

    async def set_device_tenant(self, pin: str, tenant: str | None) -> bool:
        return bool(await self._write(ops.SetDeviceTenant(pin, tenant)))

    async def request_move(self, pin: str, move: Move | None) -> bool:
        to, expires_ms = (None, None) if move is None else (move.tenant, move.expires_ms)
        return bool(await self._write(ops.RequestMove(pin, to, expires_ms)))

    async def pending_move(self, pin: str) -> Move | None:
        sql = "SELECT move_to, move_expires_ms FROM devices WHERE pin = ?"
        row = self._read().execute(sql, (pin,)).fetchone()
        return None if row is None or row[0] is None else Move(row[0], row[1])

    async def accept_move(
        self, pin: str, tenant: str, now_ms: int, max_devices: int | None = None
    ) -> bool:
        return bool(await self._write(ops.AcceptMove(pin, tenant, now_ms, max_devices)))

    async def set_grant(self, pin: str, tenant: str, granted: bool) -> bool:
        return bool(await self._write(ops.SetGrant(pin, tenant, granted)))

    async def grants_of(self, pin: str) -> list[str]:
        sql = "SELECT tenant FROM grants WHERE pin = ? ORDER BY tenant"
        return [r[0] for r in self._read().execute(sql, (pin,)).fetchall()]

    async def delete_device(self, pin: str) -> bool:
        return bool(await self._write(ops.DeleteDevice(pin)))

    async def set_token(self, pin: str, token_hash: str) -> bool:
        return bool(await self._write(ops.SetToken(pin, token_hash)))

    async def touch_device(self, pin: str, now_ms: int) -> None:
        await self._write(ops.TouchDevice(pin, now_ms))

    async def last_cursor(self, pin: str) -> int:
        device = await self.get_device(pin)
        return 0 if device is None else device.last_cursor

    async def cursor_limit(self, pin: str) -> int:
        return await self.last_cursor(pin)  # kept per device, never lowered

    async def backlog(self, pin: str, now_ms: int) -> int:
        row = (
            self._read()
            .execute(
                "SELECT count(*) FROM messages WHERE pin = ? AND expires_ms > ?", (pin, now_ms)
            )
            .fetchone()
        )
        return int(row[0])

    # --- keys ----------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> None:
        await self._write(
            ops.CreateKey(
                key.id,
                key.name,
                key.scope.value,
                key.key_hash,
                key.created_ms,
                key.revoked,
                key.tenant,
            )
        )

    async def find_key(self, key_hash: str) -> ApiKey | None:
        row = self._read().execute(_KEY_SQL + " WHERE key_hash = ?", (key_hash,)).fetchone()
        return None if row is None else _row_to_key(row)

    async def list_keys(self) -> list[ApiKey]:
        rows = self._read().execute(_KEY_SQL + " ORDER BY created_ms, id").fetchall()
        return [_row_to_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> bool:
        return bool(await self._write(ops.RevokeKey(key_id)))

    # --- contacts and read receipts ---------------------------------------------
    async def contact_action(
        self, actor: str, other: str, action: Action, now_ms: int, notice: NewMessage
    ) -> tuple[Transition, Accepted | None]:
        mine, theirs, notify, raw = await self._write(
            ops.ContactAction(actor, other, action.value, now_ms, _item(notice))
        )
        accepted = None
        if raw is not None:
            (result,) = to_results([msgspec.convert(raw, AppendResult)])
            accepted = result if isinstance(result, Accepted) else None
        return Transition(mine, theirs, notify), accepted

    async def contacts(self, owner: str) -> list[Contact]:
        rows = (
            self._read()
            .execute(
                "SELECT other, state, since_ms FROM contacts WHERE owner = ? ORDER BY other",
                (owner,),
            )
            .fetchall()
        )
        return [Contact(*row) for row in rows]

    async def contact_state(self, owner: str, other: str) -> State | None:
        row = (
            self._read()
            .execute("SELECT state FROM contacts WHERE owner = ? AND other = ?", (owner, other))
            .fetchone()
        )
        return None if row is None else row[0]

    async def create_group(self, group: Group) -> None:
        await self._write(
            ops.CreateGroup(group.id, group.name, group.creator, group.members, group.created_ms)
        )

    def _group(self, conn: sqlite3.Connection, group_id: str) -> Group | None:
        row = conn.execute(
            "SELECT name, creator, created_ms FROM groups WHERE id = ?", (group_id,)
        ).fetchone()
        if row is None:
            return None
        members = conn.execute(
            "SELECT pin FROM group_members WHERE grp = ? ORDER BY pin", (group_id,)
        ).fetchall()
        return Group(group_id, row[0], row[1], [m[0] for m in members], row[2])

    async def get_group(self, group_id: str) -> Group | None:
        return self._group(self._read(), group_id)

    async def change_members(
        self, group_id: str, add: Sequence[str], remove: Sequence[str]
    ) -> Group | None:
        if not await self._write(ops.ChangeMembers(group_id, list(add), list(remove))):
            return None
        return await self.get_group(group_id)

    async def groups_of(self, pin: str) -> list[Group]:
        conn = self._read()
        ids = conn.execute(
            "SELECT grp FROM group_members WHERE pin = ? ORDER BY grp", (pin,)
        ).fetchall()
        return [g for (gid,) in ids if (g := self._group(conn, gid)) is not None]

    async def put_unread(self, entries: Sequence[Unread]) -> None:
        if entries:
            await self._write(ops.PutUnread(_unread_rows(entries)))

    async def find_unread(
        self, reader: str, ids: Sequence[str], now_ms: int, with_read: bool = False
    ) -> list[Unread]:
        if not ids:
            return []
        rows = (
            self._read()
            .execute(
                "SELECT reader, id, sender, expires_ms, grp FROM unread WHERE reader = ?"
                " AND id IN (SELECT value FROM json_each(?)) AND expires_ms > ?"
                " AND (? OR NOT is_read)",
                (reader, msgspec.json.encode(list(ids)).decode(), now_ms, with_read),
            )
            .fetchall()
        )
        return [Unread(*row) for row in rows]

    async def drop_unread(self, reader: str, ids: Sequence[str]) -> None:
        if ids:
            await self._write(ops.DropUnread(reader, list(ids)))

    # --- budgets -------------------------------------------------------------------
    async def take_budget(self, key: str, limit: int, period_ms: int, now_ms: int) -> int:
        check_budget(key, limit, period_ms)
        wait: int = await self._write(ops.TakeBudget(key, limit, period_ms, now_ms))
        return wait

    # --- pairing codes -------------------------------------------------------------
    async def create_pairing(self, code_hash: str, pin: str, expires_ms: int) -> None:
        await self._write(ops.CreatePairing(code_hash, pin, expires_ms))

    async def redeem_pairing(self, code_hash: str, now_ms: int) -> Redemption:
        outcome, pin = await self._write(ops.RedeemPairing(code_hash, now_ms))
        return Redemption(outcome, pin)

    # --- Web Push subscriptions --------------------------------------------------
    async def create_subscription(self, sub: Subscription) -> None:
        await self._write(ops.CreateSubscription(sub))

    async def get_subscription(self, sub_id: str) -> Subscription | None:
        row = self._read().execute(_SUB_SQL + " WHERE id = ?", (sub_id,)).fetchone()
        return None if row is None else Subscription(*row)

    async def subscriptions_of(self, pin: str) -> list[Subscription]:
        rows = (
            self._read()
            .execute(
                _SUB_SQL + " WHERE pin = ? AND deleted_ms IS NULL ORDER BY created_ms, id", (pin,)
            )
            .fetchall()
        )
        return [Subscription(*row) for row in rows]

    async def delete_subscription(self, pin: str, sub_id: str, now_ms: int) -> bool:
        return bool(await self._write(ops.DeleteSubscription(pin, sub_id, now_ms)))

    async def put_push_receipts(self, receipts: Sequence[PushReceipt]) -> None:
        if receipts:
            await self._write(ops.PutPushReceipts(list(receipts)))

    async def get_push_receipt(self, key: str, now_ms: int) -> PushReceipt | None:
        row = (
            self._read()
            .execute(
                "SELECT key, state, at_ms, expires_ms FROM push_receipts"
                " WHERE key = ? AND expires_ms > ?",
                (key, now_ms),
            )
            .fetchone()
        )
        return None if row is None else PushReceipt(*row)

    async def append(
        self,
        messages: Sequence[NewMessage | Rejected],
        idem: IdempotencyKey | None = None,
        tenant: str | None = None,
        unread: Sequence[Unread] = (),
        read: Sequence[Unread] = (),
    ) -> tuple[list[Accepted | Rejected], bool]:
        items = [
            ops.Item(m.pin, m.id, m.reason) if isinstance(m, Rejected) else _item(m)
            for m in messages
        ]
        key = None if idem is None else (idem.key, idem.fingerprint, idem.created_ms)
        if max(len(unread), len(read)) > len(items):
            raise ValueError("unread, read: at most one entry per message")
        op = ops.Append(items, key, tenant, _unread_rows(unread), _read_rows(read))
        raw, replay = await self._write(op)
        return to_results(msgspec.convert(raw, list[AppendResult])), bool(replay)

    async def earlier_append(
        self, key: str, now_ms: int
    ) -> tuple[str, list[Accepted | Rejected]] | None:
        row = (
            self._read()
            .execute(
                "SELECT fingerprint, result FROM idempotency WHERE key = ? AND created_ms > ?",
                (key, now_ms - ops.IDEMPOTENCY_TTL_MS),
            )
            .fetchone()
        )
        return None if row is None else (row[0], to_results(ops.results_dec.decode(row[1])))

    async def read(self, pin: str, after: int, limit: int, now_ms: int) -> list[StoredMessage]:
        if faults.active("read-fail"):
            raise sqlite3.OperationalError("injected fault: read-fail")
        rows = self._read().execute(_READ_SQL, (pin, after, now_ms, limit)).fetchall()
        return [_row_to_message(r) for r in rows]

    async def ack(self, pin: str, cursor: int) -> None:
        await self.ack_many([(pin, cursor)])

    async def ack_many(self, acks: Sequence[tuple[str, int]]) -> None:
        await self._write(ops.AckMany(list(acks)))

    async def sweep(self, now_ms: int, limit: int = 1000) -> int:
        return int(await self._write(ops.Sweep(now_ms, limit)))

    async def expired_chats(self, now_ms: int, limit: int) -> list[StoredMessage]:
        rows = (
            self._read()
            .execute(
                "SELECT pin, id, data, topic, urgency, sent_ms, expires_ms, kind, sender, cursor"
                " FROM messages WHERE expires_ms <= ? AND kind = 'chat' ORDER BY expires_ms"
                " LIMIT ?",
                (now_ms, limit),
            )
            .fetchall()
        )
        return [_row_to_message(r) for r in rows]

    async def forget(self, keys: Sequence[tuple[str, int]]) -> int:
        if not keys:
            return 0
        return int(await self._write(ops.Forget([(pin, cursor) for pin, cursor in keys])))

    async def stats(self) -> StoreStats:
        self._read()  # raises when closed
        return await asyncio.to_thread(_count, self.path)


def _count(path: Path) -> StoreStats:
    conn = sqlite3.connect(path)
    try:
        devices = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
        return StoreStats(int(devices), int(messages))
    finally:
        conn.close()
