"""Web Push in the device SDK: subscribe, list, delete, and open what arrives
(PROTOCOL "Web Push"; docs/WEBPUSH.md).

``await device.subscribe()`` (``device.webpush.subscribe``) makes a P-256 key pair
and an auth secret (client/keys.py), registers the public half with the relay and
keeps the private half in the device's :class:`~pinrelay.client.keys.KeyStore`; the
:class:`WebPushSubscription` it returns is what an application server needs
(``to_json()``: a browser's ``PushSubscription.toJSON()``).  Any Web Push sender then
encrypts for those keys (RFC 8291) and posts to the endpoint (RFC 8030).

The relay stores and forwards the ciphertext only: a ``msg`` of kind ``webpush``.
The Device opens it with :func:`open_message` (``http_ece``, RFC 8188 aes128gcm)
and hands the application a :class:`WebPushMessage` with the plaintext.  A message
it cannot open (no keys for that subscription, a body that does not decrypt) is
still acknowledged and handed over, with ``payload`` None and ``error`` saying why:
one bad push must not stop the messages behind it, nor vanish unseen.

The HTTP calls are :class:`~pinrelay.client.contacts.Call` values, run by the SDK's
AsyncRunner or the CLI's DeviceClient like the contact routes.
"""

from __future__ import annotations

import builtins
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import http_ece
import msgspec
from cryptography.exceptions import InvalidTag

from pinrelay.client.contacts import AsyncRunner, Call
from pinrelay.client.http import ApiError
from pinrelay.client.keys import KeyStore, SubscriptionKeys, unb64url


class WebPushSubscription(msgspec.Struct, kw_only=True, frozen=True):
    """A subscription as the relay answers it (PROTOCOL "Subscriptions")."""

    id: str
    #: Where senders POST: ``<relay's public origin>/push/<id>``.
    endpoint: str
    #: ``{"p256dh", "auth"}``, or ``{}`` for a subscription made without keys.
    keys: dict[str, str] = msgspec.field(default_factory=dict)
    expiration_time: int | None = msgspec.field(default=None, name="expirationTime")
    #: The VAPID public key pushes must be signed with, or None: any sender.
    application_server_key: str | None = msgspec.field(default=None, name="applicationServerKey")
    created_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The browser's ``PushSubscription.toJSON()``: paste it into any sender."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": self.expiration_time,
            "keys": self.keys,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field, as the relay wrote it (a superset of :meth:`to_json`)."""
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result


@dataclass(frozen=True, slots=True)
class WebPushMessage:
    """A Web Push message opened: ``Message.webpush`` for a message of kind webpush."""

    #: The subscription it was pushed to.
    subscription: str
    #: The sender's plaintext; None when it could not be decrypted (see ``error``).
    payload: bytes | None
    #: The sender's ``Topic`` header, or None.
    topic: str | None
    #: very-low, low, normal or high: the sender's ``Urgency``.
    urgency: str
    #: Why ``payload`` is None: no keys for the subscription, a body that does not
    #: decrypt, ...; None when it was decrypted.
    error: str | None = None


class _Data(msgspec.Struct):
    """``msg.data`` of a webpush message (PROTOCOL "What the device receives")."""

    body: str
    subscription: str
    encoding: str = "aes128gcm"
    topic: str | None = None


_data = msgspec.json.Decoder(_Data)


class Undecryptable(Exception):
    """A body that does not decrypt with a subscription's keys; ``str()`` says why."""


#: What http_ece and cryptography raise on a body that is not aes128gcm for these
#: keys, besides ECEException: a bad sender key (ValueError), a bad header.
_LIBRARY_ERRORS: tuple[type[Exception], ...] = (
    InvalidTag,
    ValueError,
    struct.error,
    IndexError,
    TypeError,
    OverflowError,
)


def decrypt(body: bytes, keys: SubscriptionKeys) -> bytes:
    """RFC 8291 / RFC 8188 aes128gcm: the plaintext of ``body`` for ``keys``.

    Raises :class:`Undecryptable`, whatever the library underneath raised."""
    # RFC 8188 §2: salt (16), rs (4), idlen (1), keyid, then records, the last one
    # marked; http_ece takes a body of no record as an empty message.
    if len(body) < 21 or len(body) <= 21 + body[20]:
        raise Undecryptable("no encrypted record after the aes128gcm header")
    try:
        plaintext: bytes = http_ece.decrypt(
            body, private_key=keys.private_key, auth_secret=keys.auth_secret, version="aes128gcm"
        )
    except http_ece.ECEException as exc:
        if isinstance(exc.__context__, InvalidTag):
            raise Undecryptable("the tag does not match: other keys, or a changed body") from None
        raise Undecryptable(str(exc)) from None
    except _LIBRARY_ERRORS as exc:
        raise Undecryptable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    return plaintext


