"""The VAPID verifier's cache (pinrelay/vapid.py), with tokens signed by py_vapid:
a repeated token costs no signature check, a cached token vouches for no other key
or audience, and what the cache holds does not grow with the tokens' size."""

from __future__ import annotations

import gc
import time
import tracemalloc

import pytest
from py_vapid import Vapid

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.webpush import VapidToken, parse_vapid
from pinrelay.vapid import VapidVerifier
from tests.webpush.helpers import vapid_public

ORIGIN = "https://relay.example"
NOW = time.time()


def signed(key: Vapid, **claims: object) -> VapidToken:
    headers = key.sign({"sub": "mailto:ops@example.com", "aud": ORIGIN, **claims})
    token = parse_vapid(headers["Authorization"], None)
    assert token is not None
    return token


def new_key() -> Vapid:
    key = Vapid()
    key.generate_keys()
    return key


def test_a_repeated_token_is_checked_once() -> None:
    verifier, key = VapidVerifier(), new_key()
    token = signed(key, exp=int(NOW) + 3600)
    for _ in range(3):
        verifier.verify(token, ORIGIN, NOW)
    assert verifier.verifications == 1
    # Once past its exp it is refused, not served from the cache.
    with pytest.raises(PinrelayError, match="expired"):
        verifier.verify(token, ORIGIN, NOW + 3601)


def test_a_cached_token_vouches_for_no_other_key_or_audience() -> None:
    verifier, key, other = VapidVerifier(), new_key(), new_key()
    token = signed(key, exp=int(NOW) + 3600)
    verifier.verify(token, ORIGIN, NOW)
    with pytest.raises(PinrelayError, match="does not verify") as caught:
        verifier.verify(VapidToken(token.jwt, vapid_public(other)), ORIGIN, NOW)
    assert caught.value.code is ErrorCode.UNAUTHORIZED
    with pytest.raises(PinrelayError, match=r"not https://other\.example"):
        verifier.verify(token, "https://other.example", NOW)


def test_the_cache_does_not_keep_the_tokens() -> None:
    """A sender may sign tokens as large as a request head (16 KB): the cache keeps
    a digest of each, not the token (10,000 tokens would otherwise hold 160 MB)."""
    verifier, key = VapidVerifier(), new_key()
    count, pad = 200, "x" * 12_000
    verifier.verify(signed(key, exp=int(NOW) + 3600), ORIGIN, NOW)  # the key parsed
    gc.collect()
    tracemalloc.start()  # before the tokens are made: it sees only what is made after
    try:
        before = tracemalloc.get_traced_memory()[0]
        tokens = [signed(key, exp=int(NOW) + 3600 + n, pad=pad) for n in range(count)]
        for token in tokens:
            verifier.verify(token, ORIGIN, NOW)
        del tokens, token
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert verifier.verifications == count + 1
    assert kept < count * 1024, f"the cache holds {kept} bytes for {count} tokens"


@pytest.mark.parametrize(
    ("authorization", "crypto_key"),
    [("vapid t=a.b.c, k={key}==", None), ("WebPush a.b.c", "p256ecdsa={key}=")],
)
def test_a_padded_key_is_the_same_key(authorization: str, crypto_key: str | None) -> None:
    """Padding would make one key many to the per-sender rate limit and the cache."""
    key = vapid_public(new_key())
    token = parse_vapid(
        authorization.format(key=key), None if crypto_key is None else crypto_key.format(key=key)
    )
    assert token == VapidToken("a.b.c", key)


def test_the_audience_is_an_origin_whatever_its_case() -> None:
    """node's web-push writes ``aud`` with the host lowercased (``url.parse``);
    pywebpush as the endpoint spells it: both name the same origin."""
    verifier, key = VapidVerifier(), new_key()
    for aud in ("https://relay.example", "https://Relay.Example", "https://RELAY.EXAMPLE"):
        token = signed(key, aud=aud, exp=int(NOW) + 3600)
        verifier.verify(token, "https://Relay.Example", NOW)
    with pytest.raises(PinrelayError, match="not https://Relay"):
        verifier.verify(signed(key, exp=int(NOW) + 3600), "https://Relay.Example:8443", NOW)
