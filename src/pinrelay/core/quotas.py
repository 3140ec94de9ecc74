"""Tenant quotas, enforced (issue 15; PROTOCOL "Tenants", "Quotas").

A tenant's ``rate`` and ``burst`` bound the messages its keys push: a token bucket
per tenant, refilled at ``rate`` tokens a second up to ``burst`` (default: one
second's worth).  A push of ``n`` messages takes ``n`` tokens or none: a refused
batch stores nothing.  On a cluster each relay keeps its own buckets, each with
``1/share`` of the rate and burst (``share``: the live relays; a bucket holds one
message at least), so the tenant's total stays near its quota without a request per
push (DECISIONS 48).

Memory: one entry per tenant with a rate quota that pushed here, two floats.  Pure:
the caller passes the clock's reading.
"""

from __future__ import annotations

from pinrelay.core.errors import LimitExceeded, RateLimited
from pinrelay.core.tenants import Quotas

#: The longest wait a rate refusal names: a rate so near zero that the next message
#: is further off (or, divided among a cluster's relays, rounds to 0) still gets a
#: finite Retry-After (an infinite one failed the answer, a zero rate divided by it).
MAX_RETRY_AFTER_S = 86_400.0


class QuotaExceeded(RateLimited):
    """A tenant is over one of its quotas: 429 with Retry-After, naming the quota."""


def over(tenant: str, quota: str, bound: str, retry_after: float = 1.0) -> QuotaExceeded:
    """The one way a refusal names its quota: "tenant X is over its Q quota of B"."""
    return QuotaExceeded(f"tenant {tenant} is over its {quota} quota of {bound}", retry_after)


def _number(value: float) -> str:
    return f"{value:g}"


class RateBuckets:
    """A token bucket per tenant (module doc)."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        #: tenant -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, tenant: str, quotas: Quotas, n: int, now: float, share: int = 1) -> None:
        """Take ``n`` tokens from ``tenant``'s bucket, or raise and take none.

        QuotaExceeded (429) names the rate and says when ``n`` tokens will be there;
        LimitExceeded (413) if ``n`` is more than the bucket ever holds.
        """
        if quotas.rate is None or n <= 0:
            return
        share = max(1, share)
        rate = quotas.rate / share
        # At least one message: a share of the burst below that would refuse every push.
        burst = max(1.0, (quotas.burst if quotas.burst is not None else quotas.rate) / share)
        if n > burst:
            raise LimitExceeded(
                f"{n} messages at once: tenant {tenant}'s burst quota allows "
                f"{_number(burst)} at once on this relay"
            )
        tokens, then = self._buckets.get(tenant, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - then) * rate)
        if tokens < n:
            self._buckets[tenant] = (tokens, now)
            wait = (n - tokens) / rate if rate > 0 else MAX_RETRY_AFTER_S
            raise over(
                tenant,
                "rate",
                f"{_number(quotas.rate)} messages a second",
                min(wait, MAX_RETRY_AFTER_S),
            )
        self._buckets[tenant] = (tokens - n, now)


class LinkCounts:
    """The devices of each tenant linked to this relay, for the ``links`` quota.

    Counted per relay (a cluster's relays do not share counts): a device counts
    once however many of its links are open here, so a link that replaces the
    device's older one is always admitted.  Memory: one entry per linked device.
    """

    __slots__ = ("_links",)

    def __init__(self) -> None:
        #: tenant -> PIN -> links of that device open here
        self._links: dict[str, dict[str, int]] = {}

    def count(self, tenant: str) -> int:
        return len(self._links.get(tenant, ()))

    def admits(self, tenant: str, pin: str, limit: int | None) -> bool:
        """Whether one more link of ``pin`` keeps ``tenant`` within ``limit``."""
        if limit is None:
            return True
        pins = self._links.get(tenant, {})
        return pin in pins or len(pins) < limit

    def add(self, tenant: str, pin: str) -> None:
        pins = self._links.setdefault(tenant, {})
        pins[pin] = pins.get(pin, 0) + 1

    def remove(self, tenant: str, pin: str) -> None:
        pins = self._links.get(tenant)
        if pins is None or pin not in pins:
            return
        pins[pin] -= 1
        if pins[pin] <= 0:
            del pins[pin]
            if not pins:
                del self._links[tenant]
