"""Pairing codes over HTTP and the CLI (PROTOCOL "Pairing"), against a real relay.

Expiry and racing redemptions are the store's (tests/store/test_contract_pairing.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import httpx
import pytest

from pinrelay.core.errors import ErrorCode
from tests.conftest import RelayFactory
from tests.linkclient import error_then_close, link
from tests.relayproc import RelayProc

# Every test here on the `relay` fixture makes devices of its own: one relay for the
# module (tests/conftest.py).
pytestmark = pytest.mark.shared_relay

CODE_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{5}-[0-9A-HJKMNP-TV-Z]{5}$")


def pair(relay: RelayProc, pin: str) -> httpx.Response:
    return httpx.post(f"{relay.url}/v1/devices/{pin}/pairing", headers=relay.admin_headers())


def redeem(relay: RelayProc, code: Any) -> httpx.Response:
    return httpx.post(f"{relay.url}/v1/pairing", json={"code": code})


def inbox_status(relay: RelayProc, pin: str, token: str) -> int:
    r = httpx.get(
        f"{relay.url}/v1/devices/{pin}/inbox", headers={"Authorization": f"Bearer {token}"}
    )
    return r.status_code


async def test_a_code_gives_a_new_token_once(relay: RelayProc) -> None:
    device = relay.create_device()
    pin = device["pin"]
    ws, _ = await link(relay, device)
    r = pair(relay, pin)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["pin"] == pin and CODE_RE.fullmatch(made["code"]), made
    assert made["expires_at"].endswith("Z")
    # Typed by a person: lower case, a space for the hyphen, O for 0 and l for 1.
    typed = made["code"].lower().replace("-", " ").replace("0", "O").replace("1", "l")
    r = redeem(relay, typed)
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["pin"], got["link_urls"]) == (pin, [relay.link_url])
    assert got["token"] != device["token"]
    # The old token stops working at once: its link closes, its requests fail.
    error, close = await error_then_close(ws)
    assert (error.code, close) == ("unauthorized", ErrorCode.UNAUTHORIZED.close_code)
    assert inbox_status(relay, pin, device["token"]) == 401
    assert inbox_status(relay, pin, got["token"]) == 200
    # Used once.
    again = redeem(relay, made["code"])
    assert again.status_code == 410
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["type"] == "https://pinrelay.dev/problems/gone"


def test_a_newer_code_replaces_an_earlier_one(relay: RelayProc) -> None:
    """An operator who makes a second code (the first misread, say) leaves only that
    one usable; the earlier one is 410 and changes nothing."""
    device = relay.create_device()
    pin = device["pin"]
    first, second = (pair(relay, pin).json()["code"] for _ in range(2))
    r = redeem(relay, first)
    assert r.status_code == 410, r.text
    assert r.json()["detail"] == "a newer pairing code was made for this device: use that one"
    assert inbox_status(relay, pin, device["token"]) == 200
    r = redeem(relay, second)
    assert r.status_code == 200, r.text
    assert inbox_status(relay, pin, r.json()["token"]) == 200


def test_unknown_codes_are_404_and_limited(relay_factory: RelayFactory) -> None:
    relay = relay_factory(extra=["--auth-failure-limit", "3"])
    for code in ("00000-00000", "not a code", "x" * 64):
        r = redeem(relay, code)
        assert r.status_code == 404, r.text
        assert r.json()["detail"] == "unknown pairing code"
    r = redeem(relay, "00000-00001")
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) > 0
    # Even a right code waits: the limit is checked first.
    made = pair(relay, relay.create_device()["pin"]).json()
    assert redeem(relay, made["code"]).status_code == 429


@pytest.mark.parametrize(
    ("body", "status"), [({"code": ""}, 422), ({"code": 5}, 422), ({"kode": "x"}, 422)]
)
def test_bad_bodies(relay: RelayProc, body: dict[str, Any], status: int) -> None:
    r = httpx.post(f"{relay.url}/v1/pairing", json=body)
    assert r.status_code == status, r.text


def test_making_a_code_needs_a_key_and_a_device(relay: RelayProc) -> None:
    pin = relay.create_device()["pin"]
    assert httpx.post(f"{relay.url}/v1/devices/{pin}/pairing").status_code == 401
    with relay.client() as c:
        push_key = c.create_key("pusher", "push")["key"]
    r = httpx.post(
        f"{relay.url}/v1/devices/{pin}/pairing", headers={"Authorization": f"Bearer {push_key}"}
    )
    assert r.status_code == 403
    other = "00000000" if pin != "00000000" else "00000001"
    assert pair(relay, other).status_code == 404


def test_cli_device_pair(relay: RelayProc) -> None:
    pin = relay.create_device()["pin"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PINRELAY_")}
    env |= {"PINRELAY_KEY": str(relay.admin_key), "PINRELAY_URL": relay.url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pinrelay.cli", "device", "pair", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    r = cli(pin.lower(), "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["pin"] == pin and CODE_RE.fullmatch(made["code"])
    assert redeem(relay, made["code"]).status_code == 200
    r = cli(pin)
    assert r.returncode == 0, r.stderr
    assert f"{relay.url}/app" in r.stdout and "code" in r.stdout
    help_text = cli("--help").stdout
    assert "old token stops working" in " ".join(help_text.split())
