"""Pairing codes: a device linked by typing a short code (PROTOCOL "Pairing").

An operator makes a code for a device (``POST /v1/devices/{pin}/pairing``, a key
with the devices scope; ``pinrelay device pair PIN``); whoever types it into the web
messenger (``POST /v1/pairing``, no key) gets the device's PIN and a new token.  A
device has one token, so redeeming rotates it: the old token stops working and links
opened with it close, as ``POST /v1/devices/{pin}/token`` does.

A code is valid for :data:`PAIRING_TTL_S` and used once, on any relay of a cluster
(the store keeps its hash: Store.redeem_pairing); a new code replaces the device's
earlier ones (Store.create_pairing).  Wrong codes count against the
caller's address like failed logins (Authenticator.pairing_code).
"""

from __future__ import annotations

import os

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import (
    decode,
    json_response,
    own_device,
    path_pin,
    read_body,
    relay_of,
    require_key,
    source_of,
)
from pinrelay.api.schemas import PairingCreated, PairingRedeem, PairingRedeemed
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.ids import canonical_pairing_code, hash_secret, new_pairing_code, new_secret
from pinrelay.core.model import Scope
from pinrelay.core.timefmt import rfc3339

#: How long a pairing code may be redeemed.
PAIRING_TTL_S = 600


async def create(request: Request) -> Response:
    principal = await require_key(request, Scope.DEVICES)
    relay = relay_of(request)
    pin = path_pin(request)
    await own_device(relay, principal, pin)
    code = new_pairing_code(os.urandom)
    canonical = canonical_pairing_code(code)
    assert canonical is not None
    expires_ms = int(relay.clock() * 1000) + PAIRING_TTL_S * 1000
    await relay.store.create_pairing(hash_secret(canonical), pin, expires_ms)
    return json_response(
        PairingCreated(pin=pin, code=code, expires_at=rfc3339(expires_ms)), status=201
    )


async def redeem(request: Request) -> Response:
    body = decode(await read_body(request, limit=1024), PairingRedeem)
    relay = relay_of(request)
    pin = await relay.auth.pairing_code(body.code, source_of(request))
    token = new_secret(os.urandom)
    if not await relay.store.set_token(pin, hash_secret(token)):
        raise PinrelayError("the device of this pairing code was deleted", ErrorCode.GONE)
    # PROTOCOL "Token rotation": links opened with the old token close at once.
    relay.router.kick(pin, ErrorCode.UNAUTHORIZED, "the device's token was rotated")
    return json_response(PairingRedeemed(pin=pin, token=token, link_urls=relay.link_urls))


routes = [
    Route("/v1/devices/{pin}/pairing", create, methods=["POST"]),
    Route("/v1/pairing", redeem, methods=["POST"]),
]
