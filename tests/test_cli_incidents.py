"""``pinrelay incident open|update|resolve|list|show`` against a real relay: an
operator's incident from opening to resolution, shown on /status.json; bad input is
one readable line."""

from __future__ import annotations

import json

import httpx

from tests.relayproc import RelayProc
from tests.test_cli import ok_json, one_line_error, run


def _states(relay: RelayProc) -> dict[str, str]:
    body = httpx.get(f"{relay.url}/status.json").json()
    return {c["name"]: c["state"] for c in body["components"]}


def test_an_incident_from_the_command_line(relay: RelayProc) -> None:
    made = ok_json(
        relay,
        "incident",
        "open",
        "delivery",
        "Messages are late",
        "--severity",
        "critical",
        "--region",
        "eu-west",
    )
    iid = made["id"]
    assert (made["state"], made["region"], made["severity"]) == ("open", "eu-west", "critical")
    assert _states(relay)["delivery"] == "outage"
    after = ok_json(relay, "incident", "update", iid, "Queue draining")
    assert [u["text"] for u in after["updates"]] == ["Messages are late", "Queue draining"]
    shown = run("incident", "show", iid, key=relay.admin_key, url=relay.url)
    assert shown.returncode == 0 and "Queue draining" in shown.stdout and iid in shown.stdout
    listed = ok_json(relay, "incident", "list")
    assert [i["id"] for i in listed] == [iid]
    table = run("incident", "list", key=relay.admin_key, url=relay.url)
    assert table.returncode == 0 and iid in table.stdout
    done = ok_json(relay, "incident", "resolve", iid, "All delivered")
    assert done["state"] == "resolved" and done["updates"][-1]["text"] == "All delivered"
    assert _states(relay)["delivery"] == "operational"
    again = run("incident", "resolve", iid, key=relay.admin_key, url=relay.url)
    one_line_error(again, "409")
    assert (
        json.loads(
            run("incident", "show", iid, "--json", key=relay.admin_key, url=relay.url).stdout
        )
        == done
    )


def test_bad_input_is_one_line(relay: RelayProc) -> None:
    one_line_error(
        run("incident", "open", "disk", "x", key=relay.admin_key, url=relay.url), "component"
    )
    one_line_error(
        run(
            "incident",
            "open",
            "store",
            "x",
            "--severity",
            "huge",
            key=relay.admin_key,
            url=relay.url,
        ),
        "--severity",
    )
    one_line_error(
        run("incident", "show", "I000000000000", key=relay.admin_key, url=relay.url), "404"
    )
    one_line_error(run("incident", "open", "store", "x", key="pra_wrong", url=relay.url), "401")


def test_the_monitors_from_the_command_line(relay: RelayProc) -> None:
    """A healthy relay: every component green, a store probe time, the links count."""
    from pinrelay.testing.wait import wait_until

    seen = wait_until(
        lambda: (m := ok_json(relay, "incident", "monitors"))["readings"] and m, 10, 0.2
    )
    assert seen["node"] == "node-1" and seen["red"] == [] and seen["unwritten"] == []
    assert seen["readings"]["store_ms"] is not None and seen["readings"]["links"] == 0
    text = run("incident", "monitors", key=relay.admin_key, url=relay.url)
    assert text.returncode == 0 and "every component green" in text.stdout
    one_line_error(run("incident", "monitors", key="pra_wrong", url=relay.url), "401")
