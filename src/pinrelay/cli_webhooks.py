"""``pinrelay webhook add|list|show|delete``: subscriptions to incident events over
the HTTP API (PROTOCOL "Webhooks").

The relay's admin key (``--key``, $PINRELAY_KEY, $PINRELAY_ADMIN_KEY or
./data/admin.key) subscribes to every incident; a tenant's admin key to its
tenant's.  Without ``--secret`` a random one is made and printed once: the relay
never shows it again, and the receiver needs it to check signatures.
"""

from __future__ import annotations

import secrets
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
    fail,
    out,
    print_json,
)
from pinrelay.cli_common import relay_client as client
from pinrelay.core.webhooks import KINDS, MAX_SECRET, MIN_SECRET

webhook_app = typer.Typer(help="Send incident events to outside URLs (signed webhooks).")

WebhookArg = Annotated[str, typer.Argument(metavar="WEBHOOK", help="The webhook's id (W…).")]


def _line(hook: dict[str, Any]) -> str:
    to = f" to {hook['to']}" if hook.get("to") else ""
    tenant = hook["tenant"] or "(every tenant)"
    return f"{hook['id']}  {hook['kind']}{escape(to)}  {escape(hook['url'])}  {tenant}"


@webhook_app.command("add")
def webhook_add(
    target: Annotated[str, typer.Argument(metavar="URL", help="Where to post (http or https).")],
    secret: Annotated[
        str | None,
        typer.Option(help=f"Signing secret, {MIN_SECRET}-{MAX_SECRET} characters (default: made)."),
    ] = None,
    kind: Annotated[
        str, typer.Option(help="json (the documented body), sms ({to, text}) or chat ({text}).")
    ] = "json",
    to: Annotated[str | None, typer.Option(help="The SMS recipient (kind sms).")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Subscribe a URL to incident events (opened, updated, resolved)."""
    if kind not in KINDS:
        fail(f"--kind is one of {', '.join(KINDS)}, not {kind!r}")
    made_secret = secret is None
    body: dict[str, Any] = {
        "url": target,
        "secret": secret or secrets.token_urlsafe(32),
        "events": ["incident"],
        "kind": kind,
    }
    if to is not None:
        body["to"] = to
    with client(url, admin_key(key)) as c:
        made = call(c.request, "POST", "/v1/webhooks", json=body)
    if made_secret:
        made = {**made, "secret": body["secret"]}
    if as_json:
        print_json(made)
        return
    out.print("webhook added")
    out.print(_line(made))
    if made_secret:
        out.print(f"secret (shown once): {made['secret']}")


@webhook_app.command("list")
def webhook_list(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """The webhooks the key's tenant holds (the relay's admin key: all)."""
    with client(url, admin_key(key)) as c:
        found: list[dict[str, Any]] = call(c.request, "GET", "/v1/webhooks")["webhooks"]
    if as_json:
        print_json(found)
        return
    for hook in found:
        out.print(_line(hook))
    if not found:
        out.print("no webhooks")


@webhook_app.command("show")
def webhook_show(
    webhook: WebhookArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """One webhook (never its secret)."""
    with client(url, admin_key(key)) as c:
        found = call(c.request, "GET", f"/v1/webhooks/{webhook}")
    if as_json:
        print_json(found)
    else:
        out.print(_line(found))


@webhook_app.command("delete")
def webhook_delete(
    webhook: WebhookArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Delete a webhook and its undelivered notifications."""
    with client(url, admin_key(key)) as c:
        call(c.request, "DELETE", f"/v1/webhooks/{webhook}")
    if as_json:
        print_json({"id": webhook, "deleted": True})
    else:
        out.print(f"webhook {webhook} deleted")


def register(app: typer.Typer) -> None:
    """Add these commands to the ``pinrelay`` command."""
    app.add_typer(webhook_app, name="webhook", no_args_is_help=True)
