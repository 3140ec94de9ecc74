"""Embedded engine: SQLite in WAL mode, one writer thread with group commit.

Writes are queued to a single writer thread.  It takes everything queued while
the previous commit was syncing, runs them in one transaction (should one fail, the
group is rolled back and run again with a SAVEPOINT per write, so a failing write
rolls back alone), and commits them with one fsync
(``synchronous=FULL``: a commit survives power loss, not just a crash).  Each
awaiting caller is answered only after that commit (DESIGN, "Durable acceptance").

Reads run on the event-loop thread on their own connection: in WAL mode they
never wait for the writer, and a read of one window of messages takes tens of
microseconds, less than a thread hop (docs/DECISIONS.md, "Inline reads").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import Accepted, ApiKey, Device, NewMessage, Scope, StoredMessage
from pinrelay.store.base import (
    UNKNOWN_DEVICE,
    CommitObserver,
    IdempotencyKey,
    Rejected,
    StoreClosed,
    StoreStats,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Write = Callable[[sqlite3.Connection], Any]


class _Job(NamedTuple):
    write: Write
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    #: False for writes whose loss in a crash is harmless (acks, last seen).
    durable: bool


#: Schema migrations, applied in order; PRAGMA user_version counts those applied.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE devices (
        pin TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL,
        label TEXT,
        created_ms INTEGER NOT NULL,
        last_seen_ms INTEGER,
        last_cursor INTEGER NOT NULL DEFAULT 0,
        acked_cursor INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        pin TEXT NOT NULL,
        cursor INTEGER NOT NULL,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        sender TEXT,
        topic TEXT,
        urgency TEXT NOT NULL,
        sent_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (pin, cursor)
    ) WITHOUT ROWID;
    CREATE INDEX messages_expiry ON messages (expires_ms);
    CREATE INDEX messages_topic ON messages (pin, topic) WHERE topic IS NOT NULL;
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        scope TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        result BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX idempotency_age ON idempotency (created_ms);
    """,
]

#: How long an Idempotency-Key is remembered.
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
#: Writes per transaction at most, so one commit never grows without bound.
MAX_GROUP = 512


class _Result(msgspec.Struct, array_like=True):
    """An append result as kept for idempotent replays."""

    pin: str
    id: str | None = None
    cursor: int = 0
    expires_ms: int = 0
    reason: str | None = None


_results_enc = msgspec.msgpack.Encoder()
_results_dec = msgspec.msgpack.Decoder(list[_Result])

