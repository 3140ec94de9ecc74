"""The Starlette application of one relay."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from pinrelay.api import (
    channels,
    chat,
    credits,
    devices,
    inbox,
    incidents,
    info,
    keys,
    matrix,
    messages,
    openapi,
    pairing,
    portability,
    reports,
    status,
    tenants,
    webapp,
    webhooks,
    webpush,
)
from pinrelay.api.common import json_response
from pinrelay.api.problems import on_client_gone, on_http_error, on_pinrelay_error, on_unexpected
from pinrelay.core.errors import PinrelayError

if TYPE_CHECKING:
    from pinrelay.relay import Relay


Endpoint = Callable[[Request], Awaitable[Response]]


def one_route_per_path(routes: list[Route]) -> list[Route]:
    """Join routes that share a path, so a 405 lists every method in ``Allow``."""
    by_path: dict[str, dict[str, Endpoint]] = {}
    for route in routes:
        for method in route.methods or ():
            by_path.setdefault(route.path, {})[method] = route.endpoint
    joined = []
    for path, handlers in by_path.items():

        async def dispatch(request: Request, handlers: dict[str, Endpoint] = handlers) -> Response:
            return await handlers[request.method](request)

        joined.append(Route(path, dispatch, methods=list(handlers)))
    return joined


class PushFastPath:
    """ASGI entry: ``POST`` pushes (JSON and Web Push) go straight to their handler.

    Starlette's middleware and route scan cost a push more than its handler does;
    this calls the same handlers and the same error handlers, and passes every other
    request to the Starlette app (docs/DECISIONS.md, "Push fast path").
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler, params = None, {}
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == "/v1/messages":
                handler = messages.push_batch
            elif (pin := messages.push_path_pin(path)) is not None:
                handler, params = messages.push_one, {"pin": pin}
            elif (sub := webpush.push_path_sub(path)) is not None:
                # Web Push (RFC 8030 §5): its route sits behind some forty others.
                handler, params = webpush.push, {"sub": sub}
        if handler is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except PinrelayError as exc:
            response = await on_pinrelay_error(request, exc)
        except ClientDisconnect as exc:
            response = await on_client_gone(request, exc)
        except Exception as exc:
            response = await on_unexpected(request, exc)
        await response(scope, receive, send)


def build_app(relay: Relay) -> PushFastPath:
    document = openapi.build(relay.config.limits)

    async def openapi_json(request: Request) -> Response:
        return json_response(document)

    app = Starlette(
        routes=one_route_per_path(
            [
                # Starlette tries routes in order: the hot ones first.
                *messages.routes,
                *inbox.routes,
                *chat.routes,
                *devices.routes,
                *info.routes,
                *keys.routes,
                *tenants.routes,
                *portability.routes,
                *channels.routes,
                *incidents.routes,
                *credits.routes,
                *reports.routes,
                *webhooks.routes,
                *status.routes,
                *pairing.routes,
                *webpush.routes,
                *matrix.routes,
                *webapp.routes,
                Route("/openapi.json", openapi_json, methods=["GET"]),
            ]
        ),
        exception_handlers={
            ClientDisconnect: on_client_gone,
            PinrelayError: on_pinrelay_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
    # A redirect to add or drop a trailing slash would be built from the client's Host
    # header (an open redirect through a cache or a proxy): such a path is a 404.
    app.router.redirect_slashes = False
    app.state.relay = relay
    return PushFastPath(app)
