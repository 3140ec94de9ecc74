"""The Starlette application of one relay."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay.api import devices, inbox, info, keys, messages, openapi
from pinrelay.api.common import json_response
from pinrelay.api.problems import on_client_gone, on_http_error, on_pinrelay_error, on_unexpected
from pinrelay.core.errors import PinrelayError

if TYPE_CHECKING:
    from pinrelay.relay import Relay


def build_app(relay: Relay) -> Starlette:
    document = openapi.build()

    async def openapi_json(request: Request) -> Response:
        return json_response(document)

    app = Starlette(
        routes=[
            *info.routes,
            *devices.routes,
            *messages.routes,
            *inbox.routes,
            *keys.routes,
            Route("/openapi.json", openapi_json, methods=["GET"]),
        ],
        exception_handlers={
            ClientDisconnect: on_client_gone,
            PinrelayError: on_pinrelay_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
    app.state.relay = relay
    return app
