"""A Web Push subscriber for tests: its own P-256 key pair and auth secret, made
with ``cryptography``, and decryption with ``http_ece`` (the libraries a real
subscriber uses); senders are pywebpush and node's web-push, never our code."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

import http_ece
import httpx
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.asyncio.client import ClientConnection

from pinrelay.core import frames
from tests.linkclient import recv, send
from tests.relayproc import RelayProc

Dev = dict[str, Any]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bearer(device: Dev) -> dict[str, str]:
    return {"Authorization": f"Bearer {device['token']}"}


@dataclass
class Subscriber:
    """One subscription's private side, as a browser would keep it."""

    private: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> dict[str, str]:
        point = self.private.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        return {"p256dh": b64(point), "auth": b64(self.auth)}

    def decrypt(self, msg: frames.Msg) -> bytes:
        data = msgspec.json.decode(msg.data)
        assert data["encoding"] == "aes128gcm"
        assert data["subscription"] == self.info["id"]
        body = unb64(data["body"])
        return bytes(
            http_ece.decrypt(
                body, private_key=self.private, auth_secret=self.auth, version="aes128gcm"
            )
        )


def delete(url: str) -> int:
    return httpx.delete(url, timeout=10).status_code


def subscribe(relay: RelayProc, device: Dev, vapid_key: str | None = None) -> Subscriber:
    sub = Subscriber()
    body: dict[str, Any] = {"keys": sub.keys}
    if vapid_key is not None:
        body["applicationServerKey"] = vapid_key
    r = httpx.post(
        f"{relay.url}/v1/devices/{device['pin']}/subscriptions",
        json=body,
        headers=bearer(device),
        timeout=10,
    )
    assert r.status_code == 201, r.text
    sub.info = r.json()
    return sub


async def next_webpush(ws: ClientConnection, timeout: float = 10.0) -> frames.Msg:
    """The next ``webpush`` message (acknowledging it)."""
    while True:
        frame = await recv(ws, timeout)
        if isinstance(frame, frames.Msg):
            await send(ws, frames.Ack(cursor=frame.cursor))
            if frame.kind == "webpush":
                return frame


def vapid_public(vapid: Any) -> str:
    """A py_vapid key's public point, base64url (the applicationServerKey)."""
    point = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return b64(point)
