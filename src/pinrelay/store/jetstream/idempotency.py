"""Idempotency-Key leases in the ``<bucket_prefix>_idem`` bucket.

Key: sha256(Idempotency-Key); value: the request's fingerprint, the nonce its
publishes use as ``Nats-Msg-Id`` prefix, when it started and, once done, its
results.  The first caller wins with a create; a retry of a finished request gets
the stored results back; a retry of a request still pending waits, and takes the
lease over once it is older than ``lease_s`` (its owner died, or failed and could
not say so while the KV leader was away).  The takeover publishes exactly the
owner's messages under the owner's ids, so even an owner still at work is harmless:
JetStream's duplicate window (2 min) stores each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import NewMessage
from pinrelay.store.base import AppendResult, IdempotencyKey, Rejected, StoreClosed
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import IdemRec, as_planned, hash_key, idem_dec, json_enc, plan

#: How long an Idempotency-Key is remembered (the idem bucket's max age).
IDEMPOTENCY_TTL_S = 24 * 3600
#: A pending record older than this is taken over by the next caller.  Short,
#: because a retry waits this long at most.
IDEMPOTENCY_LEASE_S = 5.0

#: Publishes a request's messages under a nonce (``Appender.append``).
Publish = Callable[[Sequence[NewMessage | Rejected], str], Awaitable[list[AppendResult]]]


class Leases:
    """Runs an append at most once per Idempotency-Key."""

    def __init__(self, kv: Kv, bucket: Bucket, lease_s: float) -> None:
        self.kv = kv
        self.bucket = bucket
        self.lease_s = lease_s

    async def finished(self, key: str) -> tuple[str, list[AppendResult]] | None:
        """The fingerprint and results of the finished request under ``key`` (the
        bucket's max age is the 24 h), else None: a read, takes no lease."""
        got = await self.kv.get(self.bucket, hash_key(key))
        if got is None:
            return None
        rec = idem_dec.decode(got.value)
        return (rec.fingerprint, rec.results) if rec.done else None

    async def run(
        self, messages: Sequence[NewMessage | Rejected], idem: IdempotencyKey, publish: Publish
    ) -> tuple[list[AppendResult], bool]:
        """``publish(messages, nonce)`` once for ``idem``: (results, whether a replay)."""
        kv, bucket = self.kv, self.bucket
        key = hash_key(idem.key)
        mine = IdemRec(idem.fingerprint, uuid.uuid4().hex, time.time(), planned=plan(messages))
        delay = 0.01
        # Bounded: a key that reads as absent after a refused create (the winner's
        # write not applied yet, or a write of ours the cluster cannot commit) is asked
        # again with a growing pause, then answered 503, not spun on forever.
        absent_until: float | None = None
        while True:
            if await kv.create(bucket, key, json_enc.encode(mine)):
                owned = mine
                break
            got = await kv.get(bucket, key)
            if got is None:  # the winner's write is not applied yet, or it expired
                now = time.monotonic()
                if absent_until is None:
                    absent_until = now + max(self.lease_s, 1.0)
                elif now > absent_until:
                    raise StoreClosed(f"idempotency key {key}: neither created nor readable")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
                continue
            absent_until = None
            rec, revision = idem_dec.decode(got.value), got.revision
            if rec.nonce == mine.nonce:  # our create, retried after a lost acknowledgement
                owned = mine
                break
            if rec.fingerprint != idem.fingerprint:
                raise PinrelayError(
                    "Idempotency-Key was used with a different request", ErrorCode.CONFLICT
                )
            if rec.done:
                return rec.results, True
            if time.time() - rec.started_s > self.lease_s:
                # Its owner died or gave up: take over with the same nonce.
                takeover = msgspec.structs.replace(rec, started_s=time.time())
                if await kv.update(bucket, key, json_enc.encode(takeover), revision):
                    owned = takeover
                    break
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        try:
            if owned is not mine:
                # A takeover reuses the first attempt's Nats-Msg-Ids, so what that
                # attempt stored is de-duplicated: publish (and answer with) its ids,
                # never ours (found by the chaos test).
                messages = as_planned(messages, owned.planned)
            results = await publish(messages, owned.nonce)
        except BaseException:
            # Let the next attempt take over at once (it reuses our nonce, so nothing
            # stored here is stored twice).  Best effort: the cluster may be away.
            with contextlib.suppress(Exception):
                got = await kv.get(bucket, key)
                if got is not None:
                    abandoned = msgspec.structs.replace(owned, started_s=0.0)
                    await kv.update(bucket, key, json_enc.encode(abandoned), got.revision)
            raise
        done = msgspec.structs.replace(owned, done=True, results=results)
        for _ in range(100):
            got = await kv.get(bucket, key)
            if got is None:
                ok = await kv.create(bucket, key, json_enc.encode(done))
            else:
                ok = await kv.update(bucket, key, json_enc.encode(done), got.revision)
            if ok:
                break
        return results, False
