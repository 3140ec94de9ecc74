"""The ``pinrelay`` command: thin over relay.py and client/ (DESIGN, "CLI").

Every command that prints data has ``--json``; every error is one readable line
on stderr and a non-zero exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from pinrelay import (
    __version__,
    cli_channels,
    cli_chat,
    cli_credits,
    cli_incidents,
    cli_portability,
    cli_serve,
    cli_tenants,
    cli_webhooks,
    cli_webpush,
)
from pinrelay.cli_common import (
    DEFAULT_URL,
    JsonOpt,
    KeyOpt,
    PinArg,
    UrlOpt,
    admin_key,
    data_table,
    err,
    fail,
    link_reporter,
    out,
    reflow_help,
    relay_client,
)
from pinrelay.cli_common import call as _call
from pinrelay.cli_common import pin_arg as _pin_arg
from pinrelay.cli_common import print_json as _print_json
from pinrelay.cli_common import print_record as _print_record

if TYPE_CHECKING:  # imported by the commands that use them (cli_common.py says why)
    from rich.table import Table

    from pinrelay.client.device import Listening, Message
    from pinrelay.client.http import RelayClient

app = typer.Typer(
    help="pinrelay: durable push to devices over a WebSocket link.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
device_app = typer.Typer(help="Create, show, delete devices; rotate their tokens.")
key_app = typer.Typer(help="Create, list and revoke API keys (needs the admin key).")
app.add_typer(device_app, name="device", no_args_is_help=True)
cluster_app = typer.Typer(help="A local cluster: NATS JetStream nodes and relays on one host.")
app.add_typer(key_app, name="key", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster", no_args_is_help=True)
cli_serve.register(app)  # first in --help


def _client(url: str, key: str | None) -> RelayClient:
    return relay_client(url, admin_key(key))


# --- info -----------------------------------------------------------------------
@app.command()
def info(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Show a relay's version and link URLs (no key needed)."""
    result = _call(relay_client(url).info)
    _print_json(result) if as_json else _print_record(result)


