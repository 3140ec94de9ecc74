"""``pinrelay credits``, ``pinrelay incident make-good`` and ``pinrelay code redeem``
against a real relay: a tenant with a service level is owed nothing in a month
without incidents; a make-good reaches its device with a code, which redeems once."""

from __future__ import annotations

import httpx

from pinrelay.testing.wait import wait_until
from tests.api.test_credits import TABLE, makegoods_in
from tests.api.test_tenants import Tenant
from tests.relayproc import RelayProc
from tests.test_cli import ok_json, one_line_error, run


def test_credits_make_good_and_redeem_from_the_command_line(relay: RelayProc) -> None:
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        t = Tenant(admin, "owed")
        device = t.device()
    credit_rows = [arg for below, pct in TABLE for arg in ("--credit", f"{below}:{pct}")]
    level = ok_json(
        relay, "tenant", "service-level", t.id, "--availability", "99.9", "--fee", "900",
        "--currency", "GBP", *credit_rows, "--delay-ms", "1000",
    )  # fmt: skip
    assert level["credits"] == TABLE and level["delay"] == {"delay_ms": 1000, "percent": 99.0}
    assert ok_json(relay, "tenant", "service-level", t.id) == level
    shown = run("tenant", "service-level", t.id, key=relay.admin_key, url=relay.url)
    assert shown.returncode == 0 and "below 99 %: 25 % of the fee" in shown.stdout, shown.stdout
    bad = ["tenant", "service-level", t.id, "--availability", "99", "--fee", "1"]
    one_line_error(run(*bad, "--credit", "lots", key=relay.admin_key, url=relay.url), "--credit")
    one_line_error(run(*bad, key=relay.admin_key, url=relay.url), "--credit")
    owed = ok_json(relay, "credits", "--month", "2026-03", "--tenant", t.id)
    assert owed["month"] == "2026-03"
    [mine] = owed["credits"]
    assert (mine["availability"], mine["amount"], mine["currency"]) == (100.0, 0, "GBP")
    table = run("credits", "--month", "2026-03", key=relay.admin_key, url=relay.url)
    assert table.returncode == 0 and t.id in table.stdout and "GBP" in table.stdout
    one_line_error(run("credits", "--month", "March", key=relay.admin_key, url=relay.url), "422")

    iid = ok_json(relay, "incident", "open", "delivery", "Late", "--severity", "critical")["id"]
    made = ok_json(relay, "incident", "make-good", iid, "--tenant", t.id, "--text", "Sorry")
    assert made["incident"] == iid and made["tenant"] == t.id

    def done() -> bool:
        again = ok_json(relay, "incident", "make-good", iid, "--tenant", t.id, "--text", "Sorry")
        return bool(again["done"]) and again["id"] == made["id"]

    wait_until(done, timeout=30, message="the make-good to end")
    with httpx.Client(base_url=relay.url, timeout=30) as http:
        [msg] = makegoods_in(http, device)
    code = msg["data"]["code"]
    redeemed = ok_json(relay, "code", "redeem", code)
    assert redeemed["pin"] == device["pin"] and redeemed["redeemed_at"]
    one_line_error(run("code", "redeem", code, key=relay.admin_key, url=relay.url), "409")
