"""tests/api/test_incidents.py on relays whose store is a 3-node NATS JetStream cluster
(store/jetstream/incidents.py), and an incident seen and changed from every relay:
one relay opens it, a second shows it on its status page, resolves it, and the
first sees that."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from pinrelay.testing.natsproc import NatsCluster
from pinrelay.testing.wait import wait_until
from tests.api.test_incidents import (
    _ok,
    admin,
    open_incident,
    public_incidents,
    states,
    test_a_tenant_admin_reads_only_what_affects_its_tenant,
    test_an_incident_opens_grows_and_resolves_on_every_view,
    test_bad_requests_change_nothing,
)
from tests.clusterrelay import nats_cluster, relay
from tests.conftest import RelayFactory

__all__ = [
    "admin",
    "nats_cluster",
    "relay",
    "test_a_tenant_admin_reads_only_what_affects_its_tenant",
    "test_an_incident_opens_grows_and_resolves_on_every_view",
    "test_bad_requests_change_nothing",
]


def test_every_relay_of_the_cluster_shows_and_changes_an_incident(
    nats_cluster: NatsCluster, relay_factory: RelayFactory
) -> None:
    store = ["--store", ",".join(nats_cluster.urls)]
    first = relay_factory("first", extra=[*store, "--node-id", "first"])
    second = relay_factory("second", extra=[*store, "--node-id", "second"])
    with (
        httpx.Client(base_url=first.url, headers=first.admin_headers(), timeout=30) as one,
        httpx.Client(base_url=second.url, headers=second.admin_headers(), timeout=30) as two,
    ):
        iid = open_incident(one, component="cluster", severity="major")["id"]
        wait_until(lambda: states(two)["cluster"] == "degraded", timeout=10)
        assert iid in public_incidents(second.url)
        _ok(two.post(f"/v1/incidents/{iid}/updates", json={"text": "From the second"}), 201)
        _ok(one.post(f"/v1/incidents/{iid}/updates", json={"text": "From the first"}), 201)
        # Updates through both relays at once: each lands (a lost compare-and-set
        # reads again and re-applies), none twice.
        with ThreadPoolExecutor(4) as pool:
            calls = [
                pool.submit(c.post, f"/v1/incidents/{iid}/updates", json={"text": f"{n}-{k}"})
                for k in range(8)
                for n, c in (("one", one), ("two", two))
            ]
            assert [f.result().status_code for f in calls] == [201] * 16
        done = _ok(two.post(f"/v1/incidents/{iid}/resolve"))
        texts = [u["text"] for u in done["updates"]]
        assert texts[:3] == ["Writes fail", "From the second", "From the first"]
        assert sorted(texts[3:]) == sorted(f"{n}-{k}" for k in range(8) for n in ("one", "two"))
        times = [u["at"] for u in done["updates"]]
        assert times == sorted(times)
        assert _ok(one.get(f"/v1/incidents/{iid}")) == done
        wait_until(lambda: states(one)["cluster"] == "operational", timeout=10)
        assert one.post(f"/v1/incidents/{iid}/updates", json={"text": "late"}).status_code == 409
    # A relay stopped and started again reads it from the cluster.
    first.stop()
    first.start()
    with httpx.Client(base_url=first.url, headers=first.admin_headers(), timeout=30) as one:
        assert _ok(one.get(f"/v1/incidents/{iid}")) == done