_READ_SQL = (
    "SELECT pin, cursor, id, data, topic, urgency, sent_ms, expires_ms, kind, sender"
    " FROM messages WHERE pin = ? AND cursor > ? AND expires_ms > ? ORDER BY cursor LIMIT ?"
)
_INSERT_SQL = (
    "INSERT INTO messages (pin, cursor, id, data, topic, urgency, sent_ms, expires_ms, kind,"
    " sender) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _row_to_message(row: tuple[Any, ...]) -> StoredMessage:
    return StoredMessage(*row)


def _row_to_device(row: tuple[Any, ...]) -> Device:
    return Device(*row)


def _row_to_key(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(row[0], row[1], Scope(row[2]), row[3], row[4], bool(row[5]))


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


class _Writer(threading.Thread):
    """The one thread that writes.  Group commit: one fsync for many writes."""

    def __init__(self, conn: sqlite3.Connection, observer: CommitObserver | None) -> None:
        super().__init__(name="pinrelay-sqlite-writer", daemon=True)
        self.conn = conn
        self.observer = observer
        self.queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.failed: BaseException | None = None
        #: Whether the connection's synchronous setting is FULL (connect() sets it).
        self.synced = True

    def run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < MAX_GROUP:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    @staticmethod
    def _isolated(conn: sqlite3.Connection, write: Callable[[sqlite3.Connection], Any]) -> Any:
        conn.execute("SAVEPOINT w")
        try:
            result = (True, write(conn))
        except Exception as exc:
            conn.execute("ROLLBACK TO w")
            result = (False, exc)
        conn.execute("RELEASE w")
        return result

    def _commit(self, batch: list[_Job]) -> None:
        conn = self.conn
        outcomes: list[tuple[bool, Any]] = []
        started = time.perf_counter()
        try:
            # A group with nothing that must survive a crash commits without fsync:
            # in WAL mode it stays ordered and consistent, and the next durable
            # commit's fsync covers it (docs/DECISIONS.md, "Acks without fsync").
            durable = any(job.durable for job in batch)
            if durable is not self.synced:
                conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self.synced = durable
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Optimistic: no SAVEPOINT per write.  Every statement is a release and
                # re-acquisition of the GIL, which a busy event loop makes this thread
                # wait for; writes rarely fail.
                outcomes = [(True, write(conn)) for write, _, _, _ in batch]
            except Exception:
                # One failed: undo the group, then run each in its own SAVEPOINT so
                # only the failing write fails.
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                outcomes = [self._isolated(conn, write) for write, _, _, _ in batch]
            conn.execute("COMMIT")
        except BaseException as exc:
            log.exception("sqlite commit failed")
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(False, StoreClosed(f"commit failed: {exc}"))] * len(batch)
        if self.observer is not None:
            self.observer(time.perf_counter() - started, len(batch))
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, fut, loop, _), (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, answers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                loop.call_soon_threadsafe(_resolve, answers)


def _resolve(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in answers:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class SqliteStore:
    """The embedded default engine: one file, ``<data>/pinrelay.db``."""

    def __init__(self, path: Path, observer: CommitObserver | None = None) -> None:
        self.path = path
        self._observer = observer
        self._writer: _Writer | None = None
        self._reader: sqlite3.Connection | None = None

    # --- lifecycle -----------------------------------------------------------
    async def open(self) -> None:
        await asyncio.to_thread(self._open)
        assert self._writer is not None
        self._writer.start()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The database holds token hashes: create it private to the relay's user
        # (SQLite gives the -wal and -shm files the main file's mode).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        wconn = connect(self.path)
        try:
            migrate(wconn)
        except BaseException:
            wconn.close()
            raise
        self._reader = connect(self.path)
        self._writer = _Writer(wconn, self._observer)
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                p.chmod(0o600)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.queue.put(None)
            await asyncio.to_thread(writer.join)
            writer.conn.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def healthy(self) -> bool:
        writer = self._writer
        return writer is not None and writer.is_alive()

    async def _write(self, write: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        writer = self._writer
        if writer is None or not writer.is_alive():
            raise StoreClosed("store is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        writer.queue.put(_Job(write, fut, loop, durable))
        return await fut

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise StoreClosed("store is closed")
        return self._reader

    # --- devices -------------------------------------------------------------
    async def create_device(
        self, pin: str, token_hash: str, label: str | None, now_ms: int
    ) -> Device | None:
        def write(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO devices (pin, token_hash, label, created_ms)"
                " VALUES (?, ?, ?, ?)",
                (pin, token_hash, label, now_ms),
            )
            return cur.rowcount == 1

        if not await self._write(write):
            return None
        return Device(pin, token_hash, label, now_ms, None, 0, 0)

    async def get_device(self, pin: str) -> Device | None:
        row = (
            self._read()
            .execute(
                "SELECT pin, token_hash, label, created_ms, last_seen_ms, last_cursor,"
                " acked_cursor FROM devices WHERE pin = ?",
                (pin,),
            )
            .fetchone()
        )
        return None if row is None else _row_to_device(row)

    async def delete_device(self, pin: str) -> bool:
        def write(c: sqlite3.Connection) -> bool:
            c.execute("DELETE FROM messages WHERE pin = ?", (pin,))
            return c.execute("DELETE FROM devices WHERE pin = ?", (pin,)).rowcount == 1

        return await self._write(write)

    async def set_token(self, pin: str, token_hash: str) -> bool:
        def write(c: sqlite3.Connection) -> bool:
            sql = "UPDATE devices SET token_hash = ? WHERE pin = ?"
            return c.execute(sql, (token_hash, pin)).rowcount == 1

        return await self._write(write)

    async def touch_device(self, pin: str, now_ms: int) -> None:
        def write(c: sqlite3.Connection) -> None:
            c.execute("UPDATE devices SET last_seen_ms = ? WHERE pin = ?", (now_ms, pin))

        await self._write(write, durable=False)

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
        def write(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO api_keys (id, name, scope, key_hash, created_ms, revoked)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key.id, key.name, key.scope.value, key.key_hash, key.created_ms, int(key.revoked)),
            )

        await self._write(write)

    async def find_key(self, key_hash: str) -> ApiKey | None:
        row = (
            self._read()
            .execute(
                "SELECT id, name, scope, key_hash, created_ms, revoked FROM api_keys"
                " WHERE key_hash = ?",
                (key_hash,),
            )
            .fetchone()
        )
        return None if row is None else _row_to_key(row)

    async def list_keys(self) -> list[ApiKey]:
        rows = (
            self._read()
            .execute(
                "SELECT id, name, scope, key_hash, created_ms, revoked FROM api_keys"
                " ORDER BY created_ms, id"
            )
            .fetchall()
        )
        return [_row_to_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> bool:
        def write(c: sqlite3.Connection) -> bool:
            sql = "UPDATE api_keys SET revoked = 1 WHERE id = ? AND revoked = 0"
            return c.execute(sql, (key_id,)).rowcount == 1

        return await self._write(write)

    # --- messages ------------------------------------------------------------
    async def append(
        self, messages: Sequence[NewMessage | Rejected], idem: IdempotencyKey | None = None
    ) -> tuple[list[Accepted | Rejected], bool]:

        def write(c: sqlite3.Connection) -> tuple[list[_Result], bool]:
            if idem is not None:
                row = c.execute(
                    "SELECT fingerprint, result FROM idempotency WHERE key = ?", (idem.key,)
                ).fetchone()
                if row is not None:
                    if row[0] != idem.fingerprint:
                        raise PinrelayError(
                            "Idempotency-Key was used with a different request",
                            ErrorCode.CONFLICT,
                        )
                    return _results_dec.decode(row[1]), True
            results = _append_all(c, messages)
            if idem is not None:
                c.execute(
                    "INSERT INTO idempotency (key, fingerprint, result, created_ms)"
                    " VALUES (?, ?, ?, ?)",
                    (
                        idem.key,
                        idem.fingerprint,
                        _results_enc.encode(results),
                        idem.created_ms,
                    ),
                )
            return results, False

        results, replay = await self._write(write)
        out: list[Accepted | Rejected] = [
            Rejected(r.pin, r.reason, r.id)
            if r.reason is not None
            else Accepted(r.id or "", r.pin, r.cursor, r.expires_ms)
            for r in results
        ]
        return out, replay

    async def read(self, pin: str, after: int, limit: int, now_ms: int) -> list[StoredMessage]:
        rows = self._read().execute(_READ_SQL, (pin, after, now_ms, limit)).fetchall()
        return [_row_to_message(r) for r in rows]

    async def ack(self, pin: str, cursor: int) -> None:
        await self.ack_many([(pin, cursor)])

    async def ack_many(self, acks: Sequence[tuple[str, int]]) -> None:
        def write(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM messages WHERE pin = ? AND cursor <= ?", acks)
            c.executemany(
                "UPDATE devices SET acked_cursor = max(acked_cursor, ?2) WHERE pin = ?1", acks
            )

        # An ack lost in a crash means a redelivery, which clients drop: no fsync.
        await self._write(write, durable=False)

    async def sweep(self, now_ms: int, limit: int = 1000) -> int:
        def write(c: sqlite3.Connection) -> int:
            n = c.execute(
                "DELETE FROM messages WHERE (pin, cursor) IN (SELECT pin, cursor FROM messages"
                " WHERE expires_ms <= ? LIMIT ?)",
                (now_ms, limit),
            ).rowcount
            c.execute(
                "DELETE FROM idempotency WHERE created_ms <= ?", (now_ms - IDEMPOTENCY_TTL_MS,)
            )
            return int(n)

        return await self._write(write)

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


def _append_all(c: sqlite3.Connection, messages: Sequence[NewMessage | Rejected]) -> list[_Result]:
    """Append in order; one cursor update per device, one INSERT statement for all."""
    wanted: dict[str, int] = {}
    for m in messages:
        if isinstance(m, NewMessage):
            wanted[m.pin] = wanted.get(m.pin, 0) + 1
    next_cursor: dict[str, int] = {}
    for pin, count in wanted.items():
        row = c.execute(
            "UPDATE devices SET last_cursor = last_cursor + ? WHERE pin = ? RETURNING last_cursor",
            (count, pin),
        ).fetchone()
        if row is not None:
            next_cursor[pin] = int(row[0]) - count + 1
    results: list[_Result] = []
    rows: list[tuple[object, ...]] = []
    for m in messages:
        if isinstance(m, Rejected):
            results.append(_Result(pin=m.pin, id=m.id, reason=m.reason))
            continue
        cursor = next_cursor.get(m.pin)
        if cursor is None:
            results.append(_Result(pin=m.pin, id=m.id, reason=UNKNOWN_DEVICE))
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
                m.sent_at_ms,
                m.expires_at_ms,
                m.kind,
                m.sender,
            )
        )
        results.append(_Result(pin=m.pin, id=m.id, cursor=cursor, expires_ms=m.expires_at_ms))
    c.executemany(_INSERT_SQL, rows)
    return results
