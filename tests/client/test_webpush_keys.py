"""A subscription's keys and the key stores that keep them (client/keys.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pinrelay.client.keys import (
    FileKeyStore,
    KeyStore,
    MemoryKeyStore,
    SubscriptionKeys,
    b64url,
    unb64url,
)
from pinrelay.testing.wait import TIMEOUT_FACTOR


class TestSubscriptionKeys:
    def test_public_values_have_the_rfc_8291_shapes(self) -> None:
        keys = SubscriptionKeys.generate()
        point = unb64url(keys.p256dh)
        assert len(point) == 65 and point[0] == 4  # an uncompressed P-256 point
        assert len(unb64url(keys.auth)) == 16
        assert "=" not in keys.p256dh + keys.auth
        assert keys.public() == {"p256dh": keys.p256dh, "auth": keys.auth}
        # The public key is the private key's (not some other point).
        again = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        assert again == keys.private_key.public_key()

    def test_every_subscription_gets_its_own_keys(self) -> None:
        a, b = SubscriptionKeys.generate(), SubscriptionKeys.generate()
        assert a.p256dh != b.p256dh and a.auth != b.auth

    def test_a_record_round_trips(self) -> None:
        keys = SubscriptionKeys.generate()
        record = keys.to_record()
        assert set(record) == {"private_key", "auth", "p256dh"}
        back = SubscriptionKeys.from_record(json.loads(json.dumps(record)))
        assert back.public() == keys.public()
        assert back.private_key.private_numbers() == keys.private_key.private_numbers()

    def test_a_record_of_another_curve_or_secret_length_is_refused(self) -> None:
        record = SubscriptionKeys.generate().to_record()
        other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(ValueError, match="P-256"):
            SubscriptionKeys.from_record({**record, "private_key": b64url(other)})
        with pytest.raises(ValueError, match="16 bytes"):
            SubscriptionKeys.from_record({**record, "auth": b64url(b"x" * 15)})


def test_base64url_both_ways() -> None:
    for n in range(8):
        data = bytes(range(250, 250 - n, -1))
        assert unb64url(b64url(data)) == data
        assert unb64url(b64url(data) + "=" * (-len(b64url(data)) % 4)) == data
    with pytest.raises(ValueError):
        unb64url("a")


def _store_contract(store: KeyStore) -> None:
    keys = SubscriptionKeys.generate()
    assert store.load("s1") is None
    store.save("s1", keys)
    loaded = store.load("s1")
    assert loaded is not None and loaded.public() == keys.public()
    store.forget("s1")
    assert store.load("s1") is None
    store.forget("s1")  # twice: nothing happens


def test_memory_store() -> None:
    _store_contract(MemoryKeyStore())


class TestFileKeyStore:
    def test_contract(self, tmp_path: Path) -> None:
        _store_contract(FileKeyStore(tmp_path / "keys.json"))

    def test_keys_outlive_the_store_object(self, tmp_path: Path) -> None:
        path = tmp_path / "deep" / "er" / "keys.json"
        keys = SubscriptionKeys.generate()
        FileKeyStore(path).save("s1", keys)
        loaded = FileKeyStore(path).load("s1")
        assert loaded is not None
        assert loaded.private_key.private_numbers() == keys.private_key.private_numbers()
        assert loaded.auth_secret == keys.auth_secret

    def test_only_the_owner_can_read_it(self, tmp_path: Path) -> None:
        path = tmp_path / "keys.json"
        old = os.umask(0o000)  # even with a permissive umask
        try:
            FileKeyStore(path).save("s1", SubscriptionKeys.generate())
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    def test_the_file_is_plain_json_and_no_temporary_file_is_left(self, tmp_path: Path) -> None:
        path = tmp_path / "keys.json"
        store = FileKeyStore(path)
        a, b = SubscriptionKeys.generate(), SubscriptionKeys.generate()
        store.save("s1", a)
        store.save("s2", b)
        store.forget("s1")
        doc = json.loads(path.read_text())
        assert doc["version"] == 1
        assert doc["subscriptions"] == {"s2": b.to_record()}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json"]
        assert store.ids() == ["s2"]

    def test_what_another_process_saved_is_found(self, tmp_path: Path) -> None:
        """`pinrelay subscribe` beside a running `pinrelay listen`: the listener's
        store reads the file again when a subscription is not in it."""
        path = tmp_path / "keys.json"
        listener, subscriber = FileKeyStore(path), FileKeyStore(path)
        assert listener.load("s1") is None
        keys = SubscriptionKeys.generate()
        subscriber.save("s1", keys)
        loaded = listener.load("s1")
        assert loaded is not None and loaded.public() == keys.public()
        # And a save through the listener keeps the subscriber's keys.
        listener.save("s2", SubscriptionKeys.generate())
        assert sorted(FileKeyStore(path).ids()) == ["s1", "s2"]

    def test_processes_saving_at_once_keep_every_key(self, tmp_path: Path) -> None:
        """Several `pinrelay subscribe` at once: each one's read-modify-write of the
        file holds the folder's lock, so no save overwrites another's."""
        path = tmp_path / "keys.json"
        script = (
            "import sys\n"
            "from pinrelay.client.keys import FileKeyStore, SubscriptionKeys\n"
            "store = FileKeyStore(sys.argv[1])\n"
            "for i in range(15):\n"
            "    store.save(f'{sys.argv[2]}-{i}', SubscriptionKeys.generate())\n"
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", script, str(path), f"p{n}"]) for n in range(6)
        ]
        try:
            codes = [p.wait(timeout=60 * TIMEOUT_FACTOR) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert codes == [0] * 6
        assert len(FileKeyStore(path).ids()) == 6 * 15

    def test_a_file_that_is_not_a_key_file_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "keys.json"
        for text in ("not json", "[]", '{"subscriptions": []}', "{}"):
            path.write_text(text)
            with pytest.raises(ValueError, match="not a pinrelay key file"):
                FileKeyStore(path)
