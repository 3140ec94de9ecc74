"""``pinrelay subscribe`` and ``pinrelay webpush …``: Web Push from the command line
(PROTOCOL "Web Push"; docs/WEBPUSH.md).

``subscribe`` acts as a device (``--pin``/``--token``): it makes a subscription's keys,
registers it and prints the subscription as a browser's ``PushSubscription.toJSON()``,
which any Web Push sender takes.  The private keys go to a key file (``--keys``,
default :func:`default_keys_file`), where ``pinrelay listen`` finds them to decrypt.

``webpush send`` is a tiny application server built on pywebpush, the library real
ones use: it encrypts, signs with VAPID if given a key, and posts to the endpoint.
``webpush vapid`` makes such a key.  Thin over client/ and pywebpush.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pinrelay.cli_common import (
    DEFAULT_URL,
    JsonOpt,
    UrlOpt,
    call,
    data_table,
    err,
    fail,
    out,
    pin_arg,
    print_json,
)

if TYPE_CHECKING:  # imported by the commands that use them (cli_common.py says why)
    import requests  # pywebpush pulls in requests and aiohttp: imported when sending
    from py_vapid import Vapid

    from pinrelay.client.keys import FileKeyStore
    from pinrelay.client.webpush import WebPushMessage

webpush_app = typer.Typer(help="Web Push: send to an endpoint, list and delete subscriptions.")

PinOpt = Annotated[
    str,
    typer.Option("--pin", envvar="PINRELAY_PIN", help="This device's PIN.", callback=pin_arg),
]
TokenOpt = Annotated[
    str, typer.Option("--token", envvar="PINRELAY_TOKEN", help="This device's token.")
]


def default_keys_file() -> Path:
    """Where the CLI keeps subscription keys unless told: $PINRELAY_WEBPUSH_KEYS, else
    ``$XDG_CONFIG_HOME/pinrelay/webpush-keys.json`` (``~/.config/...``)."""
    env = os.environ.get("PINRELAY_WEBPUSH_KEYS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pinrelay" / "webpush-keys.json"


KeysFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--keys",
        help="The file of subscription keys (private: mode 0600). "
        "Default: $PINRELAY_WEBPUSH_KEYS, else ~/.config/pinrelay/webpush-keys.json.",
        show_default=False,
    ),
]


def key_store(path: Path | None) -> FileKeyStore:
    """The key file at ``path`` (or the default one); one readable line if it is not one."""
    from pinrelay.client.keys import FileKeyStore

    try:
        return FileKeyStore(path or default_keys_file())
    except (OSError, ValueError) as exc:
        fail(f"cannot use the key file: {exc}")


# --- subscribe --------------------------------------------------------------------
def subscribe(
    pin: PinOpt,
    token: TokenOpt,
    vapid_key: Annotated[
        str | None,
        typer.Option(
            "--vapid-key",
            help="An application server's VAPID public key (base64url, the "
            "applicationServerKey): only pushes signed with it are accepted.",
            show_default=False,
        ),
    ] = None,
    keys_file: KeysFileOpt = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a Web Push subscription; print it as a sender takes it (toJSON).

    Stdout is the subscription's JSON, pasteable into any Web Push sender; its
    private keys go to the key file, where `pinrelay listen` finds them.  With
    --json: every field the relay answered (id, applicationServerKey, created_at too).
    """
    from pinrelay.client.contacts import DeviceClient
    from pinrelay.client.http import ApiError
    from pinrelay.client.keys import SubscriptionKeys
    from pinrelay.client.webpush import SubscriptionRoutes, checked

    store = key_store(keys_file)
    keys = SubscriptionKeys.generate()
    routes = SubscriptionRoutes(pin)
    with DeviceClient(url, pin, token) as client:
        sub = call(client.run, routes.create(keys.public(), vapid_key))
        call(checked, sub, keys)
        try:
            store.save(sub.id, keys)
        except OSError as exc:
            # Nobody could read what is pushed to it: take it back (as the SDK does).
            with contextlib.suppress(ApiError):
                client.run(routes.delete(sub.id))
            fail(f"cannot save the keys in {store.path}: {exc}; the subscription was deleted")
    print_json(sub.to_dict() if as_json else sub.to_json())
    if not as_json:
        err.print(f"subscription {sub.id}; keys in {store.path}", highlight=False, soft_wrap=True)


