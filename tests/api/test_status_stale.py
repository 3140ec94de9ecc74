"""A relay whose store cannot be read still serves its status pages, marked stale
(PROTOCOL "Incidents and status"): a relay on a 3-node NATS cluster loses two of the
nodes (the store loses its quorum, reads fail), its ``/status.json`` turns
``"stale": true`` with ``as_of`` frozen at its last read and still lists what it
knew, ``/status`` says since when it cannot reach its store, and the Atom feed's
``updated`` stays that of its newest entry; with the nodes back, all turn fresh.

Why the cluster and not SQLite: a SQLite relay reads the file through its own
connection, which a stopped writer process does not stop (WAL readers never wait
for the writer), and a lock that did stop it would block the relay's event loop
for the busy timeout, pages included (docs/DECISIONS.md entry 60).
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx

from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.testing.natsproc import NatsCluster
from pinrelay.testing.wait import wait_until
from tests.api.test_incidents import ATOM, _ok, open_incident
from tests.conftest import RelayFactory


def status(url: str) -> dict[str, Any]:
    body: dict[str, Any] = _ok(httpx.get(f"{url}/status.json", timeout=10))
    return body


def feed_updated(url: str) -> str:
    r = httpx.get(f"{url}/status.atom", timeout=10)
    feed = ET.fromstring(r.content)  # noqa: S314 (our own relay's feed)
    return feed.findtext(f"{ATOM}updated") or ""


def test_a_relay_that_cannot_read_its_store_serves_what_it_knew_marked_stale(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        store = ["--store", ",".join(cluster.urls), "--node-id", "stale"]
        relay = relay_factory("stale", extra=store)
        with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
            made = open_incident(admin, component="cluster", severity="critical")
        fresh = status(relay.url)
        assert fresh["stale"] is False and made["id"] in [i["id"] for i in fresh["incidents"]]
        assert "cannot reach its store" not in httpx.get(f"{relay.url}/status").text
        opened_at = made["updates"][0]["at"]
        assert feed_updated(relay.url) == opened_at

        for node in cluster.nodes[1:]:
            node.kill()  # two of three: no quorum, no stream leader, reads fail
        killed = time.monotonic()
        wait_until(lambda: status(relay.url)["stale"], timeout=60, interval=0.5)
        print(f"stale {time.monotonic() - killed:.1f} s after two nodes were killed")
        stale = status(relay.url)
        as_of = parse_rfc3339(stale["as_of"])
        assert made["id"] in [i["id"] for i in stale["incidents"]]  # what it knew
        assert {c["name"]: c["state"] for c in stale["components"]}["cluster"] == "outage"
        assert len(stale["components"][0]["days"]) == 90
        page = httpx.get(f"{relay.url}/status", timeout=10).text
        assert "This relay cannot reach its store since" in page
        assert "what follows may be out of date" in page and stale["as_of"] in page
        assert feed_updated(relay.url) == opened_at
        again = status(relay.url)  # no read succeeds: the last one stays
        assert again["stale"] is True and again["as_of"] == stale["as_of"]

        for node in cluster.nodes[1:]:
            node.start()
        restarted = time.monotonic()
        cluster.wait_ready(60)
        wait_until(lambda: not status(relay.url)["stale"], timeout=90, interval=0.5)
        print(f"fresh {time.monotonic() - restarted:.1f} s after they were started again")
        back = status(relay.url)
        assert parse_rfc3339(back["as_of"]) > as_of
        assert made["id"] in [i["id"] for i in back["incidents"]]
        assert "cannot reach its store" not in httpx.get(f"{relay.url}/status").text
    finally:
        cluster.stop()
