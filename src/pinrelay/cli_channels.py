"""``pinrelay channel …``, ``pinrelay audit`` and the device's ``pinrelay device
channels|join|leave|refuse``: channels and broadcasts over the HTTP API.

A tenant's key (scope ``broadcast`` or ``admin``; ``--key`` or $PINRELAY_KEY)
publishes channels and broadcasts; a device joins, leaves and refuses with its
own token; the audit log takes an admin key (PROTOCOL "Channels and broadcasts").
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

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
    err,
    fail,
    out,
    print_json,
    print_record,
)
from pinrelay.cli_common import relay_client as client

channel_app = typer.Typer(help="Publish channels and broadcast to their members (a tenant's key).")

ChannelArg = Annotated[str, typer.Argument(metavar="CHANNEL", help="The channel's id (C…).")]
TokenOpt = Annotated[
    str, typer.Option("--token", envvar="PINRELAY_TOKEN", help="The device's token.")
]
CLASSES = ("service", "marketing")


def _show(result: dict[str, Any], as_json: bool, title: str | None = None) -> None:
    print_json(result) if as_json else print_record(result, title)


@channel_app.command("create")
def channel_create(
    name: Annotated[str, typer.Argument(help="What devices see it as (1-100 characters).")],
    klass: Annotated[
        str, typer.Option("--class", help="service (what devices signed up for) or marketing.")
    ] = "service",
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a channel; devices join it themselves."""
    if klass not in CLASSES:
        fail(f"--class must be service or marketing, not {klass!r}")
    with client(url, admin_key(key)) as c:
        made = call(c.request, "POST", "/v1/channels", json={"name": name, "class": klass})
    _show(made, as_json, "channel created")


