"""The HTTP API against its own OpenAPI document, with schemathesis (a real outside
tool, run as its CLI): no 5xx, every response matches the schema, every route."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import RelayFactory

#: A device's own routes, which take its token.
DEVICE_ROUTES = "contacts|blocks|chat|read|groups|grants|channels|refusals"


def test_api_conforms_to_its_openapi_document(relay_factory: RelayFactory, tmp_path: Path) -> None:
    # Negative cases send no or wrong keys on purpose: lift the per-source limit
    # so they meet 401, not 429.
    relay = relay_factory(extra=["--auth-failure-limit", "1000000"])
    # Inbox routes take a device token, not an API key: give them a real device,
    # and the push routes a real PIN, so both reach their 2xx paths too.
    device, target = relay.create_device("inbox"), relay.create_device("push")
    # The push service needs a real subscription to reach its 2xx paths.
    sub = httpx.post(
        f"{relay.url}/v1/devices/{target['pin']}/subscriptions",
        json={},
        headers={"Authorization": f"Bearer {target['token']}"},
    ).json()["id"]
    # Channels belong to a tenant: a key of the default tenant publishes one.
    broadcaster = httpx.post(
        f"{relay.url}/v1/tenants/default/keys",
        json={"name": "broadcasts", "scope": "broadcast"},
        headers=relay.admin_headers(),
    ).json()["key"]
    channel = httpx.post(
        f"{relay.url}/v1/channels",
        json={"name": "news", "class": "service"},
        headers={"Authorization": f"Bearer {broadcaster}"},
    ).json()["id"]
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f"""
headers = {{ Authorization = "Bearer {relay.admin_key}" }}

[[operations]]
include-path = "/v1/devices/{{pin}}/inbox"
headers = {{ Authorization = "Bearer {device["token"]}" }}
# A long-poll holds each case up to a minute; the wait itself is tested elsewhere.
parameters = {{ pin = "{device["pin"]}", wait = 0 }}

[[operations]]
include-path = "/v1/devices/{{pin}}/ack"
headers = {{ Authorization = "Bearer {device["token"]}" }}
parameters = {{ pin = "{device["pin"]}" }}

[[operations]]
include-path = "/v1/devices/{{pin}}/messages"
parameters = {{ pin = "{target["pin"]}" }}

# Contacts, chat and groups take the device's token too.
[[operations]]
include-path-regex = "^/v1/devices/[{{]pin[}}]/({DEVICE_ROUTES})"
headers = {{ Authorization = "Bearer {device["token"]}" }}
parameters = {{ pin = "{device["pin"]}" }}

# Portability: the export and the move request take the device's token. A
# generated tenant does not exist (404) or is the device's own, "default" (409).
[[operations]]
include-path-regex = "^/v1/devices/[{{]pin[}}]/(export|move)"
headers = {{ Authorization = "Bearer {device["token"]}" }}
parameters = {{ pin = "{device["pin"]}" }}
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "422", "429"]

# A device's Web Push subscriptions take its token. A generated key has the shape
# of a P-256 point but is almost never on the curve: 422, as documented.
[[operations]]
include-path-regex = "^/v1/devices/[{{]pin[}}]/subscriptions"
headers = {{ Authorization = "Bearer {device["token"]}" }}
parameters = {{ pin = "{device["pin"]}" }}
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "422", "429"]

# The push service takes no key. Its body is ciphertext with a binary header the
# document cannot describe: a generated one is refused with 400, as documented.
[[operations]]
include-path-regex = "^/push/"
headers = {{ Authorization = "" }}
parameters = {{ sub = "{sub}", wait = 0 }}
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "400", "401", "404", "410", "413", "429"
]

# The Matrix gateway takes no key; generated pushkeys name no subscription: rejected.
[[operations]]
include-path = "/_matrix/push/v1/notify"
headers = {{ Authorization = "" }}

# Channels and broadcasts take a tenant's broadcast key (the relay's admin key
# makes none: 403); the device routes above join it with the inbox device, of
# the same default tenant.
[[operations]]
include-path-regex = "^/v1/(channels|broadcasts)"
headers = {{ Authorization = "Bearer {broadcaster}" }}
parameters = {{ channel = "{channel}" }}

[[operations]]
include-path = "/v1/devices/{{pin}}/pairing"
parameters = {{ pin = "{target["pin"]}" }}

# Incidents take the relay's admin key (the default header). A generated id names
# no incident (404); one the stateful phase resolved takes no update (409).
[[operations]]
include-path-regex = "^/v1/incidents"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409"]

# Webhooks take the relay's admin key (the default header). A generated url is
# seldom an http(s) URL (422); the 21st subscription is refused (409); a generated
# id names none (404).
[[operations]]
include-path-regex = "^/v1/webhooks"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "409", "422"]

# A code the stateful phase made and redeemed, redeemed again: 410, as documented.
[[operations]]
include-path = "/v1/pairing"
checks.positive_data_acceptance.expected-statuses = ["2xx", "404", "410", "429"]
"""
    )
    st = Path(sys.executable).parent / "st"
    examples = os.environ.get("PINRELAY_SCHEMATHESIS_EXAMPLES", "25")
    result = subprocess.run(
        [
            str(st),
            "--config-file",
            str(config),
            "run",
            f"{relay.url}/openapi.json",
            "--checks",
            "all",
            # Stateful sequences may reuse a group after its only member left (which
            # deletes it, as PROTOCOL says): a 404 then is right, and this check
            # calls it "created resource not found".
            "--exclude-checks",
            "ensure_resource_availability",
            "--max-examples",
            examples,
            "--seed",
            "20261123",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=420 if int(examples) <= 100 else 7200,
        cwd=tmp_path,
        env={**os.environ, "NO_COLOR": "1"},
    )
    out = result.stdout
    assert result.returncode == 0, out[-6000:] + result.stderr[-2000:]
    assert "Selected: 85/85" in out and "Tested: 85" in out, out[-3000:]
    assert "Authentication failed" not in out, out[-3000:]
    summary = next(line for line in out.splitlines() if " generated, " in line)
    generated, passed = (int(part.split()[0]) for part in summary.split(",")[:2])
    assert generated >= 500 and passed == generated, summary