# --- devices --------------------------------------------------------------------
@device_app.command("create")
def device_create(
    label: Annotated[str | None, typer.Option(help="A name to remember it by.")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a device; prints its PIN and token (the token is shown only once)."""
    with _client(url, key) as c:
        result = _call(c.create_device, label)
    _print_json(result) if as_json else _print_record(result, "device created")


@device_app.command("show")
def device_show(
    pin: PinArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Show a device: online, backlog, last seen."""
    with _client(url, key) as c:
        result = _call(c.show_device, pin)
    _print_json(result) if as_json else _print_record(result)


@device_app.command("delete")
def device_delete(
    pin: PinArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Delete a device and all its messages."""
    with _client(url, key) as c:
        _call(c.delete_device, pin)
    _print_json({"pin": pin, "deleted": True}) if as_json else out.print(f"deleted {pin}")


@device_app.command("rotate")
def device_rotate(
    pin: PinArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Give a device a new token; links using the old one are closed."""
    with _client(url, key) as c:
        result = _call(c.rotate_token, pin)
    _print_json(result) if as_json else _print_record(result, "token rotated")


@device_app.command("pair")
def device_pair(
    pin: PinArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """One-time code for <url>/app (10 minutes, once; replaces earlier codes); redeemed, the
    old token stops working."""
    with _client(url, key) as c:
        result = _call(c.create_pairing, pin)
    _print_json(result) if as_json else _print_record(result, f"enter the code at {url}/app")


# --- keys -----------------------------------------------------------------------
@key_app.command("create")
def key_create(
    name: Annotated[str, typer.Option(help="What the key is for.")],
    scope: Annotated[str, typer.Option(help="push, devices, broadcast or admin.")] = "push",
    tenant: Annotated[
        str | None,
        typer.Option(help="The tenant (the relay's admin key only; default: the key's own)."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API key (shown only once; stored hashed)."""
    if scope not in cli_tenants.SCOPES:
        fail(f"--scope must be one of {', '.join(cli_tenants.SCOPES)}, not {scope!r}")
    with _client(url, key) as c:
        result = _call(c.create_key, name, scope, tenant)
    _print_json(result) if as_json else _print_record(result, "key created")


@key_app.command("list")
def key_list(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """List API keys (never their secrets)."""
    with _client(url, key) as c:
        keys = _call(c.list_keys)
    if as_json:
        _print_json(keys)
        return
    table = data_table("id", "name", "scope", "tenant", "created", "revoked")
    for k in keys:
        table.add_row(
            k["id"], escape(k["name"]), k["scope"], k["tenant"], k["created_at"], str(k["revoked"])
        )
    out.print(table)


@key_app.command("revoke")
def key_revoke(
    key_id: str, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """Revoke an API key: it stops working at once."""
    with _client(url, key) as c:
        _call(c.revoke_key, key_id)
    _print_json({"id": key_id, "revoked": True}) if as_json else out.print(f"revoked {key_id}")


# --- push / listen --------------------------------------------------------------
@app.command()
def push(
    pin: PinArg,
    data: Annotated[str, typer.Option(help="The message: any JSON value.")],
    ttl: Annotated[
        int | None,
        typer.Option(
            help="Seconds to keep it undelivered (0: only if the device is online now). "
            "Required, as in the API: no silent default.",
            show_default=False,
        ),
    ] = None,
    topic: Annotated[str | None, typer.Option(help="Replaces an undelivered one.")] = None,
    urgency: Annotated[str | None, typer.Option(help="very-low, low, normal, high.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key.")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Push a message to a device; returns once it is stored on disk."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        fail(f"--data is not JSON: {exc}")
    if ttl is None:
        fail("--ttl is required: how many seconds to keep the message (e.g. --ttl 86400)")
    with _client(url, key) as c:
        result = _call(
            c.push,
            pin,
            value,
            ttl=ttl,
            topic=topic,
            urgency=urgency,
            idempotency_key=idempotency_key,
        )
    _print_json(result) if as_json else _print_record(result, "stored")


@app.command()
def listen(
    pin: Annotated[
        str, typer.Option(envvar="PINRELAY_PIN", help="The device's PIN.", callback=_pin_arg)
    ],
    token: Annotated[str, typer.Option(envvar="PINRELAY_TOKEN", help="The device's token.")],
    url: UrlOpt = DEFAULT_URL,
    cursor: Annotated[int, typer.Option(help="Resume after this cursor.")] = 0,
    count: Annotated[int, typer.Option(help="Stop after this many messages (0: never).")] = 0,
    inbox: Annotated[bool, typer.Option(help="Long-poll instead of a WebSocket.")] = False,
    keys_file: cli_webpush.KeysFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Link as a device and print messages as they arrive (each is acknowledged).

    Web Push messages are decrypted with the keys `pinrelay subscribe` kept (--keys);
    one it cannot decrypt is shown as undecryptable, and acknowledged all the same.

    Receipts for the messages this device sent are printed as one line each
    ("receipt ID delivered by PIN"; with --json, kind "receipt"), not counted by
    --count.

    On stderr it says what the link does: connecting, each failed attempt with its
    reason and the time of the next one, and "listening" once the relay accepted the
    device (with --json: one object per line).  Messages go to stdout.
    """
    import asyncio

    from pinrelay.client.device import Device, LinkRefused, SystemMessage

    received = 0

    def listening(event: Listening) -> str:
        where = f" on {event.node} ({event.region})" if event.node else ""
        return f"listening as {pin}{where}, after cursor {event.cursor} (Ctrl-C to stop)"

    on_event = link_reporter(pin, as_json, listening)
    keys = cli_webpush.key_store(keys_file)

    async def main() -> None:
        done = asyncio.Event()

        def on_message(m: Message) -> None:
            nonlocal received
            received += 1
            if as_json:
                _print_json(
                    {
                        "id": m.id,
                        "cursor": m.cursor,
                        "kind": m.kind,
                        "from": m.sender,
                        "data": m.data,
                        "topic": m.topic,
                        "urgency": m.urgency,
                        "sent_at": m.sent_at,
                        "expires_at": m.expires_at,
                        **(
                            {"webpush": cli_webpush.webpush_record(m.webpush)}
                            if m.webpush is not None
                            else {}
                        ),
                    }
                )
            else:
                # One line per message, however wide (scripts read it line by line);
                # what was pushed is data, never rich markup.
                line = (
                    cli_webpush.webpush_line(m.webpush)
                    if m.webpush is not None
                    else escape(json.dumps(m.data))
                    + (f" [cyan]topic={escape(m.topic)}[/]" if m.topic else "")
                )
                if m.kind not in ("push", "webpush"):  # a chat, a receipt, a notice: whose
                    sender = f" from {escape(m.sender)}" if m.sender else ""
                    line = f"[magenta]{escape(m.kind)}{sender}[/] {line}"
                out.print(
                    f"[dim]{m.sent_at}[/] [bold]#{m.cursor}[/] {line}",
                    highlight=False,
                    soft_wrap=True,
                )
            if count and received >= count:
                device.stop_receiving()  # not one more: the next may be buffered already
                done.set()

        def on_system(m: SystemMessage) -> None:
            # An incident's news: shown, not counted (--count counts stored messages).
            if as_json:
                _print_json(
                    {
                        "id": m.id,
                        "cursor": None,
                        "kind": "system",
                        "data": m.data,
                        "urgency": m.urgency,
                        "sent_at": m.sent_at,
                        "expires_at": m.expires_at,
                    }
                )
            else:
                out.print(
                    f"[dim]{m.sent_at}[/] [bold red]incident {escape(m.incident)} "
                    f"{escape(m.event)}[/] {escape(m.text)}",
                    highlight=False,
                    soft_wrap=True,
                )

        def on_receipt(message_id: str, state: str, sender: str | None) -> None:
            # What became of a message this device sent: shown, not counted (the
            # SDK tells each once, and --count counts what the application gets).
            if as_json:
                _print_json({"kind": "receipt", "id": message_id, "state": state, "from": sender})
            else:
                by = f" by {escape(sender)}" if sender else ""
                out.print(
                    f"[magenta]receipt[/] {escape(message_id)} {escape(state)}{by}",
                    highlight=False,
                    soft_wrap=True,
                )

        device = Device(
            pin,
            token,
            on_message,
            url=url,
            cursor=cursor,
            inbox=inbox,
            on_event=on_event,
            on_receipt=on_receipt,
            keys=keys,
            on_system=on_system,
        )
        runner = asyncio.create_task(device.run())
        stopper = asyncio.create_task(done.wait())
        await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        await device.stop()
        stopper.cancel()
        # Give the last ack a moment to reach the relay, then stop waiting.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(runner), 1.0)
        if runner.done():
            runner.result()
        else:
            runner.cancel()

    try:
        asyncio.run(main())
    except LinkRefused as exc:
        fail(f"the relay refused the link: {exc}")
    except KeyboardInterrupt:
        pass


# --- cluster --------------------------------------------------------------------
ClusterDataOpt = Annotated[
    Path,
    typer.Option(
        "--data",
        envvar="PINRELAY_CLUSTER_DATA",
        help="The cluster's folder: cluster.json, admin.key, one folder per node.",
    ),
]
DEFAULT_CLUSTER_DATA = Path("cluster-data")


def _ports(row: dict[str, Any]) -> str:
    if row["kind"] == "relay":
        return f"http {row['port']}  link {row['link_port']}"
    return f"client {row['port']}  route {row['cluster_port']}  monitor {row['http_port']}"


def _node_table(rows: list[dict[str, Any]], *, state: bool) -> Table:
    """Nodes as a table; ``state``: with their state and links (`cluster status`).

    Ports, not URLs: every node listens on the one host the heading names, and the
    table fits 80 columns (a node's folder is ``<data>/<node>``: --json has it).
    """
    extra = ["state", "links"] if state else []
    table = data_table("node", "pid", *extra, "ports")
    colors = {"alive": "green", "dead": "red"}
    for r in rows:
        cells = [r["name"], str(r["pid"] or "-")]
        if state:
            st = r["state"]
            links = "-" if r.get("links") is None else str(r["links"])
            cells += [f"[{colors.get(st, 'yellow')}]{st}[/]", links]
        table.add_row(*cells, _ports(r))
    return table


def _show_path(path: str) -> str:
    """``path`` relative to the working folder when that is shorter."""
    rel = os.path.relpath(path)
    return rel if len(rel) < len(path) else path


def _cli_hint(result: dict[str, Any]) -> None:
    """How to point the CLI at the cluster: any relay's URL and the admin key."""
    relay = result["relays"][0]
    key = result["admin_key"]
    key = key if key.startswith("$") else f'"$(cat {_show_path(key)})"'
    out.print(f"  --url {relay['url']}  (any relay; or PINRELAY_URL)", highlight=False)
    out.print(f"  --key {key}  (or PINRELAY_KEY)", highlight=False, soft_wrap=True)


@cluster_app.command("up")
def cluster_up(
    relays: Annotated[int, typer.Option(help="How many relays.")] = 3,
    nats: Annotated[int, typer.Option(help="How many nats-server nodes (at least 3).")] = 3,
    data: ClusterDataOpt = DEFAULT_CLUSTER_DATA,
    host: Annotated[str, typer.Option(help="Address every node listens on.")] = "127.0.0.1",
    partitions: Annotated[
        int, typer.Option(help="Streams the relays spread devices over (serve --partitions).")
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Start NATS JetStream nodes and relays; print their endpoints; stop all on Ctrl-C.

    Nodes restarted with `cluster start` while this runs are stopped by it too.
    """
    from pinrelay import cluster

    def ready(c: cluster.Cluster) -> None:
        ends = cluster.endpoints(c)
        if as_json:
            _print_json(ends)
            return
        where = _show_path(ends["data"])
        out.print(f"[bold green]pinrelay cluster[/] is up in [bold]{where}[/]", soft_wrap=True)
        out.print(f"every node on {ends['host']}", highlight=False)
        out.print(_node_table([*ends["nats"], *ends["relays"]], state=False))
        out.print(f"  store  {ends['store']}", highlight=False, soft_wrap=True)
        out.print("point the CLI at it:")
        _cli_hint(ends)
        out.print("Ctrl-C stops every node.")
        sys.stdout.flush()

    try:
        left = cluster.up(data, relays, nats, host, ready, partitions=partitions)
    except cluster.ClusterError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start the cluster: {exc}")
    if left:
        fail(f"these pids would not stop: {', '.join(map(str, left))}")
    if not as_json:
        err.print("cluster stopped", highlight=False)


@cluster_app.command("status")
def cluster_status(data: ClusterDataOpt = DEFAULT_CLUSTER_DATA, as_json: JsonOpt = False) -> None:
    """Each relay and NATS node: pid, ports, state, links; who leads each stream."""
    from pinrelay import cluster

    try:
        result = cluster.status(data)
    except cluster.ClusterError as exc:
        fail(str(exc))
    if as_json:
        _print_json(result)
        return
    sup = result["supervisor_pid"]
    owner = f" (cluster up: pid {sup})" if sup else ""
    out.print(f"cluster in [bold]{_show_path(result['data'])}[/]{owner}", soft_wrap=True)
    out.print(f"every node on {result['host']}", highlight=False)
    out.print(_node_table([*result["nats"], *result["relays"]], state=True))
    if result["streams"]:
        table = data_table("stream", "leader", "messages", "replicas (lag)")
        for s in result["streams"]:
            reps = ", ".join(
                f"{p['name']}{'' if p['current'] else ' (behind)'} {p['lag']}"
                for p in s["replicas"]
            )
            table.add_row(s["name"], s["leader"] or "-", str(s["messages"]), reps)
        out.print(table)
    else:
        out.print("streams: no NATS node reachable, or no stream yet")
    out.print("point the CLI at it:")
    _cli_hint(result)


@cluster_app.command("start")
def cluster_start(
    node: Annotated[str, typer.Argument(help="The node to restart: n1, relay-2, ...")],
    data: ClusterDataOpt = DEFAULT_CLUSTER_DATA,
    as_json: JsonOpt = False,
) -> None:
    """Restart one stopped node with its recorded ports and data, in the background.

    A node started so while `cluster up` runs is stopped when `cluster up` stops.
    """
    from pinrelay import cluster

    try:
        c = cluster.start_node(data, node)
    except cluster.ClusterError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start {node}: {exc}")
    pid = c.node(node).pid
    _print_json({"name": node, "pid": pid}) if as_json else out.print(f"{node} started, pid {pid}")


@app.command()
def version(as_json: JsonOpt = False) -> None:
    """Print pinrelay's version."""
    _print_json({"version": __version__}) if as_json else out.print(__version__)


# --- messaging as a device: send, chat, contacts, group (cli_chat.py) ----------
cli_chat.register(app)
# --- Web Push: subscribe, webpush send|list|delete|vapid (cli_webpush.py) ------
cli_webpush.register(app)
# --- tenants: tenant create|list|show|suspend|resume|quota|delete|key, device grant
cli_tenants.register(app, device_app)
cli_channels.register(app, device_app)
# --- incidents: incident open|update|resolve|list|show (cli_incidents.py) ------
cli_incidents.register(app)
# --- credits, incident make-good, code redeem (cli_credits.py) -----------------
cli_credits.register(app)
# --- webhooks: webhook add|list|show|delete (cli_webhooks.py) -----------------
cli_webhooks.register(app)
# --- portability: device export|move, tenant accept (cli_portability.py) --------
cli_portability.register(device_app)
# Help texts wrap at the terminal's width, not at the source's line breaks.
reflow_help(app)


def main() -> None:
    """Run the CLI.  A usage error (an unknown option, a value of the wrong type, a
    missing argument) is one line on stderr and exit status 2, as every other error
    of this CLI is one line; click's own is a box of several."""
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()  # the help, as without arguments it always was
        sys.exit(exc.exit_code)
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "pinrelay"
        message = " ".join(exc.format_message().split())
        print(f"error: {message} (see {where} --help)", file=sys.stderr)
        sys.exit(exc.exit_code)
    except ClickException as exc:
        print(f"error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