def open_message(
    raw: bytes | msgspec.Raw, urgency: str, load: Callable[[str], SubscriptionKeys | None]
) -> WebPushMessage:
    """A webpush ``msg.data`` (raw JSON) opened with the keys ``load`` finds; never
    raises: what cannot be opened comes back with ``payload`` None and ``error``."""
    try:
        data = _data.decode(raw)
    except msgspec.DecodeError as exc:  # a relay newer or broken: still not our loss
        return WebPushMessage("", None, None, urgency, f"malformed webpush data: {exc}")

    def failed(reason: str) -> WebPushMessage:
        return WebPushMessage(data.subscription, None, data.topic, urgency, reason)

    if data.encoding != "aes128gcm":
        return failed(f"unsupported encoding {data.encoding!r}")
    try:
        keys = load(data.subscription)
    except (OSError, ValueError, KeyError) as exc:
        return failed(f"cannot read the keys of subscription {data.subscription}: {exc}")
    if keys is None:
        return failed(f"no keys for subscription {data.subscription} in this device's key store")
    try:
        body = unb64url(data.body)
    except ValueError:
        return failed("the body is not base64url")
    try:
        payload = decrypt(body, keys)
    except Undecryptable as exc:
        return failed(f"cannot decrypt: {exc}")
    return WebPushMessage(data.subscription, payload, data.topic, urgency)


# --- the routes ------------------------------------------------------------------
class _List(msgspec.Struct):
    subscriptions: list[WebPushSubscription]


_one = msgspec.json.Decoder(WebPushSubscription)
_many = msgspec.json.Decoder(_List)


def _nothing(_content: bytes) -> None:
    return None


class SubscriptionRoutes:
    """The calls of ``/v1/devices/{pin}/subscriptions``; no I/O."""

    def __init__(self, pin: str) -> None:
        self.base = f"/v1/devices/{quote(pin, safe='')}/subscriptions"

    def create(
        self, keys: dict[str, str] | None, application_server_key: str | None
    ) -> Call[WebPushSubscription]:
        body: dict[str, Any] = {}
        if keys is not None:
            body["keys"] = keys
        if application_server_key is not None:
            body["applicationServerKey"] = application_server_key
        return Call("POST", self.base, body, _one.decode)

    def list(self) -> Call[builtins.list[WebPushSubscription]]:
        return Call("GET", self.base, None, lambda b: _many.decode(b).subscriptions)

    def delete(self, subscription: str) -> Call[None]:
        return Call("DELETE", f"{self.base}/{quote(subscription, safe='')}", None, _nothing)


def checked(sub: WebPushSubscription, keys: SubscriptionKeys) -> WebPushSubscription:
    """``sub`` if the relay registered the keys it was given; ApiError otherwise (a
    sender would encrypt for keys this device cannot open)."""
    if sub.keys != keys.public():
        raise ApiError(0, f"the relay registered other keys for subscription {sub.id}")
    return sub


class WebPush:
    """``device.webpush``: this device's Web Push subscriptions (over HTTP: needs
    ``Device(url=...)``), and the key store that opens their messages.  Raises
    :class:`~pinrelay.client.http.ApiError` on an error answer."""

    def __init__(self, runner: AsyncRunner, keys: KeyStore) -> None:
        self._run = runner.run
        self._routes = SubscriptionRoutes(runner.routes.pin)
        #: Where the private keys are (the Device's ``keys=``).
        self.keys = keys

    async def subscribe(self, application_server_key: str | None = None) -> WebPushSubscription:
        """A new subscription with fresh keys, kept in the key store.

        ``application_server_key``: an application server's VAPID public key
        (base64url): then only pushes signed with it are accepted.  Give the
        returned subscription's ``to_json()`` to the application server."""
        keys = SubscriptionKeys.generate()
        sub = await self._run(self._routes.create(keys.public(), application_server_key))
        try:
            self.keys.save(checked(sub, keys).id, keys)
        except BaseException:
            # Nobody could read what is pushed to it: take it back, then say why.
            with contextlib.suppress(ApiError):
                await self._run(self._routes.delete(sub.id))
            raise
        return sub

    async def list(self) -> builtins.list[WebPushSubscription]:
        """This device's subscriptions, oldest first."""
        return await self._run(self._routes.list())

    async def delete(self, subscription: str) -> None:
        """Delete a subscription (later pushes to it get 410, then 404) and forget its
        keys: messages for it still on their way arrive undecryptable."""
        try:
            await self._run(self._routes.delete(subscription))
        except ApiError as exc:
            if exc.status == 404:  # already gone at the relay: the keys are useless
                self.keys.forget(subscription)
            raise
        self.keys.forget(subscription)

    def open(self, raw: bytes | msgspec.Raw, urgency: str) -> WebPushMessage:
        """A received webpush ``msg.data`` opened with this device's keys
        (:func:`open_message`)."""
        return open_message(raw, urgency, self.keys.load)
