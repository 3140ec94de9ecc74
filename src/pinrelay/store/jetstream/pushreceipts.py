"""Web Push receipts on the cluster (RFC 8030 §6; pinrelay/webpush.py): one KV
record per delivered message that asked for one, ``<subscription id><message id>``
→ JSON :class:`~pinrelay.store.base.PushReceipt`.

A plain put, no compare-and-set: a receipt repeated after a crash says the same
thing.  The bucket's max age (a day past PUSH_RECEIPT_KEEP_MS) forgets old records
without a sweep; a read checks ``expires_ms`` itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec

from pinrelay.store.base import PUSH_RECEIPT_KEEP_MS, PushReceipt
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import SAFE_TOKEN, json_enc

#: The bucket's max age, seconds.
PUSH_RECEIPTS_BUCKET_TTL_S = PUSH_RECEIPT_KEEP_MS // 1000 + 24 * 3600

_dec = msgspec.json.Decoder(PushReceipt)


class PushReceipts:
    def __init__(self, kv: Kv, bucket: Bucket) -> None:
        self.kv = kv
        self.bucket = bucket

    async def put(self, receipts: Sequence[PushReceipt]) -> None:
        self.kv.api.check_open()

        async def one(receipt: PushReceipt) -> None:
            subject = self.bucket.subject(receipt.key)
            payload = json_enc.encode(receipt)
            await self.kv.api.call(
                lambda: self.kv.api.publish(subject, payload, {}), f"write {self.bucket.name}"
            )

        await asyncio.gather(*(one(r) for r in receipts if SAFE_TOKEN.match(r.key)))

    async def get(self, key: str, now_ms: int) -> PushReceipt | None:
        self.kv.api.check_open()
        if not SAFE_TOKEN.match(key):
            return None
        got = await self.kv.get(self.bucket, key)
        if got is None:
            return None
        receipt = _dec.decode(got.value)
        return receipt if receipt.expires_ms > now_ms else None
