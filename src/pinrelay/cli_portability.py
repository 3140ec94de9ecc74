"""``pinrelay device export|move`` and ``pinrelay tenant accept`` (PROTOCOL "Portability").

The device side uses the device's token; accepting a move uses the receiving
tenant's admin or devices key (or the relay's admin key).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pinrelay.cli_common import (
    DEFAULT_URL,
    JsonOpt,
    KeyOpt,
    PinArg,
    UrlOpt,
    admin_key,
    call,
    fail,
    out,
    print_json,
    relay_client,
)
from pinrelay.cli_tenants import TenantArg, tenant_app

if TYPE_CHECKING:
    from pinrelay.client.http import RelayClient

TokenOpt = Annotated[
    str, typer.Option("--token", envvar="PINRELAY_TOKEN", help="The device's token.")
]


def export_all(client: RelayClient, pin: str) -> dict[str, Any]:
    """The device's export with every undelivered message (the relay's pages joined)."""
    doc: dict[str, Any] = call(client.request, "GET", f"/v1/devices/{pin}/export")
    while doc["truncated"]:
        page = call(
            client.request, "GET", f"/v1/devices/{pin}/export", params={"after": doc["cursor"]}
        )
        doc["messages"] += page["messages"]
        doc["truncated"], doc["cursor"] = page["truncated"], page["cursor"]
    return doc


def device_export(
    pin: PinArg,
    token: TokenOpt,
    to: Annotated[
        Path | None, typer.Option("--out", help="Write the JSON document to this file.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Everything the relay holds about this device, undelivered messages included."""
    with relay_client(url, token) as c:
        doc = export_all(c, pin)
    if to is not None:
        try:  # 0600 when made: it holds the messages and the subscriptions' secrets
            fd = os.open(to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            fail(f"cannot write {to}: {exc.strerror}")
    if as_json:
        print_json(doc)
        return
    device = doc["device"]
    out.print(
        f"{pin}: tenant {device['tenant'] or 'none'}, {len(doc['contacts'])} contacts,"
        f" {len(doc['groups'])} groups, {len(doc['subscriptions'])} subscriptions,"
        f" {len(doc['messages'])} undelivered messages"
        + (f"; written to {to}" if to is not None else "")
    )


def device_move(
    pin: PinArg,
    token: TokenOpt,
    to: Annotated[
        str | None, typer.Option("--to", help="The tenant to move to (it must accept).")
    ] = None,
    withdraw: Annotated[
        bool, typer.Option("--withdraw", help="Withdraw the pending request.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Ask to move this device to another tenant, or withdraw the request."""
    if (to is None) == (not withdraw):
        fail("give --to TENANT, or --withdraw")
    with relay_client(url, token) as c:
        if withdraw:
            call(c.request, "DELETE", f"/v1/devices/{pin}/move")
            result: dict[str, Any] = {"pin": pin, "withdrawn": True}
        else:
            result = call(c.request, "POST", f"/v1/devices/{pin}/move", json={"tenant": to})
    if as_json:
        print_json(result)
    elif withdraw:
        out.print(f"{pin}: move request withdrawn")
    else:
        out.print(
            f"{pin} asks to move to {result['tenant']}; it must accept by"
            f" {result['expires_at']} (pinrelay tenant accept {result['tenant']} {pin})"
        )


def tenant_accept(
    tenant: TenantArg,
    pin: PinArg,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accept a device's request to move to this tenant."""
    with relay_client(url, admin_key(key)) as c:
        result = call(c.request, "POST", f"/v1/tenants/{tenant}/moves/{pin}/accept")
    if as_json:
        print_json(result)
    else:
        out.print(f"{pin} belongs to {tenant} now")


def register(device_app: typer.Typer) -> None:
    """Add these commands to ``pinrelay device`` and ``pinrelay tenant``."""
    device_app.command("export")(device_export)
    device_app.command("move")(device_move)
    tenant_app.command("accept")(tenant_accept)
