"""``pinrelay incident open|update|resolve|list|show``: operators' incidents over
the HTTP API (PROTOCOL "Incidents and status").

Changes take the relay's admin key (``--key``, $PINRELAY_KEY, $PINRELAY_ADMIN_KEY or
./data/admin.key); a tenant's admin key lists and shows the incidents affecting its
tenant.  What the public sees is ``/status`` on any relay.
"""

from __future__ import annotations

from pathlib import Path
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
from pinrelay.core.incidents import COMPONENTS, SEVERITIES

incident_app = typer.Typer(help="Open, update and resolve incidents (the status page).")

IncidentArg = Annotated[str, typer.Argument(metavar="INCIDENT", help="The incident's id (I…).")]
TextArg = Annotated[str, typer.Argument(help="What is known, in words (up to 2,000 characters).")]


def _print(incident: dict[str, Any], as_json: bool, title: str | None = None) -> None:
    if as_json:
        print_json(incident)
        return
    where = f" in {incident['region']}" if incident.get("region") else ""
    if title:
        out.print(title)
    out.print(
        f"{incident['id']}  {incident['state']}  {incident['component']}"
        f" {incident['severity']}{escape(where)}"
    )
    out.print(f"started {incident['started_at']}", end="")
    if incident.get("source") == "auto":
        out.print(f", opened {incident['opened_at']} by relay {incident['holder']}", end="")
    out.print(f", resolved {incident['resolved_at']}" if incident["resolved_at"] else "")
    if incident.get("tenants"):
        out.print("affects " + ", ".join(incident["tenants"]))
    for u in incident["updates"]:
        out.print(f"  {u['at']}  {escape(u['text'])}")


