"""Identifiers: PINs, ULID message ids, secrets and their hashes."""

from __future__ import annotations

import hashlib
import os
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinrelay.core import ids

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MAX_MS = (1 << 48) - 1


def fixed(byte: int) -> ids.Rand:
    def rand(n: int) -> bytes:
        return bytes([byte]) * n

    return rand


def counting(n: int) -> bytes:
    return bytes(range(n))


def ulid_ms(value: str) -> int:
    """The millisecond time encoded in a ULID (its first 10 characters)."""
    ms = 0
    for ch in value[:10]:
        ms = ms * 32 + CROCKFORD.index(ch)
    return ms


class TestPin:
    def test_new_pin_is_hex_of_four_random_bytes(self) -> None:
        assert ids.new_pin(counting) == "00010203"
        assert ids.new_pin(fixed(0xAB)) == "ABABABAB"

    @given(st.binary(min_size=4, max_size=4))
    def test_new_pin_format(self, raw: bytes) -> None:
        pin = ids.new_pin(lambda n: raw[:n])
        assert len(pin) == 8
        assert set(pin) <= set("0123456789ABCDEF")
        assert ids.is_pin(pin)
        assert ids.PIN_RE.fullmatch(pin)

    def test_new_pin_real_randomness(self) -> None:
        assert all(ids.is_pin(ids.new_pin(os.urandom)) for _ in range(100))

    @pytest.mark.parametrize("value", ["00000000", "FFFFFFFF", "0A1B2C3D"])
    def test_is_pin_accepts(self, value: str) -> None:
        assert ids.is_pin(value)

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "0A1B2C3",
            "0A1B2C3D4",
            "0a1b2c3d",
            "0A1B2C3G",
            "0A1B2C3D\n",
            " 0A1B2C3D",
            "\uff10A1B2C3D",  # full-width zero: \d would match it, [0-9] must not
        ],
    )
    def test_is_pin_rejects(self, value: str) -> None:
        assert not ids.is_pin(value)


class TestMessageId:
    def test_known_vector(self) -> None:
        # ms = 1 and 80 zero bits: the time part is "0000000001".
        assert ids.new_message_id(0.001, fixed(0)) == "0000000001" + "0" * 16
        assert ids.new_message_id(0.0, fixed(0xFF)) == "0000000000" + "Z" * 16

    @given(st.integers(0, MAX_MS), st.binary(min_size=10, max_size=10))
    def test_length_alphabet_and_time(self, ms: int, raw: bytes) -> None:
        value = ids.new_message_id(ms / 1000, lambda n: raw[:n])
        assert len(value) == 26
        assert set(value) <= set(CROCKFORD)
        assert ids.MSG_ID_RE.fullmatch(value)
        assert value[0] in "01234567"  # 128 bits in 130: the top char is < 8
        assert ulid_ms(value) == int(ms / 1000 * 1000)

    @given(
        st.integers(0, MAX_MS - 1),
        st.integers(1, 10**6),
        st.binary(min_size=10, max_size=10),
        st.binary(min_size=10, max_size=10),
    )
    def test_sortable_by_time(self, ms: int, gap: int, r1: bytes, r2: bytes) -> None:
        later = min(ms + gap, MAX_MS)
        a = ids.new_message_id(ms / 1000, lambda n: r1[:n])
        b = ids.new_message_id(later / 1000, lambda n: r2[:n])
        assert ulid_ms(a) <= ulid_ms(b)
        if ulid_ms(a) < ulid_ms(b):
            assert a < b

    @given(
        st.floats(0, MAX_MS / 1000 - 10**4, allow_nan=False),
        st.floats(0, 10**4, allow_nan=False),
    )
    def test_time_part_never_decreases(self, now: float, gap: float) -> None:
        a = ids.new_message_id(now, fixed(0xFF))
        b = ids.new_message_id(now + gap, fixed(0))
        assert a[:10] <= b[:10]

    def test_same_ms_differs_by_randomness(self) -> None:
        a = ids.new_message_id(1.5, os.urandom)
        b = ids.new_message_id(1.5, os.urandom)
        assert a != b
        assert a[:10] == b[:10]

    def test_real_ids_are_unique(self) -> None:
        values = {ids.new_message_id(1_700_000_000.123, os.urandom) for _ in range(1000)}
        assert len(values) == 1000


class TestSecrets:
    def test_new_secret_is_urlsafe_without_padding(self) -> None:
        secret = ids.new_secret(os.urandom)
        assert len(secret) == 32  # 24 bytes → 32 base64 chars
        assert set(secret) <= set(string.ascii_letters + string.digits + "-_")

    @given(st.integers(1, 64))
    def test_new_secret_length(self, nbytes: int) -> None:
        secret = ids.new_secret(fixed(0xFB), nbytes)
        assert "=" not in secret
        assert len(secret) == -(-nbytes * 4 // 3)

    def test_hash_secret_is_sha256_hex(self) -> None:
        assert ids.hash_secret("abc") == (
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )
        assert ids.hash_secret("") == hashlib.sha256(b"").hexdigest()

    @given(st.text())
    def test_hash_secret_matches_hashlib(self, secret: str) -> None:
        digest = ids.hash_secret(secret)
        assert digest == hashlib.sha256(secret.encode()).hexdigest()
        assert len(digest) == 64

    @given(st.text(), st.text())
    def test_secret_matches(self, secret: str, other: str) -> None:
        stored = ids.hash_secret(secret)
        assert ids.secret_matches(secret, stored)
        assert ids.secret_matches(other, stored) is (other == secret)

    def test_secret_matches_rejects_garbage_hash(self) -> None:
        assert not ids.secret_matches("s", "")
        assert not ids.secret_matches("s", "not a hash")
        assert not ids.secret_matches("s", ids.hash_secret("s").upper())


def test_pairing_codes_read_back_as_typed() -> None:
    assert ids.new_pairing_code(lambda n: bytes([0xFF]) * n) == "ZZZZZ-ZZZZZ"
    assert ids.new_pairing_code(lambda n: bytes(n)) == "00000-00000"
    code = ids.new_pairing_code(os.urandom)
    assert ids.canonical_pairing_code(code) == code.replace("-", "")
    assert ids.canonical_pairing_code(" zzzzz zzzzz ") == "ZZZZZZZZZZ"
    assert ids.canonical_pairing_code("oIl23-45678") == "0112345678"
    for bad in ("", "ZZZZZ-ZZZZ", "ZZZZZ-ZZZZZZ", "UUUUU-UUUUU", "ZZZZZ_ZZZZZ"):
        assert ids.canonical_pairing_code(bad) is None, bad


@given(st.binary(min_size=10, max_size=10), st.integers(0, 2**48 - 1))
def test_the_next_message_id_sorts_right_after_its_predecessor(random: bytes, ms: int) -> None:
    first = ids.new_message_id(ms / 1000, lambda n: random)
    second = ids.next_message_id(first)
    assert ids.MSG_ID_RE.fullmatch(second) and second > first
    assert second[:10] == first[:10] or random == b"\xff" * 10  # the same millisecond


def test_the_next_message_id_counts_in_base32() -> None:
    assert ids.next_message_id("0" * 25 + "Z") == "0" * 24 + "10"
