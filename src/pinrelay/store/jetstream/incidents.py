"""Incidents on the cluster (core/incidents.py), in ``<bucket_prefix>_channels``.

Beside :mod:`.channels`' and :mod:`.broadcasts`' keys, under their own prefix:

- ``p.<node>``: the time of the relay's last store probe (Store.probe).
- ``i.<incident id>``: the record (:class:`~pinrelay.core.incidents.Incident`,
  JSON), the bucket's replication and durability included.  :meth:`Incidents.put`
  is a compare-and-set (:class:`~.cas.Keyed`) that writes only the next revision
  of an open incident (core.incidents.follows): two relays changing one incident
  cannot both win, and a stale relay cannot reopen a resolved one.

:meth:`Incidents.listing` lists the ``i.*`` keys and reads every record: it costs
in proportion to every incident ever kept, which is a few a month, and no bucket
of their own (each bucket costs every relay's start a stream lookup).
"""

from __future__ import annotations

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.incidents import Incident, follows, is_incident_id
from pinrelay.store.jetstream.cas import Keyed
from pinrelay.store.jetstream.errors import nats_errors
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Bucket


class Incidents:
    """Incident records under ``i.<id>`` (module doc)."""

    def __init__(self, kv: Kv, bucket: Bucket) -> None:
        self.kv = kv
        self.api = kv.api
        self.bucket = bucket
        self.records = Keyed(kv, bucket, Incident)

    async def put(self, incident: Incident) -> bool:
        self.api.check_open()
        if not is_incident_id(incident.id):
            raise PinrelayError(f"incident id {incident.id!r}", ErrorCode.INVALID)
        ok = True

        def change(old: Incident | None) -> Incident | None:
            nonlocal ok
            if old == incident:
                ok = True  # a retry of the write that is stored
                return None
            ok = follows(old, incident)
            return incident if ok else None

        await self.records.change(f"i.{incident.id}", change)
        return ok

    async def probe(self, node: str, now_ms: int) -> None:
        """A write to ``p.<node>`` (Store.probe): it needs the bucket's stream leader
        and a quorum of its replicas, as every message does.  One attempt, not
        retried (the monitor times it); a failure is StoreClosed, as the contract
        says, not nats-py's own TimeoutError."""
        self.api.check_open()
        with nats_errors("probe"):
            await self.api.publish(self.bucket.subject(f"p.{node}"), str(now_ms).encode(), {})

    async def get(self, incident_id: str) -> Incident | None:
        self.api.check_open()
        if not is_incident_id(incident_id):
            return None
        return await self.records.get(f"i.{incident_id}")

    async def listing(self, since_ms: int, limit: int) -> list[Incident]:
        """Open ones and those resolved since ``since_ms``, newest first."""
        self.api.check_open()
        keys = await self.kv.keys(self.bucket, "i.*")
        found = [
            i
            for i in await self.records.many(keys)
            if i is not None
            and (i.state == "open" or (i.resolved_ms is not None and i.resolved_ms >= since_ms))
        ]
        found.sort(key=lambda i: (i.started_ms, i.id), reverse=True)
        return found[: max(0, limit)]
