"""``pinrelay channel …``, ``pinrelay audit`` and ``pinrelay device channels|join|refuse``
against a real relay: a tenant publishes a channel, a device joins it with its token,
a broadcast reaches it, the audit log shows it; bad input is one readable line."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.relayproc import RelayProc
from tests.test_cli import ok_json, one_line_error, run

pytestmark = pytest.mark.shared_relay


def test_a_channel_from_creation_to_broadcast_and_audit(relay: RelayProc) -> None:
    tid = ok_json(relay, "tenant", "create", "Weather")["id"]
    key = ok_json(relay, "tenant", "key", tid, "--name", "casts", "--scope", "broadcast")["key"]
    admin = ok_json(relay, "tenant", "key", tid, "--name", "ops", "--scope", "admin")["key"]
    as_tenant = ["--key", key, "--url", relay.url]
    made = run("channel", "create", "Storms", "--class", "service", *as_tenant, "--json")
    assert made.returncode == 0, made.stderr
    channel = json.loads(made.stdout)["id"]
    listed = run("channel", "list", *as_tenant, "--json")
    assert [c["id"] for c in json.loads(listed.stdout)] == [channel]

    device = run("device", "create", "--json", key=admin, url=relay.url)
    pin, token = json.loads(device.stdout)["pin"], json.loads(device.stdout)["token"]
    common = ["--token", token, "--url", relay.url]
    joined = run("device", "join", pin, channel, *common, "--json")
    assert joined.returncode == 0, joined.stderr
    assert json.loads(joined.stdout)["channels"][0]["joined"] is True
    refused = run("device", "refuse", pin, "marketing", *common)
    assert refused.returncode == 0 and "refuses: marketing" in refused.stdout

    sent = run("channel", "send", channel, '{"text": "hail"}', "--wait", *as_tenant, "--json")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("{"), sent.stdout  # the progress bar is on stderr
    view = json.loads(sent.stdout)
    assert (view["members"], view["stored"]) == (1, 1) and view["done_at"]
    status = run("channel", "status", view["id"], *as_tenant, "--json")
    assert json.loads(status.stdout)["stored"] == 1
    inbox = httpx.get(
        f"{relay.url}/v1/devices/{pin}/inbox", headers={"Authorization": f"Bearer {token}"}
    )
    assert [m["id"] for m in inbox.json()["messages"]] == [view["id"]]

    audit = run("audit", "--key", admin, "--url", relay.url, "--json")
    assert audit.returncode == 0, audit.stderr
    lines = json.loads(audit.stdout)
    assert [x["action"] for x in lines] == ["broadcast", "channel.create"]
    assert lines[0]["broadcast"] == view["id"] and lines[0]["stored"] == 1
    table = run("audit", "--key", admin, "--url", relay.url)
    assert table.returncode == 0 and "broadcast" in table.stdout

    left = run("device", "join", pin, channel, "--leave", *common)
    assert left.returncode == 0 and "no channel" in left.stdout
    deleted = run("channel", "delete", channel, *as_tenant, "--json")
    assert json.loads(deleted.stdout) == {"id": channel, "deleted": True}


def test_bad_input_is_one_readable_line(relay: RelayProc) -> None:
    tid = ok_json(relay, "tenant", "create", "Strict")["id"]
    key = ok_json(relay, "tenant", "key", tid, "--name", "b", "--scope", "broadcast")["key"]
    as_tenant = ["--key", key, "--url", relay.url]
    one_line_error(run("channel", "create", "x", "--class", "spam", *as_tenant), "--class")
    one_line_error(run("channel", "send", "C000000000000", "1", *as_tenant), "404")
    one_line_error(run("channel", "create", "x", key=relay.admin_key, url=relay.url), "403")
    device = ok_json(relay, "device", "create")
    common = ["--token", device["token"], "--url", relay.url]
    one_line_error(run("device", "refuse", device["pin"], "spam", *common), "CLASS")
    one_line_error(run("device", "join", device["pin"], "C000000000000", *common), "404")
