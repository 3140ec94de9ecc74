"""core/webpush.py: ids, topic keys and header checks, without a relay."""

from __future__ import annotations

import os

import pytest

from pinrelay.core import webpush as wire
from pinrelay.core.errors import PinrelayError


def test_subscription_ids_are_22_characters_and_never_start_with_a_dash() -> None:
    # Bytes that encode to a leading "-" (0xF8: 111110..) are drawn again.  (The
    # second draw is fixed: a random one starts with "-" once in 64 runs.)
    draws = iter([b"\xf8" * 17, b"\x00" + os.urandom(16)])
    sub_id = wire.new_subscription_id(lambda n: next(draws))
    assert len(sub_id) == 22 and sub_id.startswith("A")
    ids = {wire.new_subscription_id(os.urandom) for _ in range(2000)}
    assert len(ids) == 2000
    assert all(wire.SUBSCRIPTION_ID_RE.fullmatch(i) and i[0] != "-" for i in ids)


def test_topic_keys_are_scoped_to_their_subscription() -> None:
    a, b = wire.topic_key("A" * 22, "news"), wire.topic_key("B" * 22, "news")
    assert a != b and wire.TOPIC_RE.fullmatch(a) and a.startswith("w") and len(a) == 32
    assert wire.topic_key("A" * 22, "news") == a


@pytest.mark.parametrize(
    ("ttl", "urgency", "topic"),
    [(None, None, None), ("1.5", None, None), ("60", "now", None), ("60", None, "x" * 33)],
)
def test_bad_push_headers(ttl: str | None, urgency: str | None, topic: str | None) -> None:
    with pytest.raises(PinrelayError) as info:
        wire.parse_push_headers(ttl, urgency, topic, 3600)
    assert info.value.code.status == 400


def test_ttl_is_reduced_to_the_relays_maximum() -> None:
    assert wire.parse_push_headers("99999999", "HIGH", "t", 3600) == wire.PushHeaders(
        3600, "high", "t"
    )
