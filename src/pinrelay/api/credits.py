"""Service levels, credits, make-goods and codes (PROTOCOL "Service credits" and
"Making good").

- ``PUT /v1/tenants/{tenant}/service-level`` (the relay's admin key) sets a
  tenant's service level; ``GET`` reads it (the relay's admin, or the tenant's own
  admin key); ``DELETE`` removes it.
- ``GET /v1/credits?month=YYYY-MM``: each tenant's measured availability and
  credit for the month (core/credits.py) from the incidents in the store; the
  relay's admin key sees every tenant with a service level, a tenant's admin its own.
- ``POST /v1/incidents/{incident}/make-good`` (the relay's admin key): starts the
  make-good of (incident, tenant) (makegood.py); 201 when made, 200 with the same
  record when asked again.
- ``POST /v1/codes/{code}/redeem`` (the code's tenant's admin key, or the relay's):
  200 the first time, 409 after; an unknown code, or another tenant's, 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pinrelay import makegood
from pinrelay.api.common import (
    decode,
    json_response,
    read_body,
    relay_of,
    require_key,
    visible_tenant,
)
from pinrelay.api.schemas_credits import CodeView, CreditList, MakeGoodCreate, MakeGoodView
from pinrelay.auth import KeyPrincipal
from pinrelay.core.channels import Broadcast
from pinrelay.core.credits import (
    ServiceLevel,
    credit,
    month_bounds,
    month_of,
)
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.incidents import is_incident_id
from pinrelay.core.makegood import Code, is_code
from pinrelay.core.model import Scope
from pinrelay.core.timefmt import rfc3339
from pinrelay.delay_days import month_delays

#: Incidents read for one month's credits (a few a month are expected).
MAX_MONTH_INCIDENTS = 10_000


def _relay_admin(principal: KeyPrincipal, what: str) -> None:
    if not principal.relay_admin:
        raise PinrelayError(f"only the relay's admin key {what}", ErrorCode.FORBIDDEN)


def _no_level(tenant: str) -> PinrelayError:
    return PinrelayError(f"tenant {tenant} has no service level", ErrorCode.NOT_FOUND)


async def put_level(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    _relay_admin(principal, "sets service levels")
    relay = relay_of(request)
    tenant = await visible_tenant(relay, principal, str(request.path_params["tenant"]))
    level = decode(await read_body(request, limit=8192), ServiceLevel, integral=True)
    await relay.store.put_service_level(tenant.id, level)
    return json_response(level)


async def get_level(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    relay = relay_of(request)
    tenant = await visible_tenant(relay, principal, str(request.path_params["tenant"]))
    level = (await relay.store.service_levels()).get(tenant.id)
    if level is None:
        raise _no_level(tenant.id)
    return json_response(level)


async def delete_level(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    _relay_admin(principal, "sets service levels")
    relay = relay_of(request)
    tenant = await visible_tenant(relay, principal, str(request.path_params["tenant"]))
    if tenant.id not in await relay.store.service_levels():
        raise _no_level(tenant.id)
    await relay.store.put_service_level(tenant.id, None)
    return Response(status_code=204)


async def credits(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    relay = relay_of(request)
    now_ms = int(relay.clock() * 1000)
    month = request.query_params.get("month")
    month = month_of(now_ms) if month is None else month
    start, _ = month_bounds(month)
    levels = {
        t: level
        for t, level in (await relay.store.service_levels()).items()
        if principal.tenant in (None, t)
    }
    incidents = await relay.store.list_incidents(start, MAX_MONTH_INCIDENTS)
    delays: dict[str, tuple[int, ...]] = {}
    if any(level.delay is not None for level in levels.values()):
        delays = await month_delays(relay.store, month, now_ms)
    owed = [
        credit(level, tenant, month, incidents, now_ms, delays.get(tenant))
        for tenant, level in sorted(levels.items())
    ]
    return json_response(CreditList(month=month, credits=owed))


def _view(b: Broadcast) -> MakeGoodView:
    spec = makegood.spec_of(b)
    return MakeGoodView(
        id=b.id,
        incident=spec.incident,
        tenant=b.tenant,
        text=spec.text,
        created_at=rfc3339(b.created_ms),
        devices=b.members,
        stored=b.stored,
        skipped=b.skipped,
        done=b.done_ms is not None,
    )


async def make_good(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    _relay_admin(principal, "makes good")
    relay = relay_of(request)
    incident_id = str(request.path_params["incident"])
    found = await relay.store.get_incident(incident_id) if is_incident_id(incident_id) else None
    if found is None:
        raise PinrelayError(f"no incident with id {incident_id}", ErrorCode.NOT_FOUND)
    spec = decode(await read_body(request, limit=8192), MakeGoodCreate)
    await visible_tenant(relay, principal, spec.tenant)
    if not found.affects(spec.tenant):
        raise PinrelayError(
            f"incident {incident_id} does not affect tenant {spec.tenant}", ErrorCode.CONFLICT
        )
    record, made = await makegood.start(
        relay.store,
        relay.broadcaster.submit,
        relay.clock(),
        found,
        spec.tenant,
        spec.text,
        spec.code_prefix,
    )
    return json_response(_view(record), status=201 if made else 200)


def _code_view(c: Code) -> CodeView:
    redeemed = None if c.redeemed_ms is None else rfc3339(c.redeemed_ms)
    return CodeView(
        code=c.code, tenant=c.tenant, pin=c.pin, incident=c.incident, redeemed_at=redeemed
    )


async def redeem(request: Request) -> Response:
    principal = await require_key(request, Scope.ADMIN)
    relay = relay_of(request)
    value = str(request.path_params["code"])
    found = await relay.store.get_code(value) if is_code(value) else None
    if found is None or principal.tenant not in (None, found.tenant):
        raise PinrelayError("no such code", ErrorCode.NOT_FOUND)
    after, first = await relay.store.redeem_code(value, int(relay.clock() * 1000))
    if after is None:
        raise PinrelayError("no such code", ErrorCode.NOT_FOUND)
    if not first:
        raise PinrelayError(
            f"code {value} was redeemed at {rfc3339(after.redeemed_ms or 0)}", ErrorCode.CONFLICT
        )
    return json_response(_code_view(after))


routes = [
    Route("/v1/tenants/{tenant}/service-level", put_level, methods=["PUT"]),
    Route("/v1/tenants/{tenant}/service-level", get_level, methods=["GET"]),
    Route("/v1/tenants/{tenant}/service-level", delete_level, methods=["DELETE"]),
    Route("/v1/credits", credits, methods=["GET"]),
    Route("/v1/incidents/{incident}/make-good", make_good, methods=["POST"]),
    Route("/v1/codes/{code}/redeem", redeem, methods=["POST"]),
]
