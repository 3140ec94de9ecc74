"""Budgets in their KV bucket (``<bucket_prefix>_budgets``, key → the time its bucket
is empty again, in ms, as ASCII digits): Store.take_budget on the cluster.

A try reads the key from the bucket's leader, applies core/ratelimit.take, and
writes the new number with compare-and-set on the revision it read; a lost
compare-and-set (a try through another relay meanwhile) reads again.  So tries
through every relay count against one budget, and a relay's restart forgets none.

A write whose acknowledgement was lost and whose retry then met its own revision
reads "moved on" and tries again: that try is counted twice, which errs on the side
of the limit (it cannot count one too few).  The bucket's max age, the longest
budget period, forgets a key once its bucket must be empty: no sweep needed.
"""

from __future__ import annotations

from pinrelay.core import ratelimit
from pinrelay.store.base import BUDGET_PERIOD_MAX_MS, StoreClosed, check_budget
from pinrelay.store.jetstream.kv import Kv, cas_pause
from pinrelay.store.jetstream.layout import Bucket

#: The bucket's max age, in seconds.
BUDGETS_BUCKET_TTL_S = BUDGET_PERIOD_MAX_MS // 1000
#: Tries of one compare-and-set before the key is declared too busy (StoreClosed).
MAX_ATTEMPTS = 20


class Budgets:
    def __init__(self, kv: Kv, bucket: Bucket) -> None:
        self.kv = kv
        self.bucket = bucket

    async def take(self, key: str, limit: int, period_ms: int, now_ms: int) -> int:
        check_budget(key, limit, period_ms)
        self.kv.api.check_open()
        for attempt in range(MAX_ATTEMPTS):
            got = await self.kv.get(self.bucket, key)
            empty_at = None if got is None else int(got.value)
            wait, new = ratelimit.take(empty_at, now_ms, limit, period_ms)
            if new is None:
                return wait
            revision = 0 if got is None else got.revision
            if await self.kv.put(self.bucket, key, str(new).encode(), revision) is not None:
                return 0
            await cas_pause(attempt)
        raise StoreClosed(f"budget {key}: too many concurrent tries")
