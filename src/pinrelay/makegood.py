"""Making good (core/makegood.py): the record that starts one, and each page's messages.

:func:`start` claims the make-good of (incident, tenant) and keeps its broadcast
record; the broadcast fan-out (broadcast.py) then walks the tenant's devices and,
for each page, calls :func:`makegood_drafts`, which records a code for each
device that takes it before its message is stored.  A relay that dies anywhere
in between leaves a record the fan-out resumes (on any relay): the page done again
finds the codes issued the first time (Store.issue_codes) and replays the first
append (its idempotency key), so each device has exactly one message and one code.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import msgspec

from pinrelay.core.channels import Broadcast
from pinrelay.core.ids import new_message_id
from pinrelay.core.incidents import Incident
from pinrelay.core.makegood import MAKEGOOD_CHANNEL, Code, MakeGood, MakeGoodData, new_code
from pinrelay.ingest import Draft
from pinrelay.store.base import Store

#: How long a make-good message waits for its device: a week.
MAKEGOOD_TTL_MS = 7 * 86_400_000

_spec_dec = msgspec.json.Decoder(MakeGood)
_enc = msgspec.json.Encoder()


def spec_of(b: Broadcast) -> MakeGood:
    return _spec_dec.decode(b.data)


async def start(
    store: Store,
    submit: Callable[[Broadcast], None],
    now: float,
    incident: Incident,
    tenant: str,
    text: str,
    code_prefix: str | None,
) -> tuple[Broadcast, bool]:
    """The make-good of (incident, tenant), and whether this call made it (then its
    fan-out is handed to ``submit``).  Asked again, the first one is answered."""
    now_ms = int(now * 1000)
    ours = new_message_id(now, os.urandom)
    held = await store.claim_makegood(incident.id, tenant, ours)
    existing = await store.get_broadcast(held)
    if existing is not None:
        return existing, False
    # Ours, or a claim whose record is not kept yet (its request is a moment ahead,
    # or its relay died in between): kept now, under the claim's id.  Kept twice at
    # once, the record is the same make-good, and the fan-out's pages and codes are
    # keyed by its id: each device still gets one message and one code.
    record = Broadcast(
        id=held,
        channel=MAKEGOOD_CHANNEL,
        tenant=tenant,
        key_id=None,
        created_ms=now_ms,
        expires_ms=now_ms + MAKEGOOD_TTL_MS,
        data=_enc.encode(MakeGood(incident=incident.id, text=text, code_prefix=code_prefix)),
        updated_ms=now_ms,
    )
    await store.put_broadcast(record)
    stored = await store.get_broadcast(held) or record
    submit(stored)
    return stored, held == ours


async def makegood_drafts(
    store: Store, b: Broadcast, pins: list[str], ttl: float, now_ms: int
) -> dict[str, Draft]:
    """Each of ``pins``' make-good message, with its code recorded first (rule 3)."""
    spec = spec_of(b)
    proposed = [
        Code(
            code=new_code(spec.code_prefix, os.urandom),
            tenant=b.tenant,
            pin=pin,
            incident=spec.incident,
            broadcast=b.id,
            created_ms=now_ms,
        )
        for pin in pins
    ]
    issued = await store.issue_codes(proposed)
    return {
        c.pin: Draft(
            to=c.pin,
            data=_enc.encode(MakeGoodData(code=c.code, text=spec.text, incident=spec.incident)),
            ttl=ttl,
            kind="makegood",
            urgency=b.urgency,
            id=b.id,
        )
        for c in issued
    }
