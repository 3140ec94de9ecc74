"""``pinrelay tenant …`` and ``pinrelay device grant``: tenants over the HTTP API.

Tenants are managed with the relay's admin key (``--key``, $PINRELAY_KEY,
$PINRELAY_ADMIN_KEY or ./data/admin.key); a tenant's admin key lists and shows its
own tenant.  A grant is made with the device's own token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from pinrelay.cli_common import (
    DEFAULT_URL,
    JsonOpt,
    KeyOpt,
    PinArg,
    UrlOpt,
    admin_key,
    call,
    data_table,
    fail,
    out,
    print_json,
    print_record,
    relay_client,
)

if TYPE_CHECKING:
    from pinrelay.client.http import RelayClient

tenant_app = typer.Typer(help="Create, list, show, suspend and delete tenants (the admin key).")

TenantArg = Annotated[str, typer.Argument(metavar="TENANT", help="The tenant's id.")]
SCOPES = ("push", "devices", "broadcast", "admin")


def _client(url: str, key: str | None) -> RelayClient:
    return relay_client(url, admin_key(key))


def _quotas(
    devices: int | None,
    rate: float | None,
    burst: int | None,
    stored: int | None,
    links: int | None,
) -> dict[str, Any]:
    given = {
        "devices": devices,
        "rate": rate,
        "burst": burst,
        "stored_bytes": stored,
        "links": links,
    }
    return {k: v for k, v in given.items() if v is not None}


DevicesOpt = Annotated[int | None, typer.Option("--devices", help="Most devices.", min=0)]
RateOpt = Annotated[
    float | None, typer.Option("--rate", help="Messages a second, sustained.", min=0.001)
]
BurstOpt = Annotated[int | None, typer.Option("--burst", help="Messages at once.", min=1)]
StoredOpt = Annotated[
    int | None,
    typer.Option("--stored-bytes", help="Bytes of undelivered messages its keys stored.", min=0),
]
LinksOpt = Annotated[int | None, typer.Option("--links", help="Links at once.", min=0)]


def _show(result: dict[str, Any], as_json: bool, title: str | None = None) -> None:
    print_json(result) if as_json else print_record(result, title)


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="What to call it (1-100 characters).")],
    devices: DevicesOpt = None,
    rate: RateOpt = None,
    burst: BurstOpt = None,
    stored_bytes: StoredOpt = None,
    links: LinksOpt = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a tenant, with quotas if given (none: only the relay's own bounds)."""
    body = {"name": name, "quotas": _quotas(devices, rate, burst, stored_bytes, links)}
    with _client(url, key) as c:
        result = call(c.request, "POST", "/v1/tenants", json=body)
    _show(result, as_json, "tenant created")


@tenant_app.command("list")
def tenant_list(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """List tenants, deleted ones included."""
    with _client(url, key) as c:
        tenants: list[dict[str, Any]] = call(c.request, "GET", "/v1/tenants")["tenants"]
    if as_json:
        print_json(tenants)
        return
    table = data_table("id", "name", "created", "suspended", "deleted", "quotas")
    for t in tenants:
        quotas = " ".join(f"{k}={v}" for k, v in t["quotas"].items()) or "-"
        table.add_row(
            t["id"],
            escape(t["name"]),
            t["created_at"],
            str(t["suspended"]),
            t["deleted_at"] or "-",
            quotas,
        )
    out.print(table)


@tenant_app.command("show")
def tenant_show(
    tenant: TenantArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show a tenant and its quotas."""
    with _client(url, key) as c:
        _show(call(c.request, "GET", f"/v1/tenants/{tenant}"), as_json)


def _change(url: str, key: str | None, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    with _client(url, key) as c:
        result: dict[str, Any] = call(c.request, "PATCH", f"/v1/tenants/{tenant}", json=body)
    return result


@tenant_app.command("suspend")
def tenant_suspend(
    tenant: TenantArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Suspend a tenant: its keys are refused (403) until it is resumed."""
    _show(_change(url, key, tenant, {"suspended": True}), as_json, "tenant suspended")


@tenant_app.command("resume")
def tenant_resume(
    tenant: TenantArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Lift a suspension."""
    _show(_change(url, key, tenant, {"suspended": False}), as_json, "tenant resumed")


@tenant_app.command("quota")
def tenant_quota(
    tenant: TenantArg,
    devices: DevicesOpt = None,
    rate: RateOpt = None,
    burst: BurstOpt = None,
    stored_bytes: StoredOpt = None,
    links: LinksOpt = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a tenant's quotas (those not given are removed)."""
    quotas = _quotas(devices, rate, burst, stored_bytes, links)
    _show(_change(url, key, tenant, {"quotas": quotas}), as_json, "quotas set")


@tenant_app.command("delete")
def tenant_delete(
    tenant: TenantArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Delete a tenant: its keys stop working; its devices keep their PIN and data,
    tenant-less, until their owners move them."""
    with _client(url, key) as c:
        call(c.request, "DELETE", f"/v1/tenants/{tenant}")
    if as_json:
        print_json({"id": tenant, "deleted": True})
    else:
        out.print(f"deleted tenant {tenant}")


@tenant_app.command("key")
def tenant_key(
    tenant: TenantArg,
    name: Annotated[str, typer.Option(help="What the key is for.")],
    scope: Annotated[str, typer.Option(help="push, devices, broadcast or admin.")] = "push",
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a key of the tenant (shown only once)."""
    if scope not in SCOPES:
        fail(f"--scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    body = {"name": name, "scope": scope}
    with _client(url, key) as c:
        _show(call(c.request, "POST", f"/v1/tenants/{tenant}/keys", json=body), as_json, "key")


def device_grant(
    pin: PinArg,
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant to let push (or stop).")],
    token: Annotated[
        str, typer.Option("--token", envvar="PINRELAY_TOKEN", help="The device's token.")
    ],
    revoke: Annotated[bool, typer.Option("--revoke", help="Take the grant back.")] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Let another tenant push to this device, or stop it (the device's token)."""
    with relay_client(url, token) as c:
        if revoke:
            call(c.request, "DELETE", f"/v1/devices/{pin}/grants/{tenant}")
        else:
            call(c.request, "POST", f"/v1/devices/{pin}/grants", json={"tenant": tenant})
        grants: list[str] = call(c.request, "GET", f"/v1/devices/{pin}/grants")["tenants"]
    if as_json:
        print_json({"pin": pin, "grants": grants})
    else:
        out.print(f"{pin} lets these tenants push to it: {', '.join(grants) or 'none'}")


def register(app: typer.Typer, device_app: typer.Typer) -> None:
    """Add these commands to the ``pinrelay`` command."""
    app.add_typer(tenant_app, name="tenant", no_args_is_help=True)
    device_app.command("grant")(device_grant)
