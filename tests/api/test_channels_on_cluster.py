"""tests/api/test_channels.py on relays whose store is a 3-node NATS JetStream cluster
(store/jetstream/channels.py), and a fan-out that survives its relay: two relays on
one cluster, the one fanning out is SIGKILLed mid-way, the other resumes it."""

from __future__ import annotations

import httpx

from pinrelay.testing.natsproc import NatsCluster
from tests.api.test_channels import (
    _broadcast,
    _broadcasts_in,
    _channel,
    _finished,
    _join,
    _ok,
    admin,
    test_a_broadcast_reaches_exactly_the_consenting_members_once,
    test_another_tenant_learns_nothing_of_a_channel,
    test_bad_requests_change_nothing,
    test_linked_members_get_it_at_once_and_their_acks_are_counted,
    test_the_daily_marketing_cap_holds,
)
from tests.api.test_tenants import Tenant
from tests.clusterrelay import nats_cluster, relay
from tests.conftest import RelayFactory

__all__ = [
    "admin",
    "nats_cluster",
    "relay",
    "test_a_broadcast_reaches_exactly_the_consenting_members_once",
    "test_another_tenant_learns_nothing_of_a_channel",
    "test_bad_requests_change_nothing",
    "test_linked_members_get_it_at_once_and_their_acks_are_counted",
    "test_the_daily_marketing_cap_holds",
]


def test_another_relay_resumes_a_fan_out_whose_relay_was_killed(
    nats_cluster: NatsCluster, relay_factory: RelayFactory
) -> None:
    store = ["--store", ",".join(nats_cluster.urls), "--broadcast-takeover", "1"]
    first = relay_factory("first", extra=[*store, "--node-id", "first", "--broadcast-page", "20"])
    second = relay_factory("second", extra=[*store, "--node-id", "second"])
    with httpx.Client(base_url=first.url, headers=first.admin_headers(), timeout=30) as http:
        t = Tenant(http, "big")
        channel = _channel(t, "everyone")
        members = [t.device() for _ in range(200)]
        for d in members:
            _join(http, d, channel)
        sent: list[str] = []
        for _ in range(5):  # until the kill lands mid fan-out
            sent.append(_broadcast(t, channel, {"n": len(sent)}))
            with t.client("broadcast") as c:
                if _ok(c.get(f"/v1/broadcasts/{sent[-1]}"))["done_at"] is None:
                    first.kill()
                    break
        else:
            raise AssertionError("every fan-out ended before the kill: make pages smaller")
    t.base_url = second.url
    with httpx.Client(base_url=second.url, timeout=30) as http:
        for bid in sent:
            try:
                view = _finished(t, bid, timeout=30)
            except TimeoutError:
                print(second.output()[-5000:])
                raise
            assert (view["members"], view["stored"]) == (200, 200), view
        for d in members:
            assert sorted(_broadcasts_in(http, d)) == sorted(sent), d["pin"]
