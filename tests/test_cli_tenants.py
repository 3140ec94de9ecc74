"""``pinrelay tenant …`` and ``pinrelay device grant`` against a real relay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.relayproc import RelayProc
from tests.test_cli import ok_json, one_line_error, run

pytestmark = pytest.mark.shared_relay


def test_a_tenant_from_creation_to_deletion(relay: RelayProc) -> None:
    made = ok_json(relay, "tenant", "create", "Carrier One", "--devices", "10", "--rate", "5")
    tid = made["id"]
    assert made["quotas"] == {"devices": 10, "rate": 5.0} and not made["suspended"]
    assert tid in {t["id"] for t in ok_json(relay, "tenant", "list")}
    key = ok_json(relay, "tenant", "key", tid, "--name", "ops", "--scope", "admin")
    assert key["tenant"] == tid and key["key"].startswith("prk_")
    # The tenant's admin key makes devices and keys in its tenant only.
    as_tenant = ["--key", key["key"], "--url", relay.url, "--json"]
    device = run("device", "create", *as_tenant)
    assert device.returncode == 0, device.stderr
    push_key = run("key", "create", "--name", "app", "--scope", "push", *as_tenant)
    assert push_key.returncode == 0 and f'"tenant": "{tid}"' in push_key.stdout
    listed = run("key", "list", *as_tenant)
    assert listed.returncode == 0 and '"tenant": "default"' not in listed.stdout
    one_line_error(run("key", "create", "--name", "x", "--tenant", "default", *as_tenant), "403")

    assert ok_json(relay, "tenant", "suspend", tid)["suspended"] is True
    one_line_error(run("device", "create", *as_tenant), "suspended")
    assert ok_json(relay, "tenant", "resume", tid)["suspended"] is False
    assert ok_json(relay, "tenant", "quota", tid, "--links", "3")["quotas"] == {"links": 3}
    assert ok_json(relay, "tenant", "show", tid)["name"] == "Carrier One"
    assert ok_json(relay, "tenant", "delete", tid) == {"id": tid, "deleted": True}
    one_line_error(run("device", "create", *as_tenant), "401")
    one_line_error(run("tenant", "show", tid, key=relay.admin_key, url=relay.url), "404")


def test_a_device_grants_a_tenant(relay: RelayProc) -> None:
    tid = ok_json(relay, "tenant", "create", "Publisher")["id"]
    device = ok_json(relay, "device", "create")
    pin, token = device["pin"], device["token"]
    common = ["--token", token, "--url", relay.url]
    granted = run("device", "grant", pin, "--tenant", tid, *common, "--json")
    assert granted.returncode == 0, granted.stderr
    assert f'"grants": ["{tid}"]' in granted.stdout
    revoked = run("device", "grant", pin, "--tenant", tid, "--revoke", *common)
    assert revoked.returncode == 0 and "none" in revoked.stdout
    one_line_error(run("device", "grant", pin, "--tenant", "zzzzzzzzzzzz", *common), "404")
    one_line_error(run("tenant", "key", tid, "--name", "x", "--scope", "root"), "--scope")


def test_a_device_exports_and_moves_to_another_tenant(relay: RelayProc, tmp_path: Path) -> None:
    old, new = (ok_json(relay, "tenant", "create", n)["id"] for n in ("Old", "New"))
    key = ok_json(relay, "tenant", "key", new, "--name", "onboarding", "--scope", "devices")
    old_key = ok_json(relay, "tenant", "key", old, "--name", "app", "--scope", "devices")
    made = run("device", "create", "--json", key=old_key["key"], url=relay.url)
    assert made.returncode == 0, made.stderr
    pin, token = json.loads(made.stdout)["pin"], json.loads(made.stdout)["token"]
    for n in range(3):
        data = ["--data", f'{{"n": {n}}}', "--ttl", "3600"]
        pushed = run("push", pin, *data, key=relay.admin_key, url=relay.url)
        assert pushed.returncode == 0, pushed.stderr
    common = ["--token", token, "--url", relay.url]
    file = tmp_path / "export.json"
    exported = run("device", "export", pin, *common, "--out", str(file))
    assert exported.returncode == 0 and "3 undelivered messages" in " ".join(
        exported.stdout.split()
    )
    doc = json.loads(file.read_text())
    assert doc["device"]["tenant"] == old and len(doc["messages"]) == 3
    assert file.stat().st_mode & 0o777 == 0o600  # its messages and secrets: private

    one_line_error(run("device", "move", pin, *common), "--to")
    asked = run("device", "move", pin, "--to", new, *common, "--json")
    assert asked.returncode == 0 and json.loads(asked.stdout)["tenant"] == new, asked.stderr
    accepted = run("tenant", "accept", new, pin, "--json", key=key["key"], url=relay.url)
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout) == {"pin": pin, "tenant": new}
    one_line_error(run("tenant", "accept", new, pin, key=key["key"], url=relay.url), "404")
    after = run("device", "export", pin, *common, "--json")
    assert json.loads(after.stdout)["device"]["tenant"] == new
    assert json.loads(after.stdout)["messages"] == doc["messages"]
