"""A Web Push subscription's private side, and where an application keeps it.

RFC 8291 encrypts each push for the subscriber's P-256 public key (``p256dh``) and
a 16-byte auth secret.  The SDK makes both when it subscribes (client/webpush.py)
and needs them again for every message, perhaps in another process or after a
restart: so they go to a :class:`KeyStore` the application chooses.

- :class:`MemoryKeyStore`: for a process that subscribes and receives itself; the
  keys die with it, and so do its subscriptions' messages.
- :class:`FileKeyStore`: one JSON file, replaced atomically and readable by its owner
  only (0600), the private key as base64url PKCS#8 DER.  The CLI keeps its keys so.

A store is synchronous and small: one ``load`` per Web Push message received, one
``save`` or ``forget`` per subscribe or delete.  An application with a keyring or a
database implements the three methods.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

#: RFC 8291 §3.2: the auth secret is 16 random octets.
AUTH_SECRET_BYTES = 16


def b64url(data: bytes) -> str:
    """base64url without padding, as Web Push writes keys (RFC 8291 §3.2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    """The bytes of base64url text, padded or not; ValueError if it is not base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class SubscriptionKeys:
    """One subscription's key pair and auth secret (the device's side of RFC 8291)."""

    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes

    @classmethod
    def generate(cls) -> SubscriptionKeys:
        """A fresh P-256 key pair and a random auth secret (``os.urandom``)."""
        return cls(ec.generate_private_key(ec.SECP256R1()), os.urandom(AUTH_SECRET_BYTES))

    @property
    def p256dh(self) -> str:
        """The public key as a subscription's ``keys.p256dh``: an uncompressed point."""
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(point)

    @property
    def auth(self) -> str:
        """The auth secret as a subscription's ``keys.auth``."""
        return b64url(self.auth_secret)

    def public(self) -> dict[str, str]:
        """``{"p256dh", "auth"}``: what a subscription hands to senders."""
        return {"p256dh": self.p256dh, "auth": self.auth}

    def to_record(self) -> dict[str, str]:
        """A JSON-ready record of the private side (PKCS#8 DER, base64url)."""
        der = self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {"private_key": b64url(der), "auth": self.auth, "p256dh": self.p256dh}

    @classmethod
    def from_record(cls, record: dict[str, str]) -> SubscriptionKeys:
        """What :meth:`to_record` wrote; ValueError if it is not a P-256 key and a
        16-byte secret."""
        key = serialization.load_der_private_key(unb64url(record["private_key"]), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("not a P-256 private key")
        auth = unb64url(record["auth"])
        if len(auth) != AUTH_SECRET_BYTES:
            raise ValueError(f"an auth secret is {AUTH_SECRET_BYTES} bytes, not {len(auth)}")
        return cls(key, auth)


class KeyStore(Protocol):
    """Where a device's subscription keys live, by subscription id."""

    def load(self, subscription: str) -> SubscriptionKeys | None:
        """The subscription's keys, or None if this store has none."""
        ...

    def save(self, subscription: str, keys: SubscriptionKeys) -> None:
        """Keep the keys (durably, if the store is meant to outlive the process)."""
        ...

    def forget(self, subscription: str) -> None:
        """Drop the keys; nothing happens if there are none."""
        ...


class MemoryKeyStore:
    """Keys in a dict: they last as long as the process."""

    def __init__(self) -> None:
        self._keys: dict[str, SubscriptionKeys] = {}

    def load(self, subscription: str) -> SubscriptionKeys | None:
        return self._keys.get(subscription)

    def save(self, subscription: str, keys: SubscriptionKeys) -> None:
        self._keys[subscription] = keys

    def forget(self, subscription: str) -> None:
        self._keys.pop(subscription, None)


class FileKeyStore:
    """Keys in one JSON file: ``{"version": 1, "subscriptions": {id: record}}``.

    Each change writes a new file beside it (0600, fsynced) and renames it over the
    old one, so a crash leaves the old file or the new one, never half of one.
    Changes hold an exclusive ``flock`` on the folder, so two processes saving at
    once both keep their keys.  A ``load`` that misses reads the file again: another
    process (``pinrelay subscribe`` beside a running ``pinrelay listen``) may have
    added the keys.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._records: dict[str, dict[str, str]] = {}
        #: Parsed keys by id (a PKCS#8 parse costs about a tenth of a decryption).
        self._parsed: dict[str, SubscriptionKeys] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._read()

    def _read(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._records, self._parsed, self._stamp = {}, {}, None
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # each write is a new inode
        if stamp == self._stamp:
            return
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            records = doc["subscriptions"]
            if not isinstance(records, dict):
                raise TypeError("subscriptions is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.path} is not a pinrelay key file: {exc}") from None
        self._records, self._parsed, self._stamp = records, {}, stamp

    def ids(self) -> list[str]:
        """The subscriptions this file holds keys for."""
        self._read()
        return list(self._records)

    def load(self, subscription: str) -> SubscriptionKeys | None:
        keys = self._parsed.get(subscription)
        if keys is not None:
            return keys
        if subscription not in self._records:
            self._read()
        record = self._records.get(subscription)
        if record is None:
            return None
        keys = self._parsed[subscription] = SubscriptionKeys.from_record(record)
        return keys

    def save(self, subscription: str, keys: SubscriptionKeys) -> None:
        with self._locked():
            self._read()  # keep what another process added meanwhile
            self._write({**self._records, subscription: keys.to_record()})

    def forget(self, subscription: str) -> None:
        with self._locked():
            self._read()
            if subscription in self._records:
                self._write({k: v for k, v in self._records.items() if k != subscription})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, records: dict[str, dict[str, str]]) -> None:
        data = json.dumps({"version": 1, "subscriptions": records}, indent=1) + "\n"
        # mkstemp makes the file 0600 before a byte of a private key is in it.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # the rename is durable once the folder is
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._records = records
        self._parsed = {k: v for k, v in self._parsed.items() if k in records}
        st = self.path.stat()
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
