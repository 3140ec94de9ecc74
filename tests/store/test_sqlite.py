"""SQLite engine specifics: schema, file mode, WAL, and crash durability."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pinrelay.core.channels import Channel
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.incidents import open_incident
from pinrelay.core.model import Accepted, Device, NewMessage, StoredMessage
from pinrelay.core.webhooks import Webhook
from pinrelay.store import sqlite_credit_ops as credit_ops
from pinrelay.store import sqlite_webhook_ops as webhook_ops
from pinrelay.store.base import IdempotencyKey, Unread
from pinrelay.store.sqlite import MIGRATIONS, SqliteStore, connect, migrate

SRC = Path(__file__).resolve().parents[2] / "src"
PIN = "0A0A0A0A"
OTHER = "0B0B0B0B"
NOW = 1_700_000_000_000
FAR = NOW + 365 * 24 * 3_600_000


def query(path: Path, sql: str) -> object:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchone()[0]


def file_size(path: str) -> int:
    return os.stat(path).st_size


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "pinrelay.db"


async def open_store(path: Path) -> SqliteStore:
    s = SqliteStore(path)
    await s.open()
    return s


def migrated_until(db_path: Path, version: int) -> None:
    """A database at schema ``version``: the first ``version`` migrations applied,
    as a relay of that version left it."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        for number, migration in enumerate(MIGRATIONS[:version]):
            for statement in migration.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")