# --- webpush list / delete --------------------------------------------------------
@webpush_app.command("list")
def webpush_list(
    pin: PinOpt,
    token: TokenOpt,
    keys_file: KeysFileOpt = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """List this device's subscriptions, and whether the key file can open their pushes."""
    from rich.table import Column

    from pinrelay.client.contacts import DeviceClient
    from pinrelay.client.webpush import SubscriptionRoutes

    with DeviceClient(url, pin, token) as client:
        subs = call(client.run, SubscriptionRoutes(pin).list())
    held = set(key_store(keys_file).ids())
    if as_json:
        print_json([{**s.to_dict(), "keys_here": s.id in held} for s in subs])
        return
    if not subs:
        out.print("no subscriptions")
        return
    # Ids whole whatever the width (they are what delete takes); endpoints fold.
    table = data_table("id", "vapid", "keys here", Column("created", no_wrap=True), "endpoint")
    for s in subs:
        vapid = "yes" if s.application_server_key else "-"
        created = (s.created_at or "")[:19].replace("T", " ")
        table.add_row(s.id, vapid, "yes" if s.id in held else "no", created, s.endpoint)
    out.print(table)


@webpush_app.command("delete")
def webpush_delete(
    subscription: Annotated[str, typer.Argument(metavar="ID", help="The subscription's id.")],
    pin: PinOpt,
    token: TokenOpt,
    keys_file: KeysFileOpt = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Delete a subscription (pushes to it then get 410 Gone) and forget its keys."""
    from pinrelay.client.contacts import DeviceClient
    from pinrelay.client.http import ApiError
    from pinrelay.client.webpush import SubscriptionRoutes

    store = key_store(keys_file)
    with DeviceClient(url, pin, token) as client:
        try:
            client.run(SubscriptionRoutes(pin).delete(subscription))
        except ApiError as exc:
            if exc.status == 404:  # gone at the relay already: its keys are of no use
                store.forget(subscription)
            call(_raise, exc)
    store.forget(subscription)
    if as_json:
        print_json({"id": subscription, "deleted": True})
    else:
        out.print(f"deleted {subscription}; its keys are forgotten", highlight=False)


def _raise(exc: Exception) -> None:
    raise exc


# --- webpush vapid ----------------------------------------------------------------
def application_server_key(vapid: Vapid) -> str:
    """A VAPID key's public half as browsers' ``applicationServerKey`` (base64url)."""
    from cryptography.hazmat.primitives import serialization

    from pinrelay.client.keys import b64url

    point = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return b64url(point)


def _load_vapid(path: Path) -> Vapid:
    from py_vapid import Vapid, VapidException

    # Checked here: py_vapid's from_file would make a new key for a missing file.
    if not path.is_file():
        fail(f"no VAPID key file at {path} (make one with: pinrelay webpush vapid {path})")
    try:
        return Vapid.from_file(str(path))
    except (VapidException, OSError, ValueError) as exc:
        fail(f"{path} is not a VAPID private key (PEM or DER): {exc}")


@webpush_app.command("vapid")
def webpush_vapid(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="The private key's PEM file.")],
    as_json: JsonOpt = False,
) -> None:
    """Make an application server's VAPID key in FILE (if there is none); print its
    public key, to subscribe with --vapid-key."""
    from py_vapid import Vapid

    made = not path.exists()
    if made:
        vapid = Vapid()
        vapid.generate_keys()
        try:  # 0600 from the start: it is a signing key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
            with os.fdopen(fd, "wb") as f:
                f.write(vapid.private_pem())
        except OSError as exc:
            fail(f"cannot write {path}: {exc}")
    else:
        vapid = _load_vapid(path)
    key = application_server_key(vapid)
    if as_json:
        print_json({"file": str(path), "created": made, "applicationServerKey": key})
        return
    out.print(key, highlight=False, soft_wrap=True)
    err.print(f"{'made' if made else 'read'} {path}", highlight=False, soft_wrap=True)


# --- webpush send -----------------------------------------------------------------
URGENCIES = ("very-low", "low", "normal", "high")


def _problem(response: requests.Response) -> str:
    try:
        problem = response.json()
        return str(problem.get("detail") or problem.get("title"))
    except (ValueError, AttributeError):
        return response.text.strip() or response.reason


@webpush_app.command("send")
def webpush_send(
    endpoint: Annotated[str, typer.Argument(help="The subscription's endpoint URL.")],
    text: Annotated[str, typer.Argument(help="The message (encrypted before it leaves).")],
    keys: Annotated[
        str,
        typer.Option(
            "--keys",
            help='The subscription\'s keys: {"p256dh": "...", "auth": "..."}, or the '
            "whole subscription JSON.",
            show_default=False,
        ),
    ],
    vapid_key_file: Annotated[
        Path | None,
        typer.Option(help="Sign with this VAPID private key (PEM).", show_default=False),
    ] = None,
    vapid_sub: Annotated[
        str, typer.Option(help="The VAPID contact claim (mailto: or https:).")
    ] = "mailto:webpush@localhost",
    ttl: Annotated[int, typer.Option(help="Seconds the relay keeps it for the device.")] = 86400,
    urgency: Annotated[
        str | None, typer.Option(help="very-low, low, normal, high.", show_default=False)
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(
            help="Replaces an undelivered push with the same topic (≤ 32 of A-Z a-z 0-9 _ -).",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Push TEXT to a Web Push endpoint as an application server does (pywebpush)."""
    import requests
    from py_vapid import VapidException
    from pywebpush import WebPushException, webpush

    try:
        given = json.loads(keys)
    except ValueError as exc:
        # Unlike subscribe's and listen's --keys (the private key file), this one is
        # the subscription's JSON itself: say so to whoever passed a file name.
        hint = '--keys "$(cat subscription.json)"'
        fail(f"--keys is not JSON ({exc}): pass the subscription itself, {hint}")
    if isinstance(given, dict) and isinstance(given.get("keys"), dict):
        given = given["keys"]  # a whole subscription was pasted
    if not (isinstance(given, dict) and {"p256dh", "auth"} <= set(given)):
        fail('--keys needs {"p256dh": "...", "auth": "..."}')
    if urgency is not None and urgency not in URGENCIES:
        fail(f"--urgency must be one of {', '.join(URGENCIES)}, not {urgency!r}")
    if ttl < 0:
        fail(f"--ttl {ttl}: use 0 or more seconds")
    headers: dict[str, str | int | float] = {}
    if urgency is not None:
        headers["Urgency"] = urgency
    if topic is not None:
        headers["Topic"] = topic
    vapid = _load_vapid(vapid_key_file) if vapid_key_file is not None else None
    claims: dict[str, str | int] | None = {"sub": vapid_sub} if vapid is not None else None
    info = {"endpoint": endpoint, "keys": {"p256dh": given["p256dh"], "auth": given["auth"]}}
    try:
        response = webpush(
            info,
            data=text,
            vapid_private_key=vapid,
            vapid_claims=claims,
            ttl=ttl,
            headers=headers,
            timeout=30,
        )
    except WebPushException as exc:
        if exc.response is None:  # refused before sending: the keys, the claims
            fail(f"cannot push: {exc.message}")
        fail(f"{exc.response.status_code} {_problem(exc.response)}")
    except VapidException as exc:
        fail(f"cannot sign: {exc}")
    except requests.RequestException as exc:
        fail(f"cannot reach {endpoint}: {exc}")
    _report(response, as_json)


def _report(response: Any, as_json: bool) -> None:
    result = {
        "status": response.status_code,
        "location": response.headers.get("Location"),
        "ttl": response.headers.get("TTL"),
    }
    if as_json:
        print_json(result)
        return
    status = f"{result['status']} {response.reason}"
    out.print(
        f"{status}  Location: {result['location']}  TTL: {result['ttl']}",
        highlight=False,
        soft_wrap=True,
    )


# --- listen: how a webpush message is shown -----------------------------------------
def webpush_record(w: WebPushMessage) -> dict[str, Any]:
    """``Message.webpush`` as ``listen --json`` prints it: the payload as text when it
    is UTF-8, and always as base64url (it may be binary)."""
    from pinrelay.client.keys import b64url

    text: str | None = None
    if w.payload is not None:
        try:
            text = w.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    return {
        "subscription": w.subscription,
        "topic": w.topic,
        "urgency": w.urgency,
        "text": text,
        "payload": b64url(w.payload) if w.payload is not None else None,
        "error": w.error,
    }


def webpush_line(w: WebPushMessage) -> str:
    """``Message.webpush`` as ``listen`` prints it (rich markup)."""
    from rich.markup import escape

    record = webpush_record(w)
    where = f"[magenta]webpush[/] {escape(w.subscription)}"
    if w.error is not None:
        return f"{where} [red]undecryptable:[/] {escape(w.error)}"
    if record["text"] is None:
        shown = f"{len(w.payload or b'')} bytes, base64url {record['payload']}"
    else:
        shown = escape(json.dumps(record["text"], ensure_ascii=False))
    return f"{where} {shown}" + (f" [cyan]topic={escape(w.topic)}[/]" if w.topic else "")


def register(app: typer.Typer) -> None:
    """Add these commands to the ``pinrelay`` command."""
    app.command("subscribe")(subscribe)
    app.add_typer(webpush_app, name="webpush", no_args_is_help=True)
