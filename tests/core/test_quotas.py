"""core/quotas.py without a loop: the token bucket's arithmetic and the link counts."""

from __future__ import annotations

import pytest

from pinrelay.core.errors import ErrorCode, LimitExceeded
from pinrelay.core.quotas import MAX_RETRY_AFTER_S, LinkCounts, QuotaExceeded, RateBuckets
from pinrelay.core.tenants import Quotas


def test_the_burst_then_the_rate_all_or_none() -> None:
    buckets = RateBuckets()
    quotas = Quotas(rate=2.0, burst=4)
    buckets.take("t", quotas, 4, now=100.0)
    with pytest.raises(QuotaExceeded) as over:
        buckets.take("t", quotas, 1, now=100.0)
    assert over.value.code is ErrorCode.RATE_LIMITED
    assert over.value.detail == "tenant t is over its rate quota of 2 messages a second"
    assert over.value.retry_after == pytest.approx(0.5)
    # 1.5 s later: 3 tokens.  A batch of 4 is refused whole and takes none ...
    with pytest.raises(QuotaExceeded):
        buckets.take("t", quotas, 4, now=101.5)
    buckets.take("t", quotas, 3, now=101.5)  # ... so these 3 pass.
    # Never more than the burst, however long the pause.
    buckets.take("t", quotas, 4, now=1_000.0)
    with pytest.raises(QuotaExceeded):
        buckets.take("t", quotas, 1, now=1_000.0)
    # Other tenants have their own buckets; no rate, no bucket.
    buckets.take("u", quotas, 4, now=100.0)
    buckets.take("v", Quotas(), 10_000, now=100.0)
    assert len(buckets) == 2


def test_burst_defaults_to_a_seconds_worth_and_a_batch_past_it_is_too_large() -> None:
    buckets = RateBuckets()
    quotas = Quotas(rate=10.0)
    with pytest.raises(LimitExceeded):
        buckets.take("t", quotas, 11, now=0.0)
    buckets.take("t", quotas, 10, now=0.0)
    with pytest.raises(QuotaExceeded):
        buckets.take("t", quotas, 1, now=0.0)


def test_a_cluster_share_divides_rate_and_burst() -> None:
    buckets = RateBuckets()
    quotas = Quotas(rate=30.0, burst=30)
    buckets.take("t", quotas, 10, now=0.0, share=3)
    with pytest.raises(QuotaExceeded) as over:
        buckets.take("t", quotas, 1, now=0.0, share=3)
    assert over.value.retry_after == pytest.approx(0.1)  # 10 a second here
    assert "quota of 30 messages a second" in over.value.detail


def test_a_share_of_the_burst_holds_one_message_at_least() -> None:
    # Regression: 1 a second (burst 1) on 2 relays made buckets of half a message
    # each, which refused every push, however long the tenant waited.
    buckets = RateBuckets()
    quotas = Quotas(rate=1.0)
    buckets.take("t", quotas, 1, now=0.0, share=2)
    with pytest.raises(QuotaExceeded) as over:
        buckets.take("t", quotas, 1, now=0.0, share=2)
    assert over.value.retry_after == pytest.approx(2.0)  # half a message a second here
    buckets.take("t", quotas, 1, now=2.0, share=2)
    with pytest.raises(LimitExceeded):
        buckets.take("t", quotas, 2, now=100.0, share=2)


@pytest.mark.parametrize("share", [1, 2])
def test_a_rate_near_zero_names_a_finite_wait(share: int) -> None:
    # Regression: 5e-324 a second gave an infinite Retry-After (a 500 when the
    # header was written) and, halved on a cluster, a division by zero.
    buckets = RateBuckets()
    quotas = Quotas(rate=5e-324)
    buckets.take("t", quotas, 1, now=0.0, share=share)
    with pytest.raises(QuotaExceeded) as over:
        buckets.take("t", quotas, 1, now=0.0, share=share)
    assert over.value.retry_after == MAX_RETRY_AFTER_S


def test_link_counts_count_devices_not_links() -> None:
    links = LinkCounts()
    assert links.admits("t", "A", 1)
    links.add("t", "A")
    assert links.admits("t", "A", 1)  # a relink replaces: admitted
    assert not links.admits("t", "B", 1)
    assert links.admits("t", "B", None) and links.admits("u", "B", 1)
    links.add("t", "A")  # the new link, before the old one is gone
    links.remove("t", "A")
    assert not links.admits("t", "B", 1)
    links.remove("t", "A")
    assert links.admits("t", "B", 1) and links.count("t") == 0
    links.remove("t", "A")  # a stray removal changes nothing
    assert links.count("t") == 0
