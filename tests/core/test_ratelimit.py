"""FailureLimiter: a leaky bucket per key, bounded in count and bytes (DECISIONS 31)."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinrelay.core.ratelimit import FailureLimiter

T0 = 1_000.0


def test_limit_failures_in_a_burst_then_one_per_period_over_limit() -> None:
    lim = FailureLimiter(limit=10, period=60.0)
    for n in range(10):
        assert lim.retry_after("k", T0) == 0.0, n
        lim.failed("k", T0)
    assert lim.retry_after("k", T0) == 6.0  # one more try every 60 / 10 s
    assert lim.retry_after("k", T0 + 5.9) > 0
    assert lim.retry_after("k", T0 + 6.0) == 0.0
    lim.failed("k", T0 + 6.0)
    assert lim.retry_after("k", T0 + 6.0) == 6.0
    assert lim.retry_after("other", T0) == 0.0


def test_a_key_may_have_its_own_limit() -> None:
    lim = FailureLimiter(limit=10, period=60.0)
    for _ in range(99):
        lim.failed("source", T0, 100)
    assert lim.retry_after("source", T0, 100) == 0.0
    lim.failed("source", T0, 100)
    assert lim.retry_after("source", T0, 100) == pytest.approx(0.6)


def test_a_try_may_cost_more_than_one() -> None:
    """The chat's byte budget: a try counts for its bytes; the budget refills evenly."""
    lim = FailureLimiter(limit=1000, period=60.0)
    assert lim.retry_after("k", T0, cost=600) == 0.0
    lim.failed("k", T0, cost=600)
    assert lim.retry_after("k", T0, cost=400) == 0.0  # 1,000 in a burst
    assert lim.retry_after("k", T0, cost=500) == pytest.approx(6.0)  # 100 more: 6 s
    lim.failed("k", T0, cost=400)
    assert lim.retry_after("k", T0, cost=1) == pytest.approx(0.06)
    assert lim.retry_after("k", T0 + 30, cost=500) == 0.0  # half refilled
    # A try larger than the whole budget may go once the bucket is empty, and is
    # counted whole: 4,000 is four minutes' worth, so three minutes' wait after it.
    assert lim.retry_after("k", T0 + 60, cost=4000) == 0.0
    lim.failed("k", T0 + 60, cost=4000)
    assert lim.retry_after("k", T0 + 60, cost=1) == pytest.approx(180.06)
    assert lim.retry_after("k", T0 + 240, cost=1000) == pytest.approx(60.0)
    assert lim.retry_after("k", T0 + 300, cost=1000) == 0.0


def test_a_refund_gives_back_what_a_try_counted() -> None:
    lim = FailureLimiter(limit=1000, period=60.0)
    lim.failed("k", T0, cost=1000)
    assert lim.retry_after("k", T0, cost=300) > 0
    lim.refund("k", cost=400)
    assert lim.retry_after("k", T0, cost=400) == 0.0
    assert lim.retry_after("k", T0, cost=401) > 0
    lim.refund("absent", cost=5)  # nothing to give back: nothing happens
    assert len(lim) == 1


def test_success_clears_a_key_and_quiet_keys_are_forgotten() -> None:
    lim = FailureLimiter(limit=2, period=10.0)
    lim.failed("a", T0)
    lim.failed("a", T0)
    assert lim.retry_after("a", T0) > 0
    lim.succeeded("a")
    assert lim.retry_after("a", T0) == 0.0
    assert len(lim) == 0 and lim.bytes == 0
    lim.failed("b", T0)
    lim.failed("c", T0 + 100)  # b's bucket has long been empty: b goes
    assert len(lim) == 1


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 30)), max_size=60))
def test_fewer_than_limit_failures_in_a_period_are_never_refused(
    tries: list[tuple[str, float]],
) -> None:
    """And a key that keeps failing gets at most 2 x limit through in any period."""
    lim = FailureLimiter(limit=3, period=10.0)
    now = T0
    let_through: dict[str, list[float]] = {}
    for key, advance in tries:
        now += advance
        times = let_through.setdefault(key, [])
        recent = [t for t in times if t > now - 10.0]
        wait = lim.retry_after(key, now)
        if len(recent) < 3:
            assert wait == 0.0, (key, now, times)
        if wait == 0.0:
            lim.failed(key, now)
            times.append(now)
            assert len([t for t in times if t > now - 10.0]) <= 6


def test_16_kb_pins_from_many_sources_cost_what_short_keys_cost() -> None:
    """Issue 11: 16 KB "PINs" from 600 sources held 99 MiB.  A key costs at most
    MAX_KEY characters whatever it is."""
    lim = FailureLimiter()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(3_000):
            source = f"link 10.{n >> 8 & 255}.{n & 255}.1"
            lim.failed(f"{source} {n:05d}" + "x" * 16_000, T0)
            lim.failed(source, T0, 100)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 6_000 * 300, held  # 6,000 keys of at most ~260 bytes each


def test_memory_is_bounded_by_count_and_bytes() -> None:
    from pinrelay.core.ratelimit import ENTRY_OVERHEAD, MAX_KEY

    lim = FailureLimiter(max_keys=5_000, max_bytes=512 * 1024)
    for n in range(20_000):
        lim.failed(f"link 10.{n >> 8 & 255}.{n & 255}.1 " + "x" * (n % 200), T0 + n / 1000)
        assert len(lim) <= 5_000
        assert lim.bytes <= 512 * 1024
    assert lim.bytes <= len(lim) * (MAX_KEY + 1 + ENTRY_OVERHEAD)
    assert len(lim) < 5_000  # the bytes bound it here
    small = FailureLimiter(max_keys=100)
    for n in range(1_000):
        small.failed(f"k{n}", T0)
    assert len(small) == 100  # and the count here


def test_a_long_key_is_still_counted() -> None:
    lim = FailureLimiter(limit=1)
    lim.failed("x" * 20_000, T0)
    assert lim.retry_after("x" * 20_000, T0) > 0
    assert lim.retry_after("x" * 19_999 + "y", T0) == 0.0
