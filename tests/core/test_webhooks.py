"""core/webhooks.py: signatures (a fixed vector, checked against hmac here), the
receiver's check, back-off bounds, delivery order and ids, and subscription checks."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from pinrelay.core.errors import PinrelayError
from pinrelay.core.incidents import add_update, open_incident, resolve
from pinrelay.core.webhooks import (
    Webhook,
    backoff,
    delivery_id,
    entry_for,
    is_webhook_id,
    make_webhook,
    new_webhook_id,
    one_line,
    order_key,
    signature,
    verify,
)

SECRET = "whsec-0123456789abcdef"
BODY = b'{"event":"opened","id":"I000000000001.1.W000000000001"}'


def test_the_signature_is_hmac_sha256_of_time_dot_body() -> None:
    mac = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature(SECRET, 1_700_000_000, BODY) == f"t=1700000000,v1={mac}"
    header = signature(SECRET, 1_700_000_000, BODY)
    assert verify(SECRET, header, BODY, 1_700_000_100)
    assert not verify(SECRET, header, BODY + b" ", 1_700_000_100)
    assert not verify("another-secret-0000", header, BODY, 1_700_000_100)
    assert not verify(SECRET, header, BODY, 1_700_000_301)  # too old: a replay
    assert not verify(SECRET, "t=x,v1=00", BODY, 0)
    assert not verify(SECRET, "", BODY, 0)


def test_backoff_doubles_to_its_cap_with_jitter() -> None:
    assert backoff(1, 1.0) == 1.0
    assert backoff(1, 0.0) == 0.5
    assert backoff(4, 1.0) == 8.0
    assert backoff(30, 1.0) == 300.0
    assert backoff(10_000, 0.0) == 150.0
    assert backoff(3, 1.0, base_s=0.1, cap_s=0.25) == 0.25


def test_entries_sort_in_revision_order_with_stable_ids() -> None:
    a = open_incident("I000000000001", "store", "major", "Slow", 1_000)
    b = add_update(a, "Slower", 2_000)
    c = resolve(b, None, 2_000)
    other = open_incident("I000000000002", "links", "minor", "Few", 1_500)
    keys = sorted([order_key(c), order_key(other), order_key(b), order_key(a)])
    assert keys == [order_key(a), order_key(other), order_key(b), order_key(c)]
    assert "." not in order_key(a) and " " not in order_key(a)
    hook = Webhook(id="W000000000001", tenant=None, url="http://h/", secret=SECRET)
    assert delivery_id(hook.id, b) == "I000000000001.2.W000000000001"
    assert entry_for(hook, "updated", b).id == delivery_id(hook.id, b)
    assert one_line(b, "updated") == "store major updated: Slower"


def test_a_tenants_subscription_hears_its_incidents_and_public_ones() -> None:
    mine = Webhook(id="W000000000001", tenant="t1", url="http://h/", secret=SECRET)
    everyone = Webhook(id="W000000000002", tenant=None, url="http://h/", secret=SECRET)
    public = open_incident("I000000000001", "store", "major", "x", 1)
    theirs = open_incident("I000000000002", "store", "major", "x", 1, tenants=["t2"])
    ours = open_incident("I000000000003", "store", "major", "x", 1, tenants=["t1", "t2"])
    assert mine.hears(public) and mine.hears(ours) and not mine.hears(theirs)
    assert everyone.hears(theirs)


@pytest.mark.parametrize(
    ("url", "secret", "kind", "to"),
    [
        ("ftp://h/", SECRET, "json", None),
        ("http:///x", SECRET, "json", None),
        ("http://u:p@h/", SECRET, "json", None),
        ("http://h:0/", SECRET, "json", None),
        ("http://h/\n", SECRET, "json", None),
        ("http://h/" + "x" * 2048, SECRET, "json", None),
        ("http://h/", "short", "json", None),
        ("http://h/", "x" * 257, "json", None),
        ("http://h/", SECRET, "sms", None),
        ("http://h/", SECRET, "sms", "x" * 65),
    ],
)
def test_bad_subscriptions_are_refused(url: str, secret: str, kind: str, to: str | None) -> None:
    with pytest.raises(PinrelayError):
        make_webhook("W000000000001", None, url, secret, ("incident",), kind, to, 0)  # type: ignore[arg-type]


def test_good_subscriptions() -> None:
    wid = new_webhook_id(lambda n: b"\xff" * n)
    assert is_webhook_id(wid) and not is_webhook_id("I" + wid[1:])
    hook = make_webhook(
        wid, "t1", "https://[::1]:8443/h?to=%2B1555", SECRET, ("incident",), "sms", None, 5
    )
    assert hook.to == "+1555" and hook.created_ms == 5
