"""Node's ``web-push`` package (installed from the npm registry, pinned by
tests/webpush/node/package-lock.json) pushes to a pinrelay subscription: with VAPID,
TTL, Urgency and Topic, as an application server on node does."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.chat.conftest import Links
from tests.relayproc import RelayProc
from tests.webpush.helpers import next_webpush, subscribe

HERE = Path(__file__).parent / "node"
CACHE = Path(__file__).parents[2] / ".cache" / "node-web-push"


@pytest.fixture(scope="session")
def node_web_push() -> Path:
    """The folder with web-push installed (``npm ci`` once; kept in .cache/)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "node and npm are needed (Debian's nodejs, npm)"
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json", "send.js"):
        shutil.copyfile(HERE / name, CACHE / name)
    if not (CACHE / "node_modules" / "web-push" / "package.json").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=CACHE, check=True, timeout=300)
    return CACHE


def node_push(folder: Path, args: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        ["node", "send.js", json.dumps(args)],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


async def test_node_web_push_with_vapid(
    relay: RelayProc, links: Links, node_web_push: Path
) -> None:
    keys = node_push(node_web_push, {"generate": True})
    device = relay.create_device()
    sub = subscribe(relay, device, keys["publicKey"])
    ws, _ = await links(relay, device)
    options = {
        "TTL": 120,
        "urgency": "high",
        "topic": "news",
        "vapidDetails": {
            "subject": "mailto:ops@example.com",
            "publicKey": keys["publicKey"],
            "privateKey": keys["privateKey"],
        },
    }
    answer = node_push(
        node_web_push, {"subscription": sub.info, "payload": "hello from node", "options": options}
    )
    assert answer["statusCode"] == 201, answer
    assert answer["headers"]["location"].startswith(sub.info["endpoint"] + "/messages/")
    msg = await next_webpush(ws)
    assert sub.decrypt(msg) == b"hello from node"
    assert msg.urgency == "high"
    # Without its VAPID key, the restricted subscription refuses node's push too.
    del options["vapidDetails"]
    answer = node_push(
        node_web_push, {"subscription": sub.info, "payload": "unsigned", "options": options}
    )
    assert answer["statusCode"] == 401, answer


def doc_program(name: str) -> str:
    """The ```js block of docs/WEBPUSH.md that starts with ``// <name>:``."""
    doc = (Path(__file__).parents[2] / "docs" / "WEBPUSH.md").read_text()
    blocks: list[str] = re.findall(r"```js\n(.*?)```", doc, flags=re.S)
    [found] = [b for b in blocks if b.startswith(f"// {name}:")]
    return found


async def test_the_doc_node_program_works(
    relay: RelayProc, links: Links, node_web_push: Path, tmp_path: Path
) -> None:
    """docs/WEBPUSH.md's push.mjs, as written, against a relay on plain http (where
    web-push's own sendNotification cannot go: it speaks only https)."""
    keys = node_push(node_web_push, {"generate": True})  # as generate-vapid-keys --json
    device = relay.create_device()
    sub = subscribe(relay, device, keys["publicKey"])
    (tmp_path / "push.mjs").write_text(doc_program("push.mjs"))
    (tmp_path / "node_modules").symlink_to(node_web_push / "node_modules")
    (tmp_path / "subscription.json").write_text(json.dumps(sub.info))
    (tmp_path / "vapid.json").write_text(json.dumps(keys))
    ws, _ = await links(relay, device)
    done = await asyncio.to_thread(
        subprocess.run,
        ["node", "push.mjs"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout
    status, location = out.split()
    assert status == "201" and location.startswith(sub.info["endpoint"] + "/messages/"), out
    msg = await next_webpush(ws)
    assert sub.decrypt(msg) == b"Your order has shipped"
    assert msg.urgency == "high"
