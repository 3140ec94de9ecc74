"""Opening what a Web Push sender encrypted (client/webpush.py), against bodies made
by pywebpush's own encoder: the library application servers use, not ours."""

from __future__ import annotations

import json
from typing import Any

import pywebpush
from hypothesis import given, settings
from hypothesis import strategies as st

from pinrelay.client.keys import MemoryKeyStore, SubscriptionKeys, b64url
from pinrelay.client.webpush import (
    SubscriptionRoutes,
    WebPushMessage,
    WebPushSubscription,
    decrypt,
    open_message,
)

#: The largest plaintext pywebpush fits in a 4,096-byte body: 86 bytes of header
#: (salt, record size, key id length, a 65-byte key), a 16-byte tag, 1 delimiter.
MAX_PLAINTEXT = 4096 - 86 - 16 - 1


def encrypt(keys: SubscriptionKeys, data: bytes) -> bytes:
    """What pywebpush posts to a push service for ``data``."""
    info = {"endpoint": "http://127.0.0.1:1/push/x", "keys": keys.public()}
    body: bytes = pywebpush.WebPusher(info).encode(data, content_encoding="aes128gcm")["body"]
    return body


def msg_data(body: bytes, subscription: str = "s1", **more: Any) -> bytes:
    """A webpush ``msg.data`` as the relay sends it (PROTOCOL "What the device receives")."""
    data: dict[str, Any] = {
        "body": b64url(body),
        "encoding": "aes128gcm",
        "subscription": subscription,
    }
    data.update({"topic": None, **more})
    return json.dumps(data).encode()


def store_with(sub: str, keys: SubscriptionKeys) -> MemoryKeyStore:
    store = MemoryKeyStore()
    store.save(sub, keys)
    return store


class TestDecrypt:
    def test_pywebpush_bodies_decrypt_to_what_was_sent(self) -> None:
        keys = SubscriptionKeys.generate()
        for data in (b"x", b"hello \xe2\x9c\x93", bytes(range(256)) * 3, b"z" * MAX_PLAINTEXT):
            body = encrypt(keys, data)
            assert decrypt(body, keys) == data
        assert len(encrypt(keys, b"z" * MAX_PLAINTEXT)) == 4096

    def test_each_body_is_encrypted_anew(self) -> None:
        keys = SubscriptionKeys.generate()
        assert encrypt(keys, b"same") != encrypt(keys, b"same")