@channel_app.command("list")
def channel_list(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """The tenant's channels (the relay's admin key: every tenant's)."""
    with client(url, admin_key(key)) as c:
        channels: list[dict[str, Any]] = call(c.request, "GET", "/v1/channels")["channels"]
    if as_json:
        print_json(channels)
        return
    table = data_table("id", "name", "class", "tenant", "created")
    for ch in channels:
        table.add_row(ch["id"], escape(ch["name"]), ch["class"], ch["tenant"], ch["created_at"])
    out.print(table)


@channel_app.command("delete")
def channel_delete(
    channel: ChannelArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Delete a channel: its members are forgotten."""
    with client(url, admin_key(key)) as c:
        call(c.request, "DELETE", f"/v1/channels/{channel}")
    if as_json:
        print_json({"id": channel, "deleted": True})
    else:
        out.print(f"deleted channel {channel}")


@channel_app.command("send")
def channel_send(
    channel: ChannelArg,
    data: Annotated[str, typer.Argument(help="The message: JSON, or text sent as a string.")],
    ttl: Annotated[int, typer.Option(help="Seconds it waits for each member.", min=1)] = 86400,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait until every member was reached.")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Broadcast to the channel's members (those that joined, consenting)."""
    try:
        value = json.loads(data)
    except ValueError:
        value = data
    with client(url, admin_key(key)) as c:
        body = {"data": value, "ttl": ttl}
        result = call(c.request, "POST", f"/v1/channels/{channel}/messages", json=body)
        if wait:
            result = _wait_done(c, result["id"])
    _show(result, as_json, "broadcast")


def _wait_done(c: Any, broadcast: str) -> dict[str, Any]:
    from rich.progress import Progress

    # On stderr: stdout holds only the result (a JSON document with --json).
    with Progress(transient=True, console=err) as bar:
        task = bar.add_task("fanning out", total=None)
        while True:
            view: dict[str, Any] = call(c.request, "GET", f"/v1/broadcasts/{broadcast}")
            bar.update(task, completed=view["members"], description=f"{view['members']} members")
            if view["done_at"] is not None:
                return view
            time.sleep(0.25)


@channel_app.command("status")
def channel_status(
    broadcast: Annotated[str, typer.Argument(help="The broadcast's id.")],
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A broadcast's fan-out: members reached, stored, skipped, delivered, acked."""
    with client(url, admin_key(key)) as c:
        _show(call(c.request, "GET", f"/v1/broadcasts/{broadcast}"), as_json)


def audit(
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="The relay's admin key: only this tenant.")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most lines.", min=1, max=1000)] = 100,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The audit log, newest first: broadcasts and channels made or deleted (an admin key)."""
    params: dict[str, Any] = {"limit": limit}
    if tenant:
        params["tenant"] = tenant
    with client(url, admin_key(key)) as c:
        lines: list[dict[str, Any]] = call(c.request, "GET", "/v1/audit", params=params)["entries"]
    if as_json:
        print_json(lines)
        return
    table = data_table("at", "tenant", "key", "action", "channel", "broadcast", "stored")
    for x in lines:
        stored = "-" if x.get("stored") is None else f"{x['stored']}{'' if x['done'] else '…'}"
        table.add_row(
            x["at"],
            x["tenant"],
            x["key"],
            x["action"],
            x["channel"],
            x.get("broadcast") or "-",
            stored,
        )
    out.print(table)


# --- the device's side ----------------------------------------------------------------
def _device_channels(c: Any, pin: str) -> dict[str, Any]:
    result: dict[str, Any] = call(c.request, "GET", f"/v1/devices/{pin}/channels")
    return result


def _print_device(pin: str, result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json({"pin": pin, **result})
        return
    joined = [f"{ch['id']} ({escape(ch['name'])})" for ch in result["channels"] if ch["joined"]]
    out.print(f"{pin} is a member of: {', '.join(joined) or 'no channel'}")
    out.print(f"{pin} refuses: {', '.join(result['refused']) or 'no class'}")


def device_channels(
    pin: PinArg, token: TokenOpt, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False
) -> None:
    """The channels of the device's tenant, which it joined, and the classes it refuses."""
    with client(url, token) as c:
        result = _device_channels(c, pin)
    if as_json:
        print_json({"pin": pin, **result})
        return
    table = data_table("id", "name", "class", "joined")
    for ch in result["channels"]:
        table.add_row(ch["id"], escape(ch["name"]), ch["class"], "yes" if ch["joined"] else "no")
    out.print(table)
    out.print(f"refuses: {', '.join(result['refused']) or 'no class'}")


def device_join(
    pin: PinArg,
    channel: ChannelArg,
    token: TokenOpt,
    leave: Annotated[bool, typer.Option("--leave", help="Leave the channel instead.")] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Join a channel of the device's tenant (or leave it), with the device's token."""
    with client(url, token) as c:
        if leave:
            call(c.request, "DELETE", f"/v1/devices/{pin}/channels/{channel}")
        else:
            call(c.request, "POST", f"/v1/devices/{pin}/channels/{channel}")
        result = _device_channels(c, pin)
    _print_device(pin, result, as_json)


def device_refuse(
    pin: PinArg,
    klass: Annotated[str, typer.Argument(metavar="CLASS", help="service or marketing.")],
    token: TokenOpt,
    allow: Annotated[bool, typer.Option("--allow", help="Take the refusal back.")] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Refuse every broadcast of a class (or take that back), with the device's token."""
    if klass not in CLASSES:
        fail(f"CLASS must be service or marketing, not {klass!r}")
    with client(url, token) as c:
        call(c.request, "DELETE" if allow else "PUT", f"/v1/devices/{pin}/refusals/{klass}")
        result = _device_channels(c, pin)
    _print_device(pin, result, as_json)


def register(app: typer.Typer, device_app: typer.Typer) -> None:
    """Add these commands to the ``pinrelay`` command."""
    app.add_typer(channel_app, name="channel", no_args_is_help=True)
    app.command("audit")(audit)
    device_app.command("channels")(device_channels)
    device_app.command("join")(device_join)
    device_app.command("refuse")(device_refuse)
