"""``pinrelay send``, ``contacts …``, ``group …`` and ``chat``: messaging as a device.

Each command acts as one device, named by ``--pin`` and ``--token`` (or
PINRELAY_PIN and PINRELAY_TOKEN), over the device's own HTTP routes
(client/contacts.py); ``send --wait`` and ``chat`` also hold the device's link (the
SDK's Device) and say what it does, as ``listen`` does.  Thin over client/ and tui/.
"""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from pinrelay.cli_common import (
    DEFAULT_URL,
    JsonOpt,
    UrlOpt,
    call,
    data_table,
    err,
    fail,
    link_reporter,
    out,
    pin_arg,
    print_json,
    print_record,
)
from pinrelay.core.chat import MAX_TEXT, is_group_id
from pinrelay.core.ids import is_pin

if TYPE_CHECKING:  # imported by the commands that use them (cli_common.py says why)
    import msgspec

    from pinrelay.client.contacts import ContactAnswer, DeviceClient, Group
    from pinrelay.client.device import Listening, Message

contacts_app = typer.Typer(help="Invite, accept, block and list this device's contacts.")
group_app = typer.Typer(help="Create groups of contacts, add and remove members, leave.")

PinOpt = Annotated[
    str,
    typer.Option("--pin", envvar="PINRELAY_PIN", help="This device's PIN.", callback=pin_arg),
]
TokenOpt = Annotated[
    str, typer.Option("--token", envvar="PINRELAY_TOKEN", help="This device's token.")
]


def peer_arg(value: str) -> str:
    """A PIN or a group id as typed: any case, spaces around it ignored."""
    peer = value.strip().upper()
    if not (is_pin(peer) or is_group_id(peer)):
        fail(
            f"{value!r} is neither a PIN (8 hexadecimal digits) nor a group id"
            " (G and 12 letters or digits)"
        )
    return peer


def group_arg(value: str) -> str:
    group = value.strip().upper()
    if not is_group_id(group):
        fail(f"{value!r} is not a group id: G and 12 letters or digits, e.g. G7K2M9QX4B1CD")
    return group


PeerArg = Annotated[
    str,
    typer.Argument(
        metavar="TO", help="A contact's PIN, or a group id.", callback=peer_arg, show_default=False
    ),
]
OtherArg = Annotated[
    str,
    typer.Argument(
        metavar="PIN", help="The other device's PIN (8 hex digits, any case).", callback=pin_arg
    ),
]
GroupArg = Annotated[
    str, typer.Argument(metavar="GROUP", help="The group's id.", callback=group_arg)
]


def _pins(values: list[str]) -> list[str]:
    return [p for p in (pin_arg(v) for v in values) if p is not None]


PinsArg = Annotated[
    list[str],
    typer.Argument(metavar="PIN...", help="Contacts' PINs.", callback=_pins),
]


def _device(url: str, pin: str, token: str) -> DeviceClient:
    from pinrelay.client.contacts import DeviceClient

    return DeviceClient(url, pin, token)


def _as_dict(value: msgspec.Struct) -> dict[str, Any]:
    import msgspec

    result: dict[str, Any] = msgspec.to_builtins(value)
    return result


# --- send -----------------------------------------------------------------------
WAITS = ("sent", "delivered", "read")