class TestOpenMessage:
    def test_the_plaintext_with_its_subscription_topic_and_urgency(self) -> None:
        keys = SubscriptionKeys.generate()
        raw = msg_data(encrypt(keys, b"ping"), "s1", topic="inbox")
        opened = open_message(raw, "high", store_with("s1", keys).load)
        assert opened == WebPushMessage("s1", b"ping", "inbox", "high", None)

    def test_no_keys_for_the_subscription(self) -> None:
        keys = SubscriptionKeys.generate()
        raw = msg_data(encrypt(keys, b"ping"), "s2")
        opened = open_message(raw, "normal", store_with("s1", keys).load)
        assert (opened.subscription, opened.payload) == ("s2", None)
        assert opened.error == "no keys for subscription s2 in this device's key store"

    def test_keys_of_another_subscription_do_not_open_it(self) -> None:
        mine, other = SubscriptionKeys.generate(), SubscriptionKeys.generate()
        raw = msg_data(encrypt(other, b"ping"))
        opened = open_message(raw, "normal", store_with("s1", mine).load)
        assert opened.payload is None
        assert opened.error is not None and opened.error.startswith("cannot decrypt")

    def test_a_right_key_with_a_wrong_auth_secret_does_not_open_it(self) -> None:
        keys = SubscriptionKeys.generate()
        raw = msg_data(encrypt(keys, b"ping"))
        wrong = SubscriptionKeys(keys.private_key, bytes(16))
        opened = open_message(raw, "normal", store_with("s1", wrong).load)
        assert opened.payload is None
        assert (
            opened.error == "cannot decrypt: the tag does not match: other keys, or a changed body"
        )

    def test_a_changed_byte_anywhere_is_caught(self) -> None:
        keys = SubscriptionKeys.generate()
        body = encrypt(keys, b"a secret of some length")
        load = store_with("s1", keys).load
        for i in range(len(body)):
            if i in range(16, 20):
                continue  # the record size: a larger one still holds the only record
            bad = bytearray(body)
            bad[i] ^= 0x01
            opened = open_message(msg_data(bytes(bad)), "normal", load)
            assert opened.payload is None, f"byte {i} changed and it still opened"
            assert opened.error is not None

    def test_bodies_that_are_not_aes128gcm(self) -> None:
        keys = SubscriptionKeys.generate()
        load = store_with("s1", keys).load
        good = encrypt(keys, b"ping")
        for body in (b"", b"\x00", good[:20], good[:86], good[:87], good[:-1]):
            assert open_message(msg_data(body), "normal", load).payload is None
        opened = open_message(msg_data(good[:86]), "normal", load)
        assert opened.error == "cannot decrypt: no encrypted record after the aes128gcm header"
        raw = json.dumps({"body": "not base64!", "subscription": "s1"}).encode()
        assert open_message(raw, "normal", load).error == "the body is not base64url"
        raw = msg_data(good, encoding="aesgcm")
        assert open_message(raw, "normal", load).error == "unsupported encoding 'aesgcm'"

    def test_data_that_is_not_a_webpush_object(self) -> None:
        load = MemoryKeyStore().load
        for raw in (b"null", b'"x"', b"[]", b"{}", b'{"body": 1, "subscription": "s1"}'):
            opened = open_message(raw, "low", load)
            assert opened.payload is None and opened.urgency == "low"
            assert opened.error is not None and opened.error.startswith("malformed webpush data")

    def test_a_key_store_that_fails_is_reported_not_raised(self) -> None:
        def broken(_sub: str) -> SubscriptionKeys | None:
            raise OSError("disk gone")

        opened = open_message(msg_data(b"x" * 100), "normal", broken)
        assert opened.error == "cannot read the keys of subscription s1: disk gone"

    @settings(max_examples=300, deadline=None)
    @given(body=st.binary(max_size=300), cut=st.integers(0, 200), noise=st.binary(max_size=8))
    def test_no_body_raises(self, body: bytes, cut: int, noise: bytes) -> None:
        """Whatever the body, the message is opened or reported, never an exception
        that would stop the link: random bytes, and a real body cut or extended."""
        keys = KEYS
        load = store_with("s1", keys).load
        real = REAL_BODY[:cut] + noise
        for candidate in (body, real):
            opened = open_message(msg_data(candidate), "normal", load)
            assert (opened.payload is None) == (opened.error is not None)


KEYS = SubscriptionKeys.generate()
REAL_BODY = encrypt(KEYS, b"hello")


class TestSubscriptionShape:
    def test_the_relay_answer_and_to_json(self) -> None:
        answer = {
            "id": "Qk3VqXq1oS8m2n4Zb6cT0w",
            "endpoint": "https://relay.example/push/Qk3VqXq1oS8m2n4Zb6cT0w",
            "expirationTime": None,
            "keys": {"p256dh": "BNcR", "auth": "tBHI"},
            "applicationServerKey": None,
            "created_at": "2026-12-02T08:30:00.000Z",
            "a_field_from_a_newer_relay": 1,
        }
        call = SubscriptionRoutes("2A0B6EE0").list()
        [sub] = call.decode(json.dumps({"subscriptions": [answer]}).encode())
        assert isinstance(sub, WebPushSubscription)
        assert sub.to_json() == {
            "endpoint": answer["endpoint"],
            "expirationTime": None,
            "keys": answer["keys"],
        }
        full = dict(answer)
        del full["a_field_from_a_newer_relay"]
        assert sub.to_dict() == full

    def test_routes(self) -> None:
        r = SubscriptionRoutes("2A0B6EE0")
        create = r.create({"p256dh": "p", "auth": "a"}, "K")
        assert (create.method, create.path) == ("POST", "/v1/devices/2A0B6EE0/subscriptions")
        assert create.body == {"keys": {"p256dh": "p", "auth": "a"}, "applicationServerKey": "K"}
        assert r.create(None, None).body == {}
        delete = r.delete("../x")
        assert (delete.method, delete.path) == (
            "DELETE",
            "/v1/devices/2A0B6EE0/subscriptions/..%2Fx",
        )
