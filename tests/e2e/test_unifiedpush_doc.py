"""docs/UNIFIEDPUSH.md run as written: every ```sh block, in order, in one shell,
against a fresh relay (as tests/e2e/test_readme.py runs the README's tour): register
a subscription, probe it, push with pywebpush, listen; play a Matrix homeserver
against the gateway; unregister."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tests.conftest import RelayFactory
from tests.e2e.test_readme import run_script

DOC = Path(__file__).resolve().parents[2] / "docs" / "UNIFIEDPUSH.md"


def blocks(language: str) -> list[str]:
    """The doc's ```<language> blocks, list indentation removed."""
    found = re.findall(rf"^ *```{language}\n(.*?)^ *```", DOC.read_text(), flags=re.S | re.M)
    return [re.sub(r"^ {3}", "", b, flags=re.M) for b in found]


def test_the_doc_commands_work(relay_factory: RelayFactory, tmp_path: Path) -> None:
    commands = blocks("sh")
    assert len(commands) >= 7, "UNIFIEDPUSH.md lost its commands"
    out = run_script(relay_factory, tmp_path, "\n".join(commands))
    endpoint = json.loads((tmp_path / "subscription.json").read_text())["endpoint"]
    lines = out.splitlines()
    # Step 3: the probe; step 4: a durable 201; step 5: the plaintext, decrypted.
    assert '{"unifiedpush":{"version":1}}' in lines, out
    assert re.search(rf"^201 Created  Location: {re.escape(endpoint)}/messages/", out, re.M), out
    assert re.search(r'webpush \S+ "hello over UnifiedPush"', re.sub(r"\s+", " ", out)), out
    # The homeserver's part: discovery, nothing rejected, the notification delivered.
    assert '{"unifiedpush":{"gateway":"matrix"}}' in lines, out
    assert '{"rejected":[]}' in lines, out
    [matrix] = [json.loads(line) for line in lines if '"kind": "matrix"' in line]
    data = matrix["data"]
    assert data["subscription"] == endpoint.rsplit("/", 1)[1]
    assert data["notification"]["event_id"] == "$3957tyerfgewrf384"
    assert data["notification"]["devices"][0]["pushkey"] == endpoint
    assert data["notification"]["counts"] == {"unread": 2}
    # Unregistered: the endpoint is gone and its keys forgotten.
    assert httpx.get(endpoint, timeout=10).status_code == 410
    keys = json.loads((tmp_path / "up-keys.json").read_text())
    assert keys["subscriptions"] == {}


def test_the_pusher_example_names_the_gateway() -> None:
    [pusher] = [json.loads(b) for b in blocks("json")]
    assert pusher["kind"] == "http"
    assert pusher["data"]["url"].endswith("/_matrix/push/v1/notify")
    assert pusher["pushkey"].startswith(pusher["data"]["url"].split("/_matrix/")[0] + "/push/")
