"""The Matrix push gateway over HTTP (PROTOCOL "Matrix push gateway"): a homeserver's
``POST /_matrix/push/v1/notify``, no pinrelay key (the pushkeys are the capability,
as Web Push endpoints are), and the ``GET`` UnifiedPush apps use to discover it.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api.common import json_response, read_body, relay_of, source_of, strict
from pinrelay.core import matrix as wire


class NotifyAnswer(msgspec.Struct, kw_only=True):
    """The spec's answer: the pushkeys the homeserver must stop using."""

    rejected: list[str]


async def notify(request: Request) -> Response:
    """200 once every reachable device's copy is stored durably; 400 for a body that
    is not a notification, 413 over MAX_REQUEST, 429 like a Web Push."""
    body = await read_body(request, limit=wire.MAX_REQUEST)
    strict(body)
    parsed = wire.parse_notify(body)
    rejected = await relay_of(request).matrix.notify(parsed, source_of(request))
    return json_response(NotifyAnswer(rejected=rejected))


async def discover(request: Request) -> Response:
    """UnifiedPush apps ask a push server's origin whether it is a Matrix gateway."""
    return json_response(wire.DISCOVERY)


routes = [
    Route("/_matrix/push/v1/notify", notify, methods=["POST"]),
    Route("/_matrix/push/v1/notify", discover, methods=["GET"]),
]
