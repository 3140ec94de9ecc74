"""The SQLite engine's service levels, make-good claims and codes
(core/credits.py, core/makegood.py).

Writes are ops of the writer process (store/sqlite_ops.py): a claim, an issue of
codes and a redemption each read and write in one transaction, so two relays (or
two requests) racing cannot both win.  Reads run on the store's reader connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from pinrelay.core.credits import ServiceLevel
from pinrelay.core.makegood import Code
from pinrelay.store.sqlite_ops import Op

#: The schema (a migration of its own, after incidents').
SCHEMA = """
    CREATE TABLE service_levels (
        tenant TEXT PRIMARY KEY,
        body BLOB NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE makegoods (
        incident TEXT NOT NULL,
        tenant TEXT NOT NULL,
        broadcast TEXT NOT NULL,
        PRIMARY KEY (incident, tenant)
    ) WITHOUT ROWID;
    CREATE TABLE codes (
        code TEXT PRIMARY KEY,
        broadcast TEXT NOT NULL,
        pin TEXT NOT NULL,
        body BLOB NOT NULL,
        redeemed_ms INTEGER,
        UNIQUE (broadcast, pin)
    ) WITHOUT ROWID
"""

_enc = msgspec.json.Encoder()
_level_dec = msgspec.json.Decoder(ServiceLevel)
_code_dec = msgspec.json.Decoder(Code)


def _code(body: bytes, redeemed_ms: int | None) -> Code:
    return msgspec.structs.replace(_code_dec.decode(body), redeemed_ms=redeemed_ms)


class PutServiceLevel(Op, tag="psl"):
    tenant: str
    #: The level's JSON; None removes it.
    body: bytes | None

    def run(self, c: sqlite3.Connection) -> None:
        if self.body is None:
            c.execute("DELETE FROM service_levels WHERE tenant = ?", (self.tenant,))
        else:
            c.execute(
                "INSERT OR REPLACE INTO service_levels (tenant, body) VALUES (?, ?)",
                (self.tenant, self.body),
            )


class ClaimMakeGood(Op, tag="cmg"):
    incident: str
    tenant: str
    broadcast: str

    def run(self, c: sqlite3.Connection) -> str:
        c.execute(
            "INSERT OR IGNORE INTO makegoods (incident, tenant, broadcast) VALUES (?, ?, ?)",
            (self.incident, self.tenant, self.broadcast),
        )
        sql = "SELECT broadcast FROM makegoods WHERE incident = ? AND tenant = ?"
        return str(c.execute(sql, (self.incident, self.tenant)).fetchone()[0])


class IssueCodes(Op, tag="isc"):
    """Record each code unless its (broadcast, PIN) has one; answer the stored ones."""

    bodies: list[bytes]

    def run(self, c: sqlite3.Connection) -> list[bytes]:
        out: list[bytes] = []
        for body in self.bodies:
            code = _code_dec.decode(body)
            c.execute(
                "INSERT OR IGNORE INTO codes (code, broadcast, pin, body) VALUES (?, ?, ?, ?)",
                (code.code, code.broadcast, code.pin, body),
            )
            sql = "SELECT body FROM codes WHERE broadcast = ? AND pin = ?"
            out.append(bytes(c.execute(sql, (code.broadcast, code.pin)).fetchone()[0]))
        return out


class RedeemCode(Op, tag="rdc"):
    code: str
    now_ms: int

    def run(self, c: sqlite3.Connection) -> tuple[bytes | None, int | None, bool]:
        cur = c.execute(
            "UPDATE codes SET redeemed_ms = ? WHERE code = ? AND redeemed_ms IS NULL",
            (self.now_ms, self.code),
        )
        row = c.execute(
            "SELECT body, redeemed_ms FROM codes WHERE code = ?", (self.code,)
        ).fetchone()
        if row is None:
            return None, None, False
        return bytes(row[0]), row[1], cur.rowcount == 1


CreditOp = PutServiceLevel | ClaimMakeGood | IssueCodes | RedeemCode


class SqliteCredits:
    """Service levels, make-good claims and codes (a mixin of SqliteStore)."""

    async def _write(self, op: Any) -> Any:
        raise NotImplementedError

    def _read(self) -> sqlite3.Connection:
        raise NotImplementedError

    async def put_service_level(self, tenant: str, level: ServiceLevel | None) -> None:
        await self._write(PutServiceLevel(tenant, None if level is None else _enc.encode(level)))

    async def service_levels(self) -> dict[str, ServiceLevel]:
        rows = self._read().execute("SELECT tenant, body FROM service_levels").fetchall()
        return {r[0]: _level_dec.decode(r[1]) for r in rows}

    async def tenant_devices(self, tenant: str, after: str, limit: int) -> list[str]:
        sql = "SELECT pin FROM devices WHERE tenant = ? AND pin > ? ORDER BY pin LIMIT ?"
        return [r[0] for r in self._read().execute(sql, (tenant, after, limit)).fetchall()]

    async def claim_makegood(self, incident: str, tenant: str, broadcast: str) -> str:
        return str(await self._write(ClaimMakeGood(incident, tenant, broadcast)))

    async def issue_codes(self, codes: Sequence[Code]) -> list[Code]:
        if not codes:
            return []
        stored = await self._write(IssueCodes([_enc.encode(c) for c in codes]))
        return [_code(b, None) for b in stored]

    async def get_code(self, code: str) -> Code | None:
        sql = "SELECT body, redeemed_ms FROM codes WHERE code = ?"
        row = self._read().execute(sql, (code,)).fetchone()
        return None if row is None else _code(row[0], row[1])

    async def redeem_code(self, code: str, now_ms: int) -> tuple[Code | None, bool]:
        body, redeemed_ms, first = await self._write(RedeemCode(code, now_ms))
        return (None if body is None else _code(body, redeemed_ms)), bool(first)
