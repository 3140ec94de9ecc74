"""The SQLite engine's writes and reads of incidents (core/incidents.py).

The put is an op of the writer process (store/sqlite_ops.py) so the
compare-and-set (Store.put_incident) reads the stored revision and writes the
next in one transaction.  The record is kept whole as JSON beside the columns
the listing filters and sorts on; reads run on the store's reader connection.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from pinrelay.core.incidents import Incident, follows
from pinrelay.store.sqlite_ops import Op

#: The schema (migration 9).
SCHEMA = """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        resolved_ms INTEGER,
        rev INTEGER NOT NULL,
        body BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX incidents_open ON incidents (started_ms) WHERE state = 'open';
    CREATE INDEX incidents_resolved ON incidents (resolved_ms) WHERE resolved_ms IS NOT NULL
"""

#: Migration 10: each relay's last store probe (Store.probe).
PROBE_SCHEMA = """
    CREATE TABLE probes (node TEXT PRIMARY KEY, at_ms INTEGER NOT NULL) WITHOUT ROWID
"""

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Incident)


class PutIncident(Op, tag="pinc"):
    """Insert or replace by compare-and-set on ``rev`` (Store.put_incident)."""

    body: bytes

    def run(self, c: sqlite3.Connection) -> bool:
        new = _dec.decode(self.body)
        row = c.execute("SELECT body FROM incidents WHERE id = ?", (new.id,)).fetchone()
        stored = None if row is None else _dec.decode(row[0])
        if stored == new:
            return True  # a retry of the write that is stored
        if not follows(stored, new):
            return False
        c.execute(
            "INSERT OR REPLACE INTO incidents (id, state, started_ms, resolved_ms, rev, body)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (new.id, new.state, new.started_ms, new.resolved_ms, new.rev, self.body),
        )
        return True


class Probe(Op, tag="prob"):
    """One small committed write: the monitors' probe of the store (Store.probe)."""

    node: str
    at_ms: int

    def run(self, c: sqlite3.Connection) -> None:
        c.execute(
            "INSERT OR REPLACE INTO probes (node, at_ms) VALUES (?, ?)", (self.node, self.at_ms)
        )


class SqliteIncidents:
    """Incidents over the store's writer and reader (a mixin of SqliteStore)."""

    async def _write(self, op: Any) -> Any:
        raise NotImplementedError

    def _read(self) -> sqlite3.Connection:
        raise NotImplementedError

    async def put_incident(self, incident: Incident) -> bool:
        return bool(await self._write(PutIncident(_enc.encode(incident))))

    async def probe(self, node: str, now_ms: int) -> None:
        await self._write(Probe(node, now_ms))

    async def get_incident(self, incident_id: str) -> Incident | None:
        sql = "SELECT body FROM incidents WHERE id = ?"
        row = self._read().execute(sql, (incident_id,)).fetchone()
        return None if row is None else _dec.decode(row[0])

    async def list_incidents(self, since_ms: int, limit: int) -> list[Incident]:
        sql = (
            "SELECT body FROM incidents WHERE state = 'open' OR resolved_ms >= ?"
            " ORDER BY started_ms DESC, id DESC LIMIT ?"
        )
        rows = self._read().execute(sql, (since_ms, limit)).fetchall()
        return [_dec.decode(r[0]) for r in rows]
