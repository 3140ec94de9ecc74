"""What every ``pinrelay`` command module shares: the consoles, the common options,
one-line errors, PIN arguments, JSON and record output, and how a command says what
its link is doing (cli.py, cli_chat.py).

Every command that prints data has ``--json``; every error is one readable line on
stderr and a non-zero exit (:func:`fail`).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pinrelay.core.ids import is_pin

if TYPE_CHECKING:
    from rich.table import Column, Table

    from pinrelay.client.device import LinkEvent, Listening
    from pinrelay.client.http import RelayClient

# The CLI imports what a command needs when it runs (rich's tables, httpx, the link
# SDK): every `pinrelay` process, a relay's too, pays for its imports at start-up.

out = Console()
err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:7780"
UrlOpt = Annotated[str, typer.Option("--url", envvar="PINRELAY_URL", help="The relay's HTTP API.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--key",
        envvar="PINRELAY_KEY",
        help="API key; default: $PINRELAY_ADMIN_KEY, else ./data/admin.key.",
        show_default=False,
    ),
]

T = TypeVar("T")


def reflow_help(app: typer.Typer) -> None:
    """Join the lines of each paragraph of every command's help, here and in its
    sub-apps.  Typer (rich mode) keeps the line breaks of a docstring after its first
    paragraph, so text wrapped at the source's width broke mid-sentence in a narrower
    terminal; joined, the terminal's width wraps it.  A line that starts a list item
    or is indented keeps its break."""
    for info in app.registered_commands:
        doc = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if doc:
            info.help = "\n\n".join(_joined(p) for p in doc.split("\n\n"))
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)


def _joined(paragraph: str) -> str:
    if paragraph.startswith("\b"):  # Click's "keep these lines as they are"
        return paragraph
    lines = paragraph.split("\n")
    out = lines[:1]
    for line in lines[1:]:
        keep = line.startswith(("- ", "* ", " ", "\b", "\f"))
        out[-1:] = [out[-1], line] if keep else [f"{out[-1]} {line.strip()}"]
    return "\n".join(out)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


#: Where the key came from when :func:`admin_key` read it from a file (a refusal
#: names the file: another relay's data folder has a key of its own).
_key_file: Path | None = None


def admin_key(key: str | None) -> str:
    """The key a command uses: ``--key``/$PINRELAY_KEY, $PINRELAY_ADMIN_KEY, or the
    one ``pinrelay serve`` wrote to ./data/admin.key."""
    if key:
        return key
    env = os.environ.get("PINRELAY_ADMIN_KEY")
    if env:
        return env
    path = Path("data") / "admin.key"
    if path.exists():
        global _key_file
        _key_file = path
        return path.read_text().strip()
    fail("no API key: pass --key, set PINRELAY_KEY, or run where data/admin.key is")


def relay_client(url: str, secret: str | None = None) -> RelayClient:
    """An HTTP client of the relay (httpx: imported when a command runs)."""
    from pinrelay.client.http import RelayClient

    return RelayClient(url, secret)


def pin_arg(value: str | None) -> str | None:
    """A PIN as typed: any case, spaces around it ignored; the relay's form is upper
    case (PROTOCOL, "PIN")."""
    if value is None:
        return None
    pin = value.strip().upper()
    if not is_pin(pin):
        fail(f"{value!r} is not a PIN: a PIN is 8 hexadecimal digits")
    return pin


PinArg = Annotated[
    str,
    typer.Argument(
        metavar="PIN", help="The device's PIN (8 hex digits, any case).", callback=pin_arg
    ),
]


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``; an error answer from the relay is one line and exit 1."""
    from pinrelay.client.http import ApiError

    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        where = exc.problem.get("instance")
        if exc.status == 404 and exc.detail == "Not Found" and where:
            # No route at all (Starlette's own 404), not a missing device or group.
            fail(f"404 the relay has no {where}: is it older than this pinrelay?")
        if exc.status == 401 and _key_file is not None:
            fail(
                f"401 {exc.detail} (the key in {_key_file}: a relay with another data"
                " folder has its own; pass --key or set PINRELAY_KEY)"
            )
        fail(exc.detail if exc.status == 0 else f"{exc.status} {exc.detail}")


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def data_table(*columns: str | Column, title: str | None = None) -> Table:
    """The one style of the CLI's tables: plain columns (no box, so no width goes to
    borders and rows paste as they are), bold headers.  A column given by name folds
    a long value onto the next line rather than cut it with "…", and keeps its
    name whole; the first is what other commands take (an id, a PIN, a node) and
    is never wrapped.  At 80 columns every table of the CLI fits; far narrower,
    rich crops the rightmost columns.  A :class:`Column` is taken as it is."""
    from rich.table import Column, Table

    named = [
        Column(c, no_wrap=i == 0, overflow="fold", min_width=len(c)) if isinstance(c, str) else c
        for i, c in enumerate(columns)
    ]
    return Table(*named, box=None, pad_edge=False, title=title, title_justify="left")


def print_record(value: dict[str, Any], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(show_header=False, title=title, title_justify="left", box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    for k, v in value.items():
        # Values are data (a label, a message): shown as they are, never as markup.
        table.add_row(k, escape(json.dumps(v) if isinstance(v, (list, dict)) else str(v)))
    out.print(table)


def clock(t: float) -> str:
    """A wall-clock time as the CLI shows it: local HH:MM:SS."""
    return time.strftime("%H:%M:%S", time.localtime(t))


def event_record(event: LinkEvent) -> dict[str, Any]:
    """A link event as ``--json`` prints it (one object per line, on stderr)."""
    from pinrelay.client.device import Connecting, Retrying

    if isinstance(event, Connecting):
        return {"event": "connecting", "url": event.url, "attempt": event.attempt}
    if isinstance(event, Retrying):
        at = datetime.fromtimestamp(event.retry_at, UTC).isoformat(timespec="milliseconds")
        return {
            "event": "attempt_failed",
            "attempt": event.attempt,
            "reason": event.reason,
            "retry_in_s": round(event.delay_s, 3),
            "retry_at": at.replace("+00:00", "Z"),
        }
    return {
        "event": "listening",
        "url": event.url,
        "node": event.node,
        "region": event.region,
        "cursor": event.cursor,
    }


def link_reporter(
    pin: str, as_json: bool, linked: Callable[[Listening], str]
) -> Callable[[LinkEvent], None]:
    """An ``on_event`` for the SDK's Device that says on stderr what the link does:
    connecting, each failed attempt with its reason and the time of the next one,
    and ``linked(event)`` once the relay accepted the device (with ``as_json``: one
    object per line)."""
    from pinrelay.client.device import Connecting, Retrying

    def on_event(event: LinkEvent) -> None:
        if as_json:
            sys.stderr.write(json.dumps(event_record(event)) + "\n")
            sys.stderr.flush()
        elif isinstance(event, Connecting):
            again = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            err.print(f"[dim]connecting to {event.url} as {pin}…{again}[/]", highlight=False)
        elif isinstance(event, Retrying):
            err.print(
                f"[yellow]attempt {event.attempt} failed:[/] {event.reason};"
                f" next attempt at {clock(event.retry_at)} (in {event.delay_s:.1f} s)",
                highlight=False,
                soft_wrap=True,
            )
        else:
            err.print(linked(event), highlight=False, soft_wrap=True)

    return on_event
