"""The SQLite engine's recorded figures (figures.py, core/readings.py).

One row per relay and reading, keyed (node, at_ms), the reading kept whole as
JSON; an index on at_ms serves a report's window across every relay.  A write is
an op of the writer process (store/sqlite_ops.py) and, in the same transaction,
deletes up to :data:`FORGET_BATCH` rows older than the store's retention
(Store.put_readings), so old figures go a batch at a time as new ones come and no
sweep of its own is needed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec

from pinrelay.core.readings import Readings
from pinrelay.store.base import DELAY_DAYS_KEEP_MS, FIGURES_KEEP_MS
from pinrelay.store.sqlite_ops import Op

#: The schema (a migration after the incidents').
FIGURES_SCHEMA = """
    CREATE TABLE figures (
        node TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (node, at_ms)
    ) WITHOUT ROWID;
    CREATE INDEX figures_at ON figures (at_ms)
"""
#: Delays per tenant and UTC day (delay_days.py), a later migration.
DELAY_DAYS_SCHEMA = """
    CREATE TABLE delay_days (
        day_ms INTEGER PRIMARY KEY,
        body BLOB NOT NULL
    )
"""
#: Old rows deleted by one write, at most.
FORGET_BATCH = 1000
#: Rows read at a time (about 20 ms).
READ_PAGE = 2000

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Readings)
_days_dec = msgspec.json.Decoder(dict[str, tuple[int, ...]])


class PutReadings(Op, tag="pfig"):
    """Insert or replace readings; forget a batch of those past the retention."""

    #: Figures lost to a power cut cost a report a few seconds of detail; a crash of
    #: the relay loses none (the writer is its own process).
    durable: ClassVar[bool] = False
    rows: list[tuple[str, int, bytes]]
    keep_after_ms: int

    def run(self, c: sqlite3.Connection) -> None:
        c.executemany(
            "INSERT OR REPLACE INTO figures (node, at_ms, body) VALUES (?, ?, ?)", self.rows
        )
        c.execute(
            "DELETE FROM figures WHERE (node, at_ms) IN"
            " (SELECT node, at_ms FROM figures WHERE at_ms < ? ORDER BY at_ms LIMIT ?)",
            (self.keep_after_ms, FORGET_BATCH),
        )


class PutDelayDay(Op, tag="pday"):
    """Keep one day's delays (a repeat replaces it: any relay sums a day alike);
    forget those past DELAY_DAYS_KEEP_MS."""

    row: tuple[int, bytes]

    def run(self, c: sqlite3.Connection) -> None:
        c.execute("INSERT OR REPLACE INTO delay_days (day_ms, body) VALUES (?, ?)", self.row)
        c.execute("DELETE FROM delay_days WHERE day_ms < ?", (self.row[0] - DELAY_DAYS_KEEP_MS,))


def put_op(readings: Sequence[Readings]) -> PutReadings:
    rows = [(r.node, r.at_ms, _enc.encode(r)) for r in readings]
    newest = max((r.at_ms for r in readings), default=0)
    return PutReadings(rows, newest - FIGURES_KEEP_MS)


class SqliteFigures:
    """Figures over the store's writer and reader (a mixin of SqliteStore)."""

    async def _write(self, op: Any) -> Any:
        raise NotImplementedError

    def _read(self) -> sqlite3.Connection:
        raise NotImplementedError

    async def put_readings(self, readings: Sequence[Readings]) -> None:
        if readings:
            await self._write(put_op(readings))

    async def readings(self, since_ms: int, until_ms: int) -> list[Readings]:
        # Read on the loop's thread as every read here, a page at a time: a long
        # incident's window holds days of every relay's readings.
        first = (
            "SELECT at_ms, node, body FROM figures WHERE at_ms BETWEEN ? AND ?"
            " ORDER BY at_ms, node LIMIT ?"
        )
        more = (
            "SELECT at_ms, node, body FROM figures WHERE at_ms BETWEEN ? AND ?"
            " AND (at_ms, node) > (?, ?) ORDER BY at_ms, node LIMIT ?"
        )
        found: list[Readings] = []
        rows = self._read().execute(first, (since_ms, until_ms, READ_PAGE)).fetchall()
        while True:
            found.extend(_dec.decode(r[2]) for r in rows)
            if len(rows) < READ_PAGE:
                return found
            at, node = rows[-1][0], rows[-1][1]
            await asyncio.sleep(0)  # let links and requests in between pages
            args = (at, until_ms, at, node, READ_PAGE)
            rows = self._read().execute(more, args).fetchall()

    async def put_delay_day(self, day_ms: int, delays: dict[str, tuple[int, ...]]) -> None:
        await self._write(PutDelayDay((day_ms, _enc.encode(delays))))

    async def delay_days(self, days_ms: Sequence[int]) -> dict[int, dict[str, tuple[int, ...]]]:
        wanted = set(days_ms)
        if not wanted:
            return {}
        sql = "SELECT day_ms, body FROM delay_days WHERE day_ms BETWEEN ? AND ?"
        rows = self._read().execute(sql, (min(wanted), max(wanted))).fetchall()
        return {int(d): _days_dec.decode(b) for d, b in rows if int(d) in wanted}