@incident_app.command("open")
def incident_open(
    component: Annotated[str, typer.Argument(help="store, cluster, links or delivery.")],
    text: TextArg,
    severity: Annotated[
        str, typer.Option(help="minor or major (degraded), critical (outage).")
    ] = "major",
    region: Annotated[str | None, typer.Option(help="Where; none: everywhere.")] = None,
    tenant: Annotated[
        list[str] | None,
        typer.Option("--tenant", help="A tenant affected (repeat); none: every tenant, public."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open an incident: its component shows degraded or outage on /status."""
    if component not in COMPONENTS:
        fail(f"the component is one of {', '.join(COMPONENTS)}, not {component!r}")
    if severity not in SEVERITIES:
        fail(f"--severity is one of {', '.join(SEVERITIES)}, not {severity!r}")
    body: dict[str, Any] = {"component": component, "severity": severity, "text": text}
    if region:
        body["region"] = region
    if tenant:
        body["tenants"] = tenant
    with client(url, admin_key(key)) as c:
        made = call(c.request, "POST", "/v1/incidents", json=body)
    _print(made, as_json, "incident opened")


@incident_app.command("update")
def incident_update(
    incident: IncidentArg,
    text: TextArg,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an update to an open incident's timeline."""
    with client(url, admin_key(key)) as c:
        after = call(c.request, "POST", f"/v1/incidents/{incident}/updates", json={"text": text})
    _print(after, as_json)


@incident_app.command("resolve")
def incident_resolve(
    incident: IncidentArg,
    text: Annotated[str | None, typer.Argument(help="A last update (optional).")] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resolve an incident (final: it takes no more updates)."""
    kw: dict[str, Any] = {"json": {"text": text}} if text is not None else {}
    with client(url, admin_key(key)) as c:
        after = call(c.request, "POST", f"/v1/incidents/{incident}/resolve", **kw)
    _print(after, as_json, "incident resolved")


@incident_app.command("show")
def incident_show(
    incident: IncidentArg, url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """An incident and its timeline."""
    with client(url, admin_key(key)) as c:
        found = call(c.request, "GET", f"/v1/incidents/{incident}")
    _print(found, as_json)


@incident_app.command("list")
def incident_list(url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Open incidents and those resolved in the last 14 days, newest first."""
    with client(url, admin_key(key)) as c:
        found: list[dict[str, Any]] = call(c.request, "GET", "/v1/incidents")["incidents"]
    if as_json:
        print_json(found)
        return
    table = data_table("id", "state", "component", "severity", "started", "last update")
    for i in found:
        table.add_row(
            i["id"],
            i["state"],
            i["component"],
            i["severity"],
            i["started_at"],
            escape(i["updates"][-1]["text"][:60]),
        )
    out.print(table)


@incident_app.command("monitors")
def incident_monitors(
    url: UrlOpt = DEFAULT_URL, key: KeyOpt = None, as_json: JsonOpt = False
) -> None:
    """What this relay's monitors see: its last readings and what is red (the relay's
    admin key)."""
    with client(url, admin_key(key)) as c:
        found: dict[str, Any] = call(c.request, "GET", "/v1/monitors")
    if as_json:
        print_json(found)
        return
    out.print(f"relay {escape(found['node'])} in {escape(found['region'])}")
    r = found["readings"] or {}
    store = "failing" if r.get("store_ms") is None else f"{r['store_ms']} ms"
    free = r.get("disk_free")
    disk = "unknown" if free is None else f"{free // (1024 * 1024):,} MiB free"
    out.print(
        f"  links {r.get('links', 0):,}  store probe {store}  lag {r.get('lag_ms', 0):,} ms"
        f"  shed {r.get('shed', 0)}  disk {disk}"
    )
    for f in found["red"]:
        out.print(
            f"  [red]{f['component']} {f['severity']}[/] since {f['red_since']}:"
            f" {escape(f['text'])}"
        )
    if not found["red"]:
        out.print("  every component green")
    for incident in found["unwritten"]:
        out.print(f"  incident {incident} kept here until the store answers")


@incident_app.command("report")
def incident_report(
    incident: IncidentArg,
    chart: Annotated[
        Path | None,
        typer.Option(help="Also write the chart of backlog and delivery lag: a .png or .svg file."),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    key: KeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What an incident cost: detection delay, duration, devices and tenants affected,
    messages delayed and expired, notifications sent (from the relays' figures)."""
    fmt = chart.suffix.lower().lstrip(".") if chart is not None else None
    if chart is not None and fmt not in ("png", "svg"):
        fail(f"--chart {chart}: name a .png or .svg file")
    with client(url, admin_key(key)) as c:
        found: dict[str, Any] = call(c.request, "GET", f"/v1/incidents/{incident}/report")
        if chart is not None:
            image = call(c.download, f"/v1/incidents/{incident}/report.{fmt}")
            try:
                chart.write_bytes(image)
            except OSError as exc:
                fail(f"cannot write {chart}: {exc}")
    if as_json:
        print_json(found)
        return
    _print_report(found)
    if chart is not None:
        out.print(f"chart written to {escape(str(chart))}")


def _print_report(r: dict[str, Any]) -> None:
    d = r["delays"]
    tenants = r["tenants_affected"]
    lines = [
        f"incident {r['incident']}  {r['state']}  {r['component']} {r['severity']}",
        f"started   {r['started_at']}",
        f"opened    {r['opened_at']}  (detection delay {r['detection_delay_ms'] / 1000:g} s)",
        f"ended     {r['ended_at'] or 'still open'}  (duration {r['duration_ms'] / 1000:g} s)",
        *(
            f"region    {g['region']}: {_n(g['relays'], 'relay')}, impaired"
            f" {g['impaired_ms'] / 1000:g} s"
            for g in r["regions"]
        ),
        f"devices   {r['devices_affected']} affected (links held at the start)",
        "tenants   " + ("all" if tenants == "all" else ", ".join(tenants)),
        f"messages  {r['delivered']} delivered, {r['delayed']} later than "
        f"{r['delayed_over_ms']} ms, {r['expired']} expired undelivered",
        "delays    " + "  ".join(f"{p} {_bound(d[p + '_ms'])}" for p in ("p50", "p90", "p99")),
        f"figures   {_n(r['readings'], 'reading')} from {_n(len(r['relays']), 'relay')}",
    ]
    for line in lines:
        out.print(escape(line))
    out.print("notifications")
    for n in r["notifications"]:
        count = f" ({n['count']})" if n.get("count") is not None else ""
        out.print(escape(f"  {n['at']}  {n['event']:<8} {n['channel']}{count}"))


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _bound(ms: int | None) -> str:
    return "-" if ms is None else f"<= {ms} ms"


def register(app: typer.Typer) -> None:
    """Add these commands to the ``pinrelay`` command."""
    app.add_typer(incident_app, name="incident", no_args_is_help=True)
