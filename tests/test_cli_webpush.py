"""`pinrelay subscribe`, `webpush send|list|delete|vapid` and `listen` with Web Push,
as a user runs them against a real relay: JSON on --json, one-line errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinrelay.client.keys import FileKeyStore, SubscriptionKeys
from tests.relayproc import TIMEOUT_FACTOR, RelayProc, free_port
from tests.test_cli import one_line_error

Dev = dict[str, Any]


@dataclass
class User:
    """Someone at a shell: their own config folder (the default key file goes there),
    and, acting as a device, its PIN and token exported as PINRELAY_PIN/TOKEN."""

    home: Path
    relay: RelayProc | None = None
    device: Dev | None = None

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PINRELAY_", "XDG_"))}
        env["XDG_CONFIG_HOME"] = str(self.home)
        if self.relay is not None:
            env["PINRELAY_URL"] = self.relay.url
        if self.device is not None:
            env["PINRELAY_PIN"] = self.device["pin"]
            env["PINRELAY_TOKEN"] = self.device["token"]
        return subprocess.run(
            [sys.executable, "-m", "pinrelay.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60 * TIMEOUT_FACTOR,
        )

    def ok(self, *args: str) -> str:
        r = self.run(*args)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def lines(self, *args: str) -> list[Any]:
        """``listen --json``: one object per message."""
        return [json.loads(line) for line in self.ok(*args, "--json").splitlines()]


#: Some subscription's public keys.
KEYS = json.dumps(SubscriptionKeys.generate().public())


def test_vapid_makes_a_private_key_once(tmp_path: Path) -> None:
    user = User(tmp_path)
    pem = tmp_path / "vapid.pem"
    made = user.json("webpush", "vapid", str(pem))
    assert made["created"] is True and made["file"] == str(pem)
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert pem.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    again = user.ok("webpush", "vapid", str(pem)).strip()
    assert again == made["applicationServerKey"]  # read, not made anew
    assert len(again) == 87  # a 65-byte point in base64url


def test_subscribe_send_listen(relay: RelayProc, tmp_path: Path) -> None:
    user = User(tmp_path, relay, relay.create_device())
    r = user.run("subscribe")
    assert r.returncode == 0, r.stderr
    sub = json.loads(r.stdout)
    assert set(sub) == {"endpoint", "expirationTime", "keys"}  # toJSON: paste it anywhere
    default_file = tmp_path / "pinrelay" / "webpush-keys.json"
    assert str(default_file) in r.stderr
    [sub_id] = FileKeyStore(default_file).ids()
    assert sub["endpoint"] == f"{relay.url}/push/{sub_id}"

    keys = json.dumps(sub["keys"])
    endpoint = sub["endpoint"]
    sent = user.json(
        "webpush", "send", endpoint, "hello ✓", "--keys", keys, "--urgency", "high", "--topic", "hi"
    )
    assert sent["status"] == 201
    assert sent["location"].startswith(f"{endpoint}/messages/")
    # The whole subscription pasted as --keys works too.
    line = user.ok("webpush", "send", endpoint, "second", "--keys", r.stdout)
    assert line.startswith("201 Created  Location: ")

    first, second = user.lines("listen", "--count", "2")
    assert first["kind"] == "webpush" and first["urgency"] == "high"
    assert first["webpush"] == {
        "subscription": sub_id,
        "topic": "hi",
        "urgency": "high",
        "text": "hello ✓",
        "payload": "aGVsbG8g4pyT",  # base64url of the UTF-8
        "error": None,
    }
    assert second["webpush"]["text"] == "second"

    # Without --json: the text as it was sent (text that looks like markup stays text).
    user.ok("webpush", "send", endpoint, "[red]third[/]", "--keys", keys)
    shown = user.ok("listen", "--count", "1")
    assert f'webpush {sub_id} "[red]third[/]"' in shown


def test_keys_elsewhere_and_an_undecryptable_message(relay: RelayProc, tmp_path: Path) -> None:
    user = User(tmp_path, relay, relay.create_device())
    keys_file = tmp_path / "elsewhere" / "keys.json"
    sub = user.json("subscribe", "--keys", str(keys_file))
    assert set(sub) >= {"id", "endpoint", "keys", "applicationServerKey", "created_at"}
    assert FileKeyStore(keys_file).ids() == [sub["id"]]
    assert not (tmp_path / "pinrelay").exists()
    send = ("webpush", "send", sub["endpoint"], "--keys", json.dumps(sub["keys"]))
    user.ok(*send, "secret")
    # listen with the default key file, which does not hold these keys:
    [first] = user.lines("listen", "--count", "1")
    assert first["webpush"]["text"] is None and first["webpush"]["payload"] is None
    assert "no keys for subscription" in first["webpush"]["error"]
    # It was acknowledged all the same; the next one opens with the right file.
    user.ok(*send, "secret 2")
    shown = user.ok("listen", "--count", "1", "--keys", str(keys_file))
    assert '"secret 2"' in shown and "undecryptable" not in shown


def test_vapid_from_subscribe_to_send(relay: RelayProc, tmp_path: Path) -> None:
    user = User(tmp_path, relay, relay.create_device())
    pem = tmp_path / "vapid.pem"
    key = user.ok("webpush", "vapid", str(pem)).strip()
    sub = user.json("subscribe", "--vapid-key", key)
    assert sub["applicationServerKey"] == key
    send = ("webpush", "send", sub["endpoint"], "signed", "--keys", json.dumps(sub["keys"]))
    one_line_error(user.run(*send), "401 ")
    signed = user.json(*send, "--vapid-key-file", str(pem), "--vapid-sub", "mailto:ops@a.example")
    assert signed["status"] == 201
    [got] = user.lines("listen", "--count", "1")
    assert got["webpush"]["text"] == "signed"


def test_list_and_delete(relay: RelayProc, tmp_path: Path) -> None:
    user = User(tmp_path, relay, relay.create_device())
    a = user.json("subscribe")
    b = user.json("subscribe", "--keys", str(tmp_path / "other.json"))
    listed = user.json("webpush", "list")
    assert [(s["id"], s["keys_here"]) for s in listed] == [(a["id"], True), (b["id"], False)]
    table = user.ok("webpush", "list")
    assert a["id"] in table and b["id"] in table
    assert user.json("webpush", "delete", a["id"]) == {"id": a["id"], "deleted": True}
    assert FileKeyStore(tmp_path / "pinrelay" / "webpush-keys.json").ids() == []
    gone = user.run("webpush", "send", a["endpoint"], "x", "--keys", json.dumps(a["keys"]))
    one_line_error(gone, "410 ")
    one_line_error(user.run("webpush", "delete", a["id"]), "404 ")


def test_errors_are_one_readable_line(relay: RelayProc, tmp_path: Path) -> None:
    user = User(tmp_path, relay, relay.create_device())
    nowhere = f"{relay.url}/push/AAAAAAAAAAAAAAAAAAAAAA"
    send = ("webpush", "send", nowhere, "x", "--keys")
    one_line_error(user.run(*send, KEYS), "404 ")
    one_line_error(user.run(*send, "{"), "--keys is not JSON")
    one_line_error(user.run(*send, "subscription.json"), '"$(cat subscription.json)"')
    one_line_error(user.run(*send, "{}"), "--keys needs")
    one_line_error(user.run(*send, KEYS, "--urgency", "now"), "--urgency must be one of")
    missing = tmp_path / "missing.pem"
    one_line_error(user.run(*send, KEYS, "--vapid-key-file", str(missing)), "no VAPID key file")
    assert not missing.exists()  # not made behind the user's back
    closed = f"http://127.0.0.1:{free_port()}/push/x"
    one_line_error(user.run("webpush", "send", closed, "x", "--keys", KEYS), "cannot reach")
    one_line_error(user.run("subscribe", "--vapid-key", "not-a-key"), "422 ")
    assert user.device is not None
    stranger = User(tmp_path, relay, {**user.device, "token": "x" * 32})
    one_line_error(stranger.run("subscribe"), "401 ")
    bad_file = tmp_path / "bad.json"
    bad_file.write_text("[]")
    one_line_error(user.run("subscribe", "--keys", str(bad_file)), "not a pinrelay key file")