def send(
    to: PeerArg,
    text: Annotated[str, typer.Argument(help="The message.", show_default=False)],
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    wait: Annotated[
        str,
        typer.Option(
            help="sent: until the relay stored it; delivered or read: also until that "
            "receipt comes, over the device's link."
        ),
    ] = "sent",
    ttl: Annotated[
        int | None,
        typer.Option(
            help="Seconds to keep it undelivered (default: the relay's, a week).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="With --wait delivered|read: give up after this many seconds "
            "(default: wait until Ctrl-C).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a chat message to a contact or a group; prints its id once it is stored.

    With --wait delivered or read, the command then links as the device and waits
    for that receipt, saying so on stderr.  While it holds the link it is the
    device: what arrives meanwhile is acknowledged and shown on stderr, and
    another link of the same device (a `listen` or a `chat`) is replaced.
    """
    if wait not in WAITS:
        fail(f"--wait must be sent, delivered or read, not {wait!r}")
    if not text:
        fail(f"the text is empty: a chat message is 1 to {MAX_TEXT} bytes of UTF-8")
    with _device(url, pin, token) as c:
        sent = call(c.send, to, text, ttl=ttl)
    if wait == "sent":
        result = {"id": sent.id, "to": sent.to, "state": "sent"}
        print_json(result) if as_json else out.print(sent.id, highlight=False)
        return
    if not as_json:
        out.print(sent.id, highlight=False)
        sys.stdout.flush()
    state = _wait_for_receipt(pin, token, url, sent.id, to, wait, timeout, as_json)
    if as_json:
        print_json({"id": sent.id, "to": to, "state": state["state"], "by": state["by"]})
    else:
        err.print(f"{state['state']} by {state['by']}", highlight=False)


def _wait_for_receipt(
    pin: str,
    token: str,
    url: str,
    message_id: str,
    to: str,
    wait: str,
    timeout: float | None,
    as_json: bool,
) -> dict[str, Any]:
    """Link as the device until ``message_id`` has a ``wait`` receipt (or further)."""
    import asyncio

    from pinrelay.client.chat import RANK
    from pinrelay.client.device import Device, LinkRefused

    found: dict[str, Any] = {}
    #: The furthest receipt so far: what --json prints if the wait ends without one.
    reached: dict[str, Any] = {"id": message_id, "to": to, "state": "sent", "by": None}
    done = asyncio.Event()
    whom = f"group {to}" if is_group_id(to) else to
    verb = "to receive" if wait == "delivered" else "to read"

    def linked(_event: Listening) -> str:
        return f"sent {message_id}; waiting for {whom} {verb} it… (Ctrl-C to stop)"

    report = link_reporter(pin, as_json, linked)

    def on_receipt(receipt_id: str, state: str, by: str | None) -> None:
        if receipt_id == message_id and state in RANK and not found:
            if state == "failed" or RANK[state] >= RANK[wait]:
                found.update(state=state, by=by)
                done.set()
            elif as_json:
                print_json_err({"event": "receipt", "id": receipt_id, "state": state, "by": by})
            else:
                err.print(f"{state} by {by}; waiting for it to be read…", highlight=False)
            if RANK[state] > RANK[reached["state"]]:
                reached.update(state=state, by=by)
            return
        if receipt_id != message_id:
            _show_meanwhile(as_json, {"kind": "receipt", "id": receipt_id, "state": state})

    def on_message(m: Message) -> None:
        data = m.data.get("text", m.data) if isinstance(m.data, dict) else m.data
        _show_meanwhile(
            as_json,
            {"kind": m.kind, "id": m.id, "cursor": m.cursor, "from": m.sender, "data": data},
        )

    async def main() -> None:
        device = Device(pin, token, on_message, url=url, on_event=report, on_receipt=on_receipt)
        runner = asyncio.create_task(device.run())
        waiter = asyncio.create_task(done.wait())
        try:
            finished, _ = await asyncio.wait(
                {runner, waiter}, timeout=timeout, return_when="FIRST_COMPLETED"
            )
            timed_out.append(not finished)
        finally:
            await device.stop()
            waiter.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(runner), 1.0)
            if runner.done():
                runner.result()
            else:
                runner.cancel()

    def give_up(message: str, code: int = 1) -> NoReturn:
        if as_json:  # a script still gets the id, and how far the message got
            print_json(reached)
        fail(message, code)

    timed_out: list[bool] = []
    try:
        asyncio.run(main())
    except LinkRefused as exc:
        give_up(f"the relay refused the link: {exc} (the message is stored: {message_id})")
    except KeyboardInterrupt:
        give_up(f"stopped before the {wait} receipt (the message is stored: {message_id})", 130)
    if not found:
        stored = f"(the message is stored: {message_id})"
        if timed_out and timed_out[0]:
            give_up(f"no {wait} receipt within {timeout:g} s {stored}")
        give_up(
            f"the link ended before the {wait} receipt: another link of {pin} took over {stored}"
        )
    if found["state"] == "failed":
        reached.update(found)
        give_up(f"message {message_id} failed: it expired undelivered")
    return found


def _show_meanwhile(as_json: bool, record: dict[str, Any]) -> None:
    """Something the link handed over (and the SDK acknowledged) while waiting."""
    if as_json:
        print_json_err({"event": "received", **record})
        return
    who = f" from {record['from']}" if record.get("from") else ""
    if record["kind"] == "receipt":
        what = f"{record['state']} for {record['id']}"
    else:
        data = record.get("data")
        what = data if isinstance(data, str) else json.dumps(data)
    err.print(
        f"[dim]received while waiting (acknowledged): {record['kind']}{who}: {what}[/]",
        highlight=False,
        soft_wrap=True,
    )


def print_json_err(value: dict[str, Any]) -> None:
    sys.stderr.write(json.dumps(value) + "\n")
    sys.stderr.flush()


# --- contacts -------------------------------------------------------------------
_STATE_STYLE = {
    "accepted": "green",
    "invited": "yellow",
    "pending": "cyan",
    "blocked": "red",
}
_NEXT = {
    "invited": "(waiting for them)",
    "pending": "pinrelay contacts accept {pin}",
    "accepted": "pinrelay chat {pin}",
    "blocked": "pinrelay contacts unblock {pin}",
}


def _since(value: str) -> str:
    """An RFC 3339 UTC time as local 'YYYY-MM-DD HH:MM' (the table fits 80 columns)."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return when.astimezone().strftime("%Y-%m-%d %H:%M")


@contacts_app.command("list")
def contacts_list(
    pin: PinOpt, token: TokenOpt, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False
) -> None:
    """This device's contacts and invitations, with their states."""
    with _device(url, pin, token) as c:
        contacts = call(c.contacts)
    if as_json:
        print_json([_as_dict(x) for x in contacts])
        return
    if not contacts:
        out.print("no contacts yet: invite one with `pinrelay contacts invite PIN`")
        return
    table = data_table("pin", "state", "since", "next")
    for x in contacts:
        color = _STATE_STYLE.get(x.state, "")
        hint = _NEXT.get(x.state, "").format(pin=x.pin)
        table.add_row(x.pin, f"[{color}]{x.state}[/]", _since(x.since), hint)
    out.print(table)


def _answered(answer: ContactAnswer, as_json: bool, said: str) -> None:
    print_json(_as_dict(answer)) if as_json else out.print(said, highlight=False)


@contacts_app.command("invite")
def contacts_invite(
    other: OtherArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Invite a PIN to be a contact; it is told, and accepts with `contacts accept`.

    The answer is the same whether a device has that PIN or not."""
    with _device(url, pin, token) as c:
        answer = call(c.invite, other)
    if answer.state == "accepted":
        said = f"{other} is a contact now"
    else:
        said = f"invited {other}: they accept with `pinrelay contacts accept {pin}`"
    _answered(answer, as_json, said)


@contacts_app.command("accept")
def contacts_accept(
    other: OtherArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Accept a PIN's invitation: you can message each other."""
    with _device(url, pin, token) as c:
        answer = call(c.accept, other)
    _answered(answer, as_json, f"{other} is a contact now")


@contacts_app.command("decline")
def contacts_decline(
    other: OtherArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Decline a PIN's invitation (they are not told)."""
    with _device(url, pin, token) as c:
        answer = call(c.decline, other)
    _answered(answer, as_json, f"declined {other}'s invitation")


@contacts_app.command("block")
def contacts_block(
    other: OtherArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Block a PIN: it can neither message nor invite this device (it is not told)."""
    with _device(url, pin, token) as c:
        answer = call(c.block, other)
    _answered(answer, as_json, f"blocked {other}")


@contacts_app.command("unblock")
def contacts_unblock(
    other: OtherArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Unblock a PIN (it is no contact afterwards: invite it again)."""
    with _device(url, pin, token) as c:
        call(c.unblock, other)
    print_json({"pin": other, "unblocked": True}) if as_json else out.print(f"unblocked {other}")


@contacts_app.command("remove")
def contacts_remove(
    other: OtherArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Remove a contact (or withdraw an invitation): neither can message the other."""
    with _device(url, pin, token) as c:
        call(c.remove, other)
    print_json({"pin": other, "removed": True}) if as_json else out.print(f"removed {other}")


# --- groups ---------------------------------------------------------------------
def _show_group(group: Group, as_json: bool, title: str) -> None:
    if as_json:
        print_json(_as_dict(group))
        return
    record = _as_dict(group)
    ignored = record.pop("ignored")
    record["members"] = " ".join(group.members)
    print_record(record, title)
    if ignored:
        out.print(f"left out (not your contacts): {' '.join(ignored)}", highlight=False)


@group_app.command("create")
def group_create(
    name: Annotated[str, typer.Argument(help="The group's name.")],
    members: PinsArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a group of your contacts; prints its id (send to it as to a PIN)."""
    if not name:
        fail("the group's name is empty")
    with _device(url, pin, token) as c:
        group = call(c.create_group, name, members)
    _show_group(group, as_json, "group created")


@group_app.command("add")
def group_add(
    group: GroupArg,
    members: PinsArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Add contacts to a group you created."""
    with _device(url, pin, token) as c:
        # The answer lists who is in the group and who was left out, not who was
        # added: a member already in it is neither.
        before = next((g.members for g in call(c.groups) if g.group == group), [])
        result = call(c.add_members, group, members)
    added = [m for m in result.members if m not in before]
    _show_group(result, as_json, "members added" if added else "no member added")


@group_app.command("remove")
def group_remove(
    group: GroupArg,
    member: OtherArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Remove a member from a group you created."""
    with _device(url, pin, token) as c:
        call(c.remove_member, group, member)
    result = {"group": group, "pin": member, "removed": True}
    print_json(result) if as_json else out.print(f"removed {member} from {group}")


@group_app.command("leave")
def group_leave(
    group: GroupArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Leave a group: its messages stop coming."""
    with _device(url, pin, token) as c:
        call(c.leave, group)
    print_json({"group": group, "left": True}) if as_json else out.print(f"left {group}")


@group_app.command("list")
def group_list(
    pin: PinOpt, token: TokenOpt, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False
) -> None:
    """The groups this device created or belongs to."""
    with _device(url, pin, token) as c:
        groups = call(c.groups)
    if as_json:
        # "ignored" belongs to a create's or an add's answer, not to a list.
        print_json([{k: v for k, v in _as_dict(g).items() if k != "ignored"} for g in groups])
        return
    if not groups:
        out.print("no groups: create one with `pinrelay group create NAME PIN...`")
        return
    table = data_table("group", "name", "creator", "members")
    for g in groups:
        table.add_row(g.group, escape(g.name), g.creator, " ".join(g.members))
    out.print(table)


# --- chat -----------------------------------------------------------------------
def chat(
    peer: PeerArg,
    pin: PinOpt,
    token: TokenOpt,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Chat with a contact or a group in the terminal.

    Your messages show ✓ once stored, D once delivered, R once read, ✗ if refused
    or expired undelivered; the bar shows the link (connecting, retrying, linked).
    Incoming messages of the chat are marked read as they show; everything else the
    device receives meanwhile shows once as a note, and is acknowledged like the
    rest (the relay will not hand it over again: not to a later `chat` either).
    Enter sends, Ctrl-D quits; the conversation is printed when you quit (--json:
    as JSON).  It holds the device's link: another link of the same device (a
    `listen`) is replaced.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        fail("pinrelay chat needs a terminal; in scripts use `pinrelay send` and `listen`")
    import asyncio

    from pinrelay.client.device import LinkRefused
    from pinrelay.tui.app import ChatSession  # prompt_toolkit: only for this command

    session = ChatSession(pin, token, peer, url=url)
    try:
        asyncio.run(session.run())
    except LinkRefused as exc:
        fail(f"the relay refused the link: {exc}")
    except KeyboardInterrupt:
        pass
    if as_json:
        print_json(session.view.records())
    else:
        for line in session.view.text_lines():
            out.print(line, highlight=False, markup=False, soft_wrap=True)
    if session.link_ended:
        fail("the link ended: another link of this device took over")


def register(app: typer.Typer) -> None:
    """Add these commands to the ``pinrelay`` command."""
    app.command("send")(send)
    app.command("chat")(chat)
    app.add_typer(contacts_app, name="contacts", no_args_is_help=True)
    app.add_typer(group_app, name="group", no_args_is_help=True)
