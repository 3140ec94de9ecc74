"""Info, health and readiness (unauthenticated), and metrics (admin key, unless
the relay runs with ``--metrics-public``)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay import __version__
from pinrelay.api.common import json_response, relay_of, require_key
from pinrelay.api.problems import problem
from pinrelay.api.schemas import Health, Info
from pinrelay.core.errors import ErrorCode, PinrelayError


async def info(request: Request) -> Response:
    relay = relay_of(request)
    return json_response(
        Info(
            version=__version__,
            node=relay.config.node,
            region=relay.config.region,
            link_urls=relay.link_urls,
        )
    )


async def healthz(request: Request) -> Response:
    return json_response(Health(status="ok"))


async def readyz(request: Request) -> Response:
    relay = relay_of(request)
    if not relay.ready:
        return problem(ErrorCode.OVERLOADED, "relay is starting or draining", retry_after=2)
    if not relay.store.healthy():
        return problem(ErrorCode.OVERLOADED, "the store is unavailable", retry_after=2)
    return json_response(Health(status="ready"))


async def metrics(request: Request) -> Response:
    relay = relay_of(request)
    # Relay-wide figures: the relay's admin key, not a tenant's.
    if not relay.config.metrics_public and not (await require_key(request)).relay_admin:
        raise PinrelayError("metrics need the relay's admin key", ErrorCode.FORBIDDEN)
    stats = await relay.store.stats()
    relay.metrics.backlog.set(stats.messages)
    relay.metrics.devices.set(stats.devices)
    return Response(relay.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/v1/info", info, methods=["GET"]),
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