class TestSchema:
    async def test_migration_sets_user_version(self, db_path: Path) -> None:
        s = await open_store(db_path)
        await s.close()
        assert query(db_path, "PRAGMA user_version") == len(MIGRATIONS)
        tables = set()
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                tables.add(name)
        assert {"devices", "messages", "api_keys", "idempotency"} <= tables

    async def test_reopen_keeps_version(self, db_path: Path) -> None:
        for _ in range(3):
            s = await open_store(db_path)
            await s.close()
        assert query(db_path, "PRAGMA user_version") == len(MIGRATIONS)

    def test_migrate_returns_version(self) -> None:
        with contextlib.closing(sqlite3.connect(":memory:", isolation_level=None)) as conn:
            assert migrate(conn) == len(MIGRATIONS)
            assert migrate(conn) == len(MIGRATIONS)
            assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)

    async def test_existing_data_moves_into_the_default_tenant(self, db_path: Path) -> None:
        """A database of the last version before tenants (5) opens with its devices and
        keys in the ``default`` tenant, which exists (issue 15)."""
        migrated_until(db_path, 5)
        with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
            conn.execute(
                "INSERT INTO devices (pin, token_hash, label, created_ms) VALUES (?, 'h', NULL, ?)",
                (PIN, NOW),
            )
            conn.execute(
                "INSERT INTO api_keys (id, name, scope, key_hash, created_ms)"
                " VALUES ('k1', 'old', 'push', 'hash-k1', ?)",
                (NOW,),
            )
        s = await open_store(db_path)
        try:
            device = await s.get_device(PIN)
            assert device is not None and device.tenant == "default"
            key = await s.find_key("hash-k1")
            assert key is not None and key.tenant == "default"
            assert [t.id for t in await s.list_tenants()] == ["default"]
        finally:
            await s.close()
        assert query(db_path, "PRAGMA user_version") == len(MIGRATIONS)

    async def test_a_database_from_before_channels_migrates(self, db_path: Path) -> None:
        """A database of the last version before channels (7) opens with its devices,
        which then join channels and take broadcasts."""
        db_path.parent.mkdir(parents=True)
        before = 7
        with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
            for number, migration in enumerate(MIGRATIONS[:before]):
                for statement in migration.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute(
                "INSERT INTO devices (pin, token_hash, label, created_ms) VALUES (?, 'h', NULL, ?)",
                (PIN, NOW),
            )
        s = await open_store(db_path)
        try:
            device = await s.get_device(PIN)
            assert device is not None and device.tenant == "default"
            channel = Channel(
                id="C000000000001", tenant="default", name="news", klass="service", created_ms=NOW
            )
            await s.create_channel(channel, 10)
            assert await s.join_channel(PIN, channel.id, True)
            assert await s.channel_members(channel.id, "", 10) == [PIN]
            assert await s.admit([PIN], "marketing", "B1", 1, 1) == [PIN]
        finally:
            await s.close()
        assert query(db_path, "PRAGMA user_version") == len(MIGRATIONS)

    async def test_a_database_from_before_incidents_migrates(self, db_path: Path) -> None:
        """A database of the last version before incidents (8) opens and keeps them."""
        migrated_until(db_path, 8)
        s = await open_store(db_path)
        try:
            made = open_incident("I000000000001", "store", "minor", "slow", NOW)
            assert await s.put_incident(made)
            assert await s.list_incidents(0, 10) == [made]
        finally:
            await s.close()
        assert query(db_path, "PRAGMA user_version") == len(MIGRATIONS)

    async def test_unread_entries_from_before_read_marks_migrate(self, db_path: Path) -> None:
        """An unread entry stored before entries were marked read (17) is found
        unread after the upgrade, and its read receipt is stored once."""
        before = len(MIGRATIONS) - 1
        migrated_until(db_path, before)
        with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
            for pin in (PIN, OTHER):
                conn.execute(
                    "INSERT INTO devices (pin, token_hash, label, created_ms)"
                    " VALUES (?, 'h', NULL, ?)",
                    (pin, NOW),
                )
            conn.execute(
                "INSERT INTO unread (reader, id, sender, expires_ms) VALUES (?, '01OLD', ?, ?)",
                (PIN, OTHER, NOW + 3_600_000),
            )
        s = await open_store(db_path)
        try:
            entry = Unread(PIN, "01OLD", OTHER, NOW + 3_600_000)
            assert await s.find_unread(PIN, ["01OLD"], NOW) == [entry]
            receipt = NewMessage(
                pin=OTHER,
                id="01RCPT",
                data=b"{}",
                topic=None,
                urgency="normal",
                sent_at_ms=NOW,
                expires_at_ms=NOW + 60_000,
                kind="receipt",
                sender=PIN,
            )
            for stored in (True, False):
                results, _ = await s.append([receipt], read=[entry])
                assert isinstance(results[0], Accepted) is stored, results
            assert await s.find_unread(PIN, ["01OLD"], NOW) == []
        finally:
            await s.close()
        assert query(db_path, "PRAGMA user_version") == len(MIGRATIONS)

    async def test_a_database_from_before_credits_migrates(self, db_path: Path) -> None:
        """A database with incidents, before service levels and codes (9), opens and
        keeps them."""
        before = MIGRATIONS.index(credit_ops.SCHEMA)
        migrated_until(db_path, before)
        s = await open_store(db_path)
        try:
            assert await s.claim_makegood("I000000000001", "default", "B1") == "B1"
            assert await s.service_levels() == {}
        finally:
            await s.close()
        assert query(db_path, "PRAGMA user_version") == len(MIGRATIONS)

    async def test_a_database_from_before_webhooks_migrates(self, db_path: Path) -> None:
        """A database of the version before webhooks' tables opens and keeps them."""
        before = MIGRATIONS.index(webhook_ops.SCHEMA)
        migrated_until(db_path, before)
        s = await open_store(db_path)
        try:
            hook = Webhook(id="W000000000001", tenant=None, url="http://h/", secret="s" * 16)
            await s.put_webhook(hook, 20)
            assert await s.list_webhooks() == [hook]
        finally:
            await s.close()
        assert query(db_path, "PRAGMA user_version") == len(MIGRATIONS)

    async def test_newer_schema_refused(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True)
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
            conn.commit()
        s = SqliteStore(db_path)
        try:
            with pytest.raises(RuntimeError, match="newer"):
                await s.open()
        finally:
            await s.close()
        assert query(db_path, "PRAGMA user_version") == len(MIGRATIONS) + 1

    def test_connect_pragmas(self, db_path: Path) -> None:
        db_path.parent.mkdir(parents=True)
        with contextlib.closing(connect(db_path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10000


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def existing_db_files(db_path: Path) -> list[Path]:
    return [p for p in (Path(f"{db_path}{sfx}") for sfx in ("", "-wal", "-shm")) if p.exists()]


class TestFiles:
    async def test_creates_parent_directory(self, tmp_path: Path) -> None:
        path = tmp_path / "a" / "b" / "pinrelay.db"
        s = await open_store(path)
        await s.close()
        assert existing_db_files(path)[0] == path

    @pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
    async def test_db_file_mode_0600(self, db_path: Path) -> None:
        s = await open_store(db_path)
        try:
            assert await s.create_device(PIN, "h", None, NOW) is not None
            files = existing_db_files(db_path)
            assert db_path in files
            for p in files:
                assert file_mode(p) == 0o600, p
        finally:
            await s.close()
        assert file_mode(db_path) == 0o600

    async def test_wal_journal_mode(self, db_path: Path) -> None:
        s = await open_store(db_path)
        try:
            assert await s.create_device(PIN, "h", None, NOW) is not None
            assert query(db_path, "PRAGMA journal_mode") == "wal"
            assert Path(f"{db_path}-wal") in existing_db_files(db_path)
        finally:
            await s.close()

    async def test_checkpoints_every_4000_pages_and_the_wal_restarts(self, db_path: Path) -> None:
        # DECISIONS 42: a checkpoint stalls the writer, so fewer of them than SQLite's
        # default of 1,000 pages; and the WAL must still restart, not grow.  (A busy
        # writer's rule: its checkpoints between requests are put off here, 77.)
        frame = 4096 + 24  # a WAL frame: the page and its header
        wal = f"{db_path}-wal"
        s = SqliteStore(db_path, checkpoint_every_s=3600)
        await s.open()
        largest = 0
        try:
            await s.create_device(PIN, "h", None, NOW)
            for batch in range(250):  # about 8,000 pages in all: two restarts
                await s.append(
                    [
                        NewMessage(
                            PIN, f"01C{batch:04d}{i:02d}", b"x" * 3000, None, "normal", NOW, FAR
                        )
                        for i in range(32)
                    ]
                )
                largest = max(largest, file_size(wal))
            backlog = await s.backlog(PIN, NOW)
        finally:
            await s.close()
        assert backlog == 250 * 32
        assert 3000 * frame < largest < 4200 * frame

    async def test_commit_observer(self, db_path: Path) -> None:
        seen: list[tuple[float, int]] = []
        s = SqliteStore(db_path, observer=lambda secs, n: seen.append((secs, n)))
        await s.open()
        try:
            await s.create_device(PIN, "h", None, NOW)
            await asyncio.gather(*(s.touch_device(PIN, NOW + i) for i in range(20)))
        finally:
            await s.close()
        assert sum(n for _, n in seen) == 21
        assert all(secs >= 0 and n >= 1 for secs, n in seen)


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from pinrelay.core.model import Device, NewMessage, StoredMessage
    from pinrelay.store.sqlite import SqliteStore

    async def main(path, pin, n, now, far):
        store = SqliteStore(Path(path))
        await store.open()
        for i in range(n):
            m = NewMessage(
                pin=pin, id=f"CRASH{i:021d}", data=b'{"n":%d}' % i, topic=None,
                urgency="normal", sent_at_ms=now, expires_at_ms=far,
            )
            (result,), _ = await store.append([m])
            print(result.cursor, flush=True)
        await store.close()

    path, pin, n, now, far = sys.argv[2:7]
    asyncio.run(main(path, pin, int(n), int(now), int(far)))
    """
)


async def _create_device(db_path: Path) -> None:
    s = await open_store(db_path)
    try:
        assert await s.create_device(PIN, "h", None, NOW) is not None
    finally:
        await s.close()


async def _read_back(db_path: Path, limit: int) -> tuple[list[StoredMessage], Device | None]:
    s = await open_store(db_path)
    try:
        return await s.read(PIN, 0, limit, NOW), await s.get_device(PIN)
    finally:
        await s.close()


def run_child_and_kill(db_path: Path, total: int, kill_after: int, rng: random.Random) -> list[int]:
    """Run the appending child, SIGKILL it after ``kill_after`` lines or more; its cursors."""
    printed: list[int] = []
    args = [str(SRC), str(db_path), PIN, str(total), str(NOW), str(FAR)]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        while len(printed) < kill_after:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child exited early ({proc.wait()}): {proc.stderr.read()}")
            printed.append(int(line))
        time.sleep(rng.random() * 0.005)  # a random moment, maybe mid-commit
        os.kill(proc.pid, signal.SIGKILL)
        # Lines still in the pipe were printed, so acknowledged, before the kill.
        printed += [int(x) for x in proc.stdout.read().split()]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    return printed


class TestCrashDurability:
    def test_every_acknowledged_append_survives_sigkill(self, db_path: Path) -> None:
        asyncio.run(_create_device(db_path))
        total = 5000
        seed = random.randrange(2**32)
        rng = random.Random(seed)
        printed = run_child_and_kill(db_path, total, rng.randint(50, 400), rng)

        assert len(printed) < total, f"seed={seed}: the child finished before the kill"
        assert printed == list(range(1, len(printed) + 1)), f"seed={seed}"
        stored, dev = asyncio.run(_read_back(db_path, total + 1))
        missing = sorted(set(printed) - {m.cursor for m in stored})
        assert not missing, f"seed={seed}: acknowledged but lost: {missing[:20]}"
        assert dev is not None
        assert dev.last_cursor >= printed[-1]
        for m in stored:
            assert m.data == b'{"n":%d}' % (m.cursor - 1)


def test_newmessage_is_what_the_child_builds() -> None:
    # Keeps the child script honest if NewMessage grows required fields.
    NewMessage(
        pin=PIN,
        id="CRASH" + "0" * 21,
        data=b"{}",
        topic=None,
        urgency="normal",
        sent_at_ms=NOW,
        expires_at_ms=FAR,
    )


class TestDenseCursors:
    """SQLite's own guarantee, stronger than the contract's: per device 1, 2, 3..."""

    async def test_cursors_count_per_device_from_1(self, db_path: Path) -> None:
        store = await open_store(db_path)
        try:
            for pin in (PIN, "0B0B0B0B"):
                assert await store.create_device(pin, "h", None, NOW) is not None
            batch = [
                NewMessage(p, f"01DENSE{i:019d}", b"{}", None, "normal", NOW, FAR)
                for i, p in enumerate([PIN, "0B0B0B0B", PIN, "0B0B0B0B", PIN])
            ]
            results, _ = await store.append(batch)
            assert [(r.pin, getattr(r, "cursor", None)) for r in results] == [
                (PIN, 1),
                ("0B0B0B0B", 1),
                (PIN, 2),
                ("0B0B0B0B", 2),
                (PIN, 3),
            ]
            (r,), _ = await store.append(
                [NewMessage(PIN, "01DENSE-last", b"{}", None, "normal", NOW, FAR)]
            )
            assert getattr(r, "cursor", None) == 4
            dev = await store.get_device(PIN)
            assert dev is not None
            assert dev.last_cursor == 4
        finally:
            await store.close()


async def test_acks_commit_without_fsync_appends_with(tmp_path: Path) -> None:
    """docs/DECISIONS.md "Acks without fsync": a group of acks only is committed with
    synchronous=NORMAL; any group holding an append goes back to FULL."""
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    try:
        link = store._link
        assert link is not None
        await store.create_device("0A0A0A0A", "h", None, 1)
        assert link.last_synced
        await store.ack_many([("0A0A0A0A", 0)])
        assert not link.last_synced
        await store.append([NewMessage("0A0A0A0A", "01ID", b"1", None, "normal", 1, 10**13)])
        assert link.last_synced
    finally:
        await store.close()


async def test_a_failing_write_fails_alone_in_its_group(db_path: Path) -> None:
    # Writes in one group run without a SAVEPOINT each; when one fails the group is
    # run again write by write, so the others still commit and the failing one
    # leaves nothing behind.
    groups: list[int] = []
    s = SqliteStore(db_path, observer=lambda secs, n: groups.append(n))
    await s.open()
    try:
        await s.create_device(PIN, "h", None, NOW)
        key = IdempotencyKey("k", "first", NOW)
        await s.append([NewMessage(PIN, "01FIRST", b"{}", None, "normal", NOW, FAR)], key)
        clash = IdempotencyKey("k", "other", NOW)
        outcomes = await asyncio.gather(
            *(
                s.append(
                    [NewMessage(PIN, f"01M{i:03d}", b"{}", None, "normal", NOW, FAR)],
                    clash if i == 25 else None,
                )
                for i in range(50)
            ),
            return_exceptions=True,
        )
        stored = [m.id for m in await s.read(PIN, 0, 100, NOW)]
    finally:
        await s.close()
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], PinrelayError)
    assert failed[0].code is ErrorCode.CONFLICT
    assert stored == ["01FIRST", *(f"01M{i:03d}" for i in range(50) if i != 25)]
    assert max(groups) > 1, "the appends never shared a group: the test proves nothing"
