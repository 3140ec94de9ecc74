"""`pinrelay send`, `contacts …`, `group …` as a device against a real relay:
--json for every answer, tables and sentences otherwise, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest

from pinrelay.client.contacts import DeviceClient
from pinrelay.testing.wait import wait_until
from tests.relayproc import TIMEOUT_FACTOR, RelayProc, free_port
from tests.test_cli import one_line_error

Dev = dict[str, Any]

# Every test here on the `relay` fixture makes devices of its own: one relay for the
# module (tests/conftest.py).
pytestmark = pytest.mark.shared_relay
MESSAGE_ID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def env_for(device: Dev | None, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINRELAY_")}
    env["PINRELAY_URL"] = url
    if device is not None:
        env["PINRELAY_PIN"], env["PINRELAY_TOKEN"] = device["pin"], device["token"]
    return env


def as_device(
    relay: RelayProc, device: Dev | None, *args: str, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as ``device`` (PINRELAY_PIN and PINRELAY_TOKEN, as a user exports them)."""
    return subprocess.run(
        [sys.executable, "-m", "pinrelay.cli", *args],
        env=env_for(device, url or relay.url),
        capture_output=True,
        text=True,
        timeout=60 * TIMEOUT_FACTOR,
    )


def ok(relay: RelayProc, device: Dev, *args: str) -> str:
    r = as_device(relay, device, *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def ok_json(relay: RelayProc, device: Dev, *args: str) -> Any:
    return json.loads(ok(relay, device, *args, "--json"))


def inbox(relay: RelayProc, device: Dev) -> list[dict[str, Any]]:
    """What ``device`` has not acknowledged (nothing is acknowledged here)."""
    with httpx.Client(base_url=relay.url, timeout=10) as c:
        r = c.get(
            f"/v1/devices/{device['pin']}/inbox",
            headers={"Authorization": f"Bearer {device['token']}"},
        )
    r.raise_for_status()
    messages: list[dict[str, Any]] = r.json()["messages"]
    return messages


def inbox_chats(relay: RelayProc, device: Dev) -> list[dict[str, Any]]:
    return [m for m in inbox(relay, device) if m["kind"] == "chat"]


def test_contacts_and_send_speak_json(relay: RelayProc) -> None:
    a, b, c = relay.create_device(), relay.create_device(), relay.create_device()
    assert ok_json(relay, a, "contacts", "invite", b["pin"].lower()) == {
        "pin": b["pin"],
        "state": "invited",
    }
    [mine] = ok_json(relay, a, "contacts", "list")
    assert (mine["pin"], mine["state"]) == (b["pin"], "invited")
    assert mine["since"].endswith("Z")
    assert [x["state"] for x in ok_json(relay, b, "contacts", "list")] == ["pending"]
    assert ok_json(relay, b, "contacts", "accept", a["pin"]) == {
        "pin": a["pin"],
        "state": "accepted",
    }
    sent = ok_json(relay, a, "send", b["pin"], "hello over the CLI")
    assert (sent["to"], sent["state"]) == (b["pin"], "sent")
    assert MESSAGE_ID.match(sent["id"])
    assert [(m["id"], m["from"], m["data"]["text"]) for m in inbox_chats(relay, b)] == [
        (sent["id"], a["pin"], "hello over the CLI")
    ]
    # listen says what each message is and whose: the invitation, then the chat.
    invited, chat = ok(relay, b, "listen", "--count", "2").splitlines()
    assert f"#1 contact from {a['pin']} " in invited and '"invited"' in invited
    assert f"#2 chat from {a['pin']} " in chat and "hello over the CLI" in chat
    # c invites a; a declines; a blocks and unblocks c; a removes b.
    ok_json(relay, c, "contacts", "invite", a["pin"])
    assert ok_json(relay, a, "contacts", "decline", c["pin"]) == {
        "pin": c["pin"],
        "state": "declined",
    }
    assert ok_json(relay, a, "contacts", "block", c["pin"]) == {
        "pin": c["pin"],
        "state": "blocked",
    }
    assert {x["pin"]: x["state"] for x in ok_json(relay, a, "contacts", "list")} == {
        b["pin"]: "accepted",
        c["pin"]: "blocked",
    }
    assert ok_json(relay, a, "contacts", "unblock", c["pin"]) == {
        "pin": c["pin"],
        "unblocked": True,
    }
    assert ok_json(relay, a, "contacts", "remove", b["pin"]) == {"pin": b["pin"], "removed": True}
    assert ok_json(relay, a, "contacts", "list") == []
    one_line_error(as_device(relay, a, "send", b["pin"], "still there?"), "403")


def test_plain_answers_are_sentences_and_tables(relay: RelayProc) -> None:
    a, b = relay.create_device(), relay.create_device()
    assert "no contacts yet" in ok(relay, a, "contacts", "list")
    said = ok(relay, a, "contacts", "invite", b["pin"])
    assert (
        said.strip()
        == f"invited {b['pin']}: they accept with `pinrelay contacts accept {a['pin']}`"
    )
    table = ok(relay, b, "contacts", "list")
    assert a["pin"] in table and "pending" in table and f"contacts accept {a['pin']}" in table
    assert ok(relay, b, "contacts", "accept", a["pin"]).strip() == f"{a['pin']} is a contact now"
    table = ok(relay, a, "contacts", "list")
    assert "accepted" in table and f"pinrelay chat {b['pin']}" in table
    # send prints the message id alone, for scripts: ID=$(pinrelay send ...)
    out = ok(relay, a, "send", b["pin"], "plain")
    assert MESSAGE_ID.match(out.strip()), out
    assert [m["id"] for m in inbox_chats(relay, b)] == [out.strip()]


def test_bad_input_is_one_readable_line(relay: RelayProc) -> None:
    a, b = relay.create_device(), relay.create_device()
    one_line_error(as_device(relay, a, "send", "xyz", "hi"), "neither a PIN")
    one_line_error(as_device(relay, a, "contacts", "invite", "0xBADF00"), "8 hexadecimal digits")
    one_line_error(as_device(relay, a, "send", b["pin"], "hi"), "is not a contact that accepted")
    one_line_error(as_device(relay, a, "contacts", "accept", b["pin"]), "404 no invitation")
    one_line_error(as_device(relay, a, "send", b["pin"], "hi", "--wait", "soon"), "--wait must")
    one_line_error(as_device(relay, a, "group", "leave", "not-a-group"), "is not a group id")
    one_line_error(as_device(relay, a, "send", b["pin"], ""), "the text is empty")
    one_line_error(as_device(relay, a, "group", "create", "", b["pin"]), "name is empty")
    one_line_error(as_device(relay, {**a, "token": "wrong"}, "contacts", "list"), "401")
    unreachable = f"http://127.0.0.1:{free_port()}"
    one_line_error(as_device(relay, a, "contacts", "list", url=unreachable), "cannot reach")
    r = as_device(relay, a, "chat", b["pin"])  # stdin is no terminal here
    one_line_error(r, "needs a terminal")


def befriend_cli(relay: RelayProc, a: Dev, b: Dev) -> None:
    ok_json(relay, a, "contacts", "invite", b["pin"])
    ok_json(relay, b, "contacts", "accept", a["pin"])


def test_send_waits_for_the_read_receipt_and_says_so(relay: RelayProc) -> None:
    a, b = relay.create_device(), relay.create_device()
    befriend_cli(relay, a, b)
    argv = [sys.executable, "-m", "pinrelay.cli", "send", b["pin"], "read me", "--wait", "read"]
    proc = subprocess.Popen(
        argv,
        env=env_for(a, relay.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with httpx.Client(
            base_url=relay.url, timeout=10, headers={"Authorization": f"Bearer {b['token']}"}
        ) as http:

            def delivered_to_b() -> list[dict[str, Any]]:
                inbox = http.get(f"/v1/devices/{b['pin']}/inbox").json()
                return [m for m in inbox["messages"] if m["kind"] == "chat"]

            [chat] = wait_until(delivered_to_b, 20, 0.1, "the chat reaches b")
            http.post(f"/v1/devices/{b['pin']}/ack", json={"cursor": chat["cursor"]})
        with DeviceClient(relay.url, b["pin"], b["token"]) as bc:
            assert bc.read(chat["id"]) == 1
        stdout, stderr = proc.communicate(timeout=30 * TIMEOUT_FACTOR)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout.strip() == chat["id"]
    lines = stderr.splitlines()
    assert any(f"waiting for {b['pin']} to read it" in line for line in lines), stderr
    # b's acceptance notice came meanwhile: shown, not swallowed.
    assert any("received while waiting" in line and "contact" in line for line in lines), stderr
    assert f"delivered by {b['pin']}; waiting for it to be read…" in lines, stderr
    assert lines[-1] == f"read by {b['pin']}"


def ack_all(relay: RelayProc, device: Dev) -> list[dict[str, Any]]:
    """Take ``device``'s inbox and acknowledge it (its senders get delivered receipts)."""
    headers = {"Authorization": f"Bearer {device['token']}"}
    with httpx.Client(base_url=relay.url, timeout=10, headers=headers) as http:
        inbox = http.get(f"/v1/devices/{device['pin']}/inbox").json()
        http.post(f"/v1/devices/{device['pin']}/ack", json={"cursor": inbox["cursor"]})
    messages: list[dict[str, Any]] = inbox["messages"]
    return messages


def test_listen_prints_receipts_once_and_does_not_count_them(relay: RelayProc) -> None:
    a, b = relay.create_device(), relay.create_device()
    befriend_cli(relay, a, b)
    sent = ok_json(relay, a, "send", b["pin"], "did you get it?")
    [chat] = [m for m in ack_all(relay, b) if m["kind"] == "chat"]  # delivered
    with DeviceClient(relay.url, b["pin"], b["token"]) as bc:
        assert bc.read(chat["id"]) == 1
    # a holds b's acceptance notice, then the two receipts: --count 1 is the notice
    # alone, so listen runs until the receipts are seen and is stopped.
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinrelay.cli", "listen", "--json"],
        env=env_for(a, relay.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(
        target=lambda: lines.extend(json.loads(line) for line in proc.stdout or []),
        daemon=True,
    )
    try:
        reader.start()
        wait_until(lambda: len(lines) >= 3, 30, 0.1, "the notice and two receipts")
        # Printed, then acknowledged: stopped once the relay has the ack.
        wait_until(lambda: not inbox(relay, a), 30, 0.1, "a's acks reach the relay")
    finally:
        proc.terminate()
        proc.wait(10 * TIMEOUT_FACTOR)
        reader.join(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert [m["kind"] for m in lines] == ["contact", "receipt", "receipt"], lines
    assert lines[1:] == [
        {"kind": "receipt", "id": sent["id"], "state": state, "from": b["pin"]}
        for state in ("delivered", "read")
    ]
    # Without --json: one line each; --count 1 counts b's answer, not the receipt
    # stored before it.
    again = ok_json(relay, a, "send", b["pin"], "and this?")
    ack_all(relay, b)
    ok_json(relay, b, "send", a["pin"], "yes")
    r = as_device(relay, a, "listen", "--count", "1")
    assert r.returncode == 0, r.stderr
    receipt, answer = r.stdout.splitlines()
    assert receipt == f"receipt {again['id']} delivered by {b['pin']}"
    assert f"chat from {b['pin']}" in answer and '"text": "yes"' in answer, answer


def test_send_wait_times_out_in_one_line_then_json(relay: RelayProc) -> None:
    a, b = relay.create_device(), relay.create_device()
    befriend_cli(relay, a, b)
    r = as_device(
        relay, a, "send", b["pin"], "nobody home", "--wait", "delivered", "--timeout", "1"
    )
    one_line_error(r, "no delivered receipt within 1 s (the message is stored: ")
    first = r.stdout.strip()
    assert MESSAGE_ID.match(first) and first in r.stderr
    # With --json, a script still gets the id and how far it got.
    r = as_device(
        relay, a, "send", b["pin"], "still nobody", "--wait", "read", "--timeout", "1", "--json"
    )
    one_line_error(r, "no read receipt within 1 s (the message is stored: ")
    gave_up = json.loads(r.stdout)
    assert (gave_up["to"], gave_up["state"], gave_up["by"]) == (b["pin"], "sent", None)
    assert MESSAGE_ID.match(gave_up["id"]) and gave_up["id"] in r.stderr
    argv = ["send", b["pin"], "now?", "--wait", "delivered", "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinrelay.cli", *argv],
        env=env_for(a, relay.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        taken = wait_until(lambda: len(inbox_chats(relay, b)) == 3, 20, 0.1, "all at b")
        assert taken
        ack_all(relay, b)
        stdout, stderr = proc.communicate(timeout=30 * TIMEOUT_FACTOR)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    result = json.loads(stdout)
    assert (result["to"], result["state"], result["by"]) == (b["pin"], "delivered", b["pin"])
    assert MESSAGE_ID.match(result["id"]) and result["id"] != first
    events = [json.loads(line) for line in stderr.splitlines()]
    assert [e["event"] for e in events[:2]] == ["connecting", "listening"]
    # The first message's receipt came too: shown as received, not taken for this one.
    assert {"event": "received", "kind": "receipt", "id": first, "state": "delivered"} in events


# --- groups ------------------------------------------------------------------------
def test_group_commands(relay: RelayProc) -> None:
    a, b, c, stranger = (relay.create_device() for _ in range(4))
    befriend_cli(relay, a, b)
    befriend_cli(relay, a, c)
    made = ok_json(relay, a, "group", "create", "friends", b["pin"], stranger["pin"])
    gid = made["group"]
    assert (made["name"], made["creator"]) == ("friends", a["pin"])
    assert b["pin"] in made["members"] and a["pin"] in made["members"]
    assert made["ignored"] == [stranger["pin"]]
    added = ok(relay, a, "group", "add", gid.lower(), c["pin"])
    assert "members added" in added and " ".join(sorted([a["pin"], b["pin"], c["pin"]])) in added
    none = ok(relay, a, "group", "add", gid, stranger["pin"])
    assert "no member added" in none and f"not your contacts): {stranger['pin']}" in none
    assert "no member added" in ok(relay, a, "group", "add", gid, b["pin"])  # in it already
    listed = ok_json(relay, b, "group", "list")
    assert [g["group"] for g in listed] == [gid]
    assert set(listed[0]) == {"group", "name", "creator", "members"}
    assert gid in ok(relay, b, "group", "list")
    one_line_error(as_device(relay, b, "group", "remove", gid, c["pin"]), "403")
    sent = ok_json(relay, a, "send", gid, "hello group")
    assert sent["to"] == gid
    assert [m["data"]["group"] for m in inbox_chats(relay, b)] == [gid]
    assert ok_json(relay, a, "group", "remove", gid, c["pin"]) == {
        "group": gid,
        "pin": c["pin"],
        "removed": True,
    }
    assert ok(relay, b, "group", "leave", gid).strip() == f"left {gid}"
    assert ok_json(relay, b, "group", "list") == []
    assert "no groups" in ok(relay, b, "group", "list")
    one_line_error(as_device(relay, b, "group", "add", gid, c["pin"]), "")
    plain = ok(relay, a, "group", "create", "plain", b["pin"], stranger["pin"])
    assert "group created" in plain and f"left out (not your contacts): {stranger['pin']}" in plain
