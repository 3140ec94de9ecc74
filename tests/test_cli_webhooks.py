"""``pinrelay webhook add|list|show|delete`` against a real relay: a subscription made
from the command line (its secret made and shown once), listed, shown and deleted;
bad input is one readable line."""

from __future__ import annotations

from tests.relayproc import RelayProc
from tests.test_cli import ok_json, one_line_error, run


def test_a_webhook_from_the_command_line(relay: RelayProc) -> None:
    made = ok_json(relay, "webhook", "add", "http://127.0.0.1:9/hook")
    wid = made["id"]
    assert made["kind"] == "json" and len(made["secret"]) >= 16
    sms = ok_json(
        relay,
        "webhook",
        "add",
        "http://127.0.0.1:9/sms",
        "--kind",
        "sms",
        "--to",
        "+15550100",
        "--secret",
        "s" * 20,
    )
    assert sms["to"] == "+15550100" and "secret" not in sms
    assert [h["id"] for h in ok_json(relay, "webhook", "list")] == [wid, sms["id"]]
    shown = run("webhook", "show", wid, key=relay.admin_key, url=relay.url)
    assert shown.returncode == 0 and wid in shown.stdout and made["secret"] not in shown.stdout
    table = run("webhook", "list", key=relay.admin_key, url=relay.url)
    assert table.returncode == 0 and sms["id"] in table.stdout
    assert ok_json(relay, "webhook", "delete", wid) == {"id": wid, "deleted": True}
    assert [h["id"] for h in ok_json(relay, "webhook", "list")] == [sms["id"]]
    one_line_error(run("webhook", "show", wid, key=relay.admin_key, url=relay.url), "404")


def test_bad_input_is_one_line(relay: RelayProc) -> None:
    key, url = relay.admin_key, relay.url
    one_line_error(run("webhook", "add", "ftp://x/", key=key, url=url), "http")
    one_line_error(
        run("webhook", "add", "http://x/", "--secret", "short", key=key, url=url), "secret"
    )
    one_line_error(run("webhook", "add", "http://x/", "--kind", "fax", key=key, url=url), "kind")
    assert ok_json(relay, "webhook", "list") == []
