"""Identifiers: PINs, message ids, secrets and their hashes.

Randomness is passed in (``rand(n) -> n bytes``) so tests can fix it; callers in
I/O layers pass :func:`os.urandom`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable

Rand = Callable[[int], bytes]

PIN_RE = re.compile(r"^[0-9A-F]{8}$")
#: Crockford base32, as ULID uses: sortable, no I/L/O/U.
_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
MSG_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")
_PAIRS = [a + b for a in _B32 for b in _B32]
_SHIFTS = range(120, -1, -10)


class RandomPool:
    """``os.urandom`` read 4 KiB at a time: one syscall per ~400 message ids."""

    __slots__ = ("_buf", "_pos", "_source")

    def __init__(self, source: Rand, size: int = 4096) -> None:
        self._source = source
        self._buf = source(size)
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf = self._source(max(len(self._buf), n))
            self._pos = 0
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out


def new_pin(rand: Rand) -> str:
    """A random PIN: 8 upper-case hex digits (32 bits), as BlackBerry PINs were."""
    return rand(4).hex().upper()


def is_pin(value: str) -> bool:
    return PIN_RE.fullmatch(value) is not None


def new_message_id(now: float, rand: Rand) -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, 26 Crockford base32 chars.

    Globally unique (80 random bits per millisecond) and sortable by creation time,
    which the JetStream engine relies on for stream-wide de-duplication.
    """
    value = (int(now * 1000) & ((1 << 48) - 1)) << 80 | int.from_bytes(rand(10), "big")
    # 26 digits = 13 pairs of 10 bits, each looked up at once (a hot path: one per push).
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def next_message_id(message_id: str) -> str:
    """The id right after ``message_id`` (same millisecond, random part + 1), as a
    monotonic ULID generator makes: unique whenever ``message_id`` is, for a second
    message a caller must build from one it was given."""
    value = 0
    for ch in message_id:
        value = value * 32 + _B32.index(ch)
    value = (value + 1) & ((1 << 128) - 1)
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def new_secret(rand: Rand, nbytes: int = 24) -> str:
    """A URL-safe secret (device token, API key body)."""
    return base64.urlsafe_b64encode(rand(nbytes)).decode().rstrip("=")


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a secret.

    Secrets are 192 random bits, so a fast unsalted hash is enough: there is no
    dictionary to attack, and lookups by hash stay O(1).
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)


#: A pairing code: 10 Crockford base32 digits (50 random bits), shown as two groups
#: of five ("7KQ2M-X9D4T") so that a person can read it out and type it.
PAIRING_CODE_DIGITS = 10
#: What a person may type for a digit, in Crockford's decoding (I and L are 1, O is 0).
_TYPED = str.maketrans("ILO", "110")


def new_pairing_code(rand: Rand) -> str:
    """A random pairing code, grouped for reading: ``XXXXX-XXXXX``."""
    value = int.from_bytes(rand(7), "big") >> 6  # 50 bits
    digits = "".join(_B32[(value >> shift) & 31] for shift in range(45, -1, -5))
    return f"{digits[:5]}-{digits[5:]}"


def canonical_pairing_code(typed: str) -> str | None:
    """The code as stored (its 10 digits), from what a person typed: any case, with
    spaces or hyphens anywhere, I/L for 1 and O for 0; None if it cannot be one."""
    digits = "".join(typed.split()).replace("-", "").upper().translate(_TYPED)
    if len(digits) != PAIRING_CODE_DIGITS or any(d not in _B32 for d in digits):
        return None
    return digits
