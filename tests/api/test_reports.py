"""Incident reports (api/reports.py, core/report.py) on a real relay on SQLite, its
figures recorded every 0.3 s (figures.py): the JSON counts what happened during
the incident (a linked device at the start, messages delivered to it), the chart
is a valid PNG and SVG, ``pinrelay incident report`` prints and writes the same,
and a tenant's admin cannot read the report of another tenant's incident (404).
test_reports_on_cluster.py records and reports on a NATS cluster.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from pinrelay.core import frames
from pinrelay.testing.wait import wait_until
from tests.api.test_api import assert_problem
from tests.api.test_incidents import NOBODY, _ok, open_incident
from tests.api.test_tenants import Tenant
from tests.conftest import RelayFactory
from tests.relayproc import TIMEOUT_FACTOR, RelayProc

NODE = "rep-1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProc:
    flags = ["--figures-every", "0.3", "--node-id", NODE, "--region", "eu"]
    return relay_factory("reports", extra=flags)


@pytest.fixture
def admin(relay: RelayProc) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as c:
        yield c


def report(http: httpx.Client, iid: str) -> dict[str, Any]:
    body: dict[str, Any] = _ok(http.get(f"/v1/incidents/{iid}/report"))
    return body


def recorded_since_start(http: httpx.Client, iid: str) -> dict[str, Any] | None:
    """The report once this relay recorded a reading after the incident started."""
    r = report(http, iid)
    return r if r["regions"] and r["regions"][0]["relays"] == 1 else None


def check_png(body: bytes) -> None:
    assert body.startswith(PNG_MAGIC) and len(body) > 10_000
    assert body[12:16] == b"IHDR"
    assert struct.unpack(">II", body[16:24]) == (900, 550)  # 9 x 5.5 in at 100 dpi


def check_svg(body: bytes) -> str:
    root = ET.fromstring(body)  # noqa: S314 (our own relay's chart)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return body.decode()


def test_the_report_of_an_operator_incident(
    relay: RelayProc, admin: httpx.Client, tmp_path: Path
) -> None:
    device = relay.create_device()
    with connect(relay.link_url, open_timeout=10) as ws:
        ws.send(frames.encode(frames.Hello(pin=device["pin"], token=device["token"])).decode())
        assert isinstance(frames.decode_server(ws.recv(10)), frames.Welcome)
        # A reading after the link, before the incident: a probe incident's report
        # shows when one was taken after its start.
        probe = open_incident(admin, severity="minor", text="probe")["id"]
        wait_until(lambda: recorded_since_start(admin, probe), 10, 0.1, "a reading")
        _ok(admin.post(f"/v1/incidents/{probe}/resolve"))
        iid = open_incident(admin, component="delivery", severity="major", text="Late")["id"]
        with relay.client() as c:
            for n in range(3):
                c.push(device["pin"], {"n": n}, ttl=600)
        got: list[frames.Msg] = []
        while len(got) < 3:  # the incidents' system messages come too (not stored)
            frame = frames.decode_server_any(ws.recv(10 * TIMEOUT_FACTOR))
            if not isinstance(frame, frames.SystemMsg):
                assert isinstance(frame, frames.Msg), frame
                got.append(frame)
        wait_until(lambda: report(admin, iid)["delivered"] == 3, 10, 0.1, "3 delivered")
        done = _ok(admin.post(f"/v1/incidents/{iid}/resolve", json={"text": "On time again"}))
    r = report(admin, iid)
    assert (r["incident"], r["state"], r["component"], r["severity"]) == (
        iid,
        "resolved",
        "delivery",
        "major",
    )
    assert r["opened_at"] == r["started_at"] and r["detection_delay_ms"] == 0
    assert r["ended_at"] == done["resolved_at"] and r["duration_ms"] > 0
    assert r["tenants_affected"] == "all" and r["devices_affected"] == 1
    assert (r["delivered"], r["delayed"], r["expired"]) == (3, 0, 0)
    # Relay.readings measures no delays: the monitors will (then 3 of them here).
    assert sum(r["delays"]["counts"]) in (0, 3) and len(r["delays"]["counts"]) == 13
    assert r["regions"][0]["region"] == "eu" and r["relays"] == [NODE] and r["readings"] >= 2
    assert [(n["event"], n["channel"], n["count"]) for n in r["notifications"]] == [
        ("opened", "status", None),
        ("opened", "devices", 1),  # the system message to the linked device
        ("resolved", "status", None),
        ("resolved", "devices", 1),
    ]
    assert r["chart"] == f"/v1/incidents/{iid}/report.png"

    png = admin.get(f"/v1/incidents/{iid}/report.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    check_png(png.content)
    svg = admin.get(f"/v1/incidents/{iid}/report.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    assert NODE in check_svg(svg.content)

    # The CLI: the same report, and the chart written where it is told.
    chart = tmp_path / "chart.svg"
    shown = cli(relay, "incident", "report", iid, "--json", "--chart", str(chart))
    assert {**json.loads(shown), "readings": 0} == {**report(admin, iid), "readings": 0}
    check_svg(chart.read_bytes())
    text = cli(relay, "incident", "report", iid, "--chart", str(tmp_path / "c.png"))
    assert "detection delay 0 s" in text and "3 delivered" in text and "all" in text
    check_png((tmp_path / "c.png").read_bytes())
    bad = cli(relay, "incident", "report", iid, "--chart", "c.gif", ok=False)
    assert ".png or .svg" in bad


def cli(relay: RelayProc, *args: str, ok: bool = True) -> str:
    argv = [sys.executable, "-m", "pinrelay.cli", *args, "--url", relay.url]
    proc = subprocess.run(
        [*argv, "--key", relay.admin_key or ""],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_a_tenant_admin_reads_only_the_reports_it_may_see(
    relay: RelayProc, admin: httpx.Client
) -> None:
    a, b = Tenant(admin, "a"), Tenant(admin, "b")
    only_a = open_incident(admin, severity="minor", tenants=[a.id])["id"]
    everyone = open_incident(admin, severity="minor")["id"]
    with a.client("admin") as ca, b.client("admin") as cb, a.client("push") as push:
        assert report(ca, only_a)["tenants_affected"] == [a.id]
        assert report(cb, everyone)["tenants_affected"] == "all"
        for suffix in ("", ".png", ".svg"):
            theirs = cb.get(f"/v1/incidents/{only_a}/report{suffix}")
            nobody = cb.get(f"/v1/incidents/{NOBODY}/report{suffix}")
            assert_problem(theirs, 404)
            assert theirs.text.replace(only_a, NOBODY) == nobody.text
        assert_problem(push.get(f"/v1/incidents/{only_a}/report"), 403)
    assert_problem(httpx.get(f"{relay.url}/v1/incidents/{only_a}/report"), 401)
    assert_problem(admin.get("/v1/incidents/nonsense/report.png"), 404)
