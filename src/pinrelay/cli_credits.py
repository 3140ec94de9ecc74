"""``pinrelay credits``, ``pinrelay incident make-good`` and ``pinrelay code redeem``
over the HTTP API (PROTOCOL "Service credits" and "Making good").

``credits`` shows each tenant's measured availability and the credit it is owed
for a month (the relay's admin key: every tenant with a service level; a tenant's
admin key: its own).  ``incident make-good`` (the relay's admin key) sends a
tenant's devices a make-good message with a code each; asked again it shows how
far that one got.  ``code redeem`` (the code's tenant's admin key) redeems a code
once.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from pinrelay.cli_common import (
    DEFAULT_URL,
    JsonOpt,
    KeyOpt,
    UrlOpt,
    admin_key,
    call,
    data_table,
    fail,
    out,
    print_json,
)
from pinrelay.cli_common import relay_client as client
from pinrelay.cli_incidents import IncidentArg, incident_app
from pinrelay.cli_tenants import TenantArg, tenant_app

code_app = typer.Typer(help="Redeem make-good codes.")


def credits(
    month: Annotated[
        str | None, typer.Option(help="The UTC month, YYYY-MM; default: this one, so far.")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Each tenant's measured availability and the credit it is owed for a month."""
    params = {"month": month} if month else {}
    with client(url, admin_key(key)) as c:
        body: dict[str, Any] = call(c.request, "GET", "/v1/credits", params=params)
    owed = [x for x in body["credits"] if tenant is None or x["tenant"] == tenant]
    if as_json:
        print_json({"month": body["month"], "credits": owed})
        return
    table = data_table(
        "tenant", "availability", "down (min)", "delay ok", "credit", "amount", title=body["month"]
    )
    for x in owed:
        within = "-" if x["delivered_within"] is None else f"{x['delivered_within']:.3f} %"
        table.add_row(
            x["tenant"],
            f"{x['availability']:.4f} %",
            f"{x['downtime_minutes']:.1f}",
            within,
            f"{x['credit_percent']:g} %",
            f"{x['amount']} {x['currency']} (minor units)",
        )
    out.print(table)


@incident_app.command("make-good")
def make_good(
    incident: IncidentArg,
    tenant: Annotated[str, typer.Option(help="The tenant whose devices are made good.")],
    text: Annotated[str, typer.Option(help="The apology and offer, in words.")],
    code_prefix: Annotated[
        str | None, typer.Option(help="Codes start with this (A-Z, 0-9, up to 12) and '-'.")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Send each of a tenant's devices a make-good message with a code of its own
    (once per device; asked again: how far it got)."""
    body: dict[str, Any] = {"tenant": tenant, "text": text}
    if code_prefix:
        body["code_prefix"] = code_prefix
    with client(url, admin_key(key)) as c:
        view = call(c.request, "POST", f"/v1/incidents/{incident}/make-good", json=body)
    if as_json:
        print_json(view)
        return
    state = "done" if view["done"] else "under way"
    out.print(f"make-good {view['id']} of {view['incident']} for {view['tenant']}: {state}")
    out.print(
        f"  {view['devices']} devices: {view['stored']} sent a code,"
        f" {view['skipped']} refuse marketing"
    )
    out.print(f"  {escape(view['text'])}")


def _row(text: str) -> list[float]:
    """A credit row from ``BELOW:PERCENT``."""
    below, _, percent = text.partition(":")
    try:
        return [float(below), float(percent)]
    except ValueError:
        fail(f"--credit is BELOW:PERCENT, e.g. 99.9:10, not {text!r}")


@tenant_app.command("service-level")
def service_level(
    tenant: TenantArg,
    availability: Annotated[
        float | None, typer.Option(help="Monthly availability promised, percent; sets it.")
    ] = None,
    fee: Annotated[int | None, typer.Option(help="Monthly fee, in minor units (cents).")] = None,
    currency: Annotated[str, typer.Option(help="ISO 4217 code, e.g. EUR.")] = "EUR",
    credit: Annotated[
        list[str] | None,
        typer.Option("--credit", help="A row BELOW:PERCENT, e.g. 99.9:10 (repeat)."),
    ] = None,
    delay_ms: Annotated[
        int | None, typer.Option(help="Delay target: delivered within this many ms ...")
    ] = None,
    delay_percent: Annotated[float, typer.Option(help="... for this percent of messages.")] = 99.0,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a tenant's service level, or set it (with --availability, --fee and
    --credit rows)."""
    path = f"/v1/tenants/{tenant}/service-level"
    with client(url, admin_key(key)) as c:
        if availability is None:
            level = call(c.request, "GET", path)
        else:
            if fee is None or not credit:
                fail("setting a service level takes --fee and at least one --credit")
            body: dict[str, Any] = {
                "availability": availability,
                "fee": fee,
                "currency": currency,
                "credits": [_row(r) for r in credit],
            }
            if delay_ms is not None:
                body["delay"] = {"delay_ms": delay_ms, "percent": delay_percent}
            level = call(c.request, "PUT", path, json=body)
    if as_json:
        print_json(level)
        return
    out.print(
        f"{tenant}: {level['availability']:g} % a month, fee {level['fee']} {level['currency']}"
        " (minor units)"
    )
    if level.get("delay"):
        d = level["delay"]
        out.print(f"  delay: {d['percent']:g} % within {d['delay_ms']} ms")
    for below, percent in level["credits"]:
        out.print(f"  below {below:g} %: {percent:g} % of the fee")


@code_app.command("redeem")
def redeem(
    code: Annotated[str, typer.Argument(help="The code a device received.")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Redeem a make-good code (once: a second time is an error)."""
    with client(url, admin_key(key)) as c:
        view = call(c.request, "POST", f"/v1/codes/{code}/redeem")
    if as_json:
        print_json(view)
        return
    out.print(
        f"redeemed {view['code']}: device {view['pin']} of {view['tenant']},"
        f" incident {view['incident']}, at {view['redeemed_at']}"
    )


def register(app: typer.Typer) -> None:
    """Add these commands to the ``pinrelay`` command (``incident make-good`` joins
    ``pinrelay incident`` when this module is imported)."""
    app.command("credits")(credits)
    app.add_typer(code_app, name="code", no_args_is_help=True)
