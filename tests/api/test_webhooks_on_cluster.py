"""tests/api/test_webhooks.py on relays whose store is a 3-node NATS JetStream cluster
(store/jetstream/webhooks.py), and the lease: the relay that holds a subscription's
outbox is SIGKILLed with deliveries its receiver refused; another relay of the
cluster takes the lease over once it expires and delivers them, in order, each once.
Every relay hears every event (one outbox entry results): the receiver never gets
one id twice."""

from __future__ import annotations

import httpx

from pinrelay.testing.natsproc import NatsCluster
from pinrelay.testing.wait import wait_until
from tests.api.test_incidents import _ok, open_incident
from tests.api.test_webhooks import (
    FAST,
    admin,
    deliveries,
    receiver,
    subscribe,
    test_bad_subscriptions_answer_problems_and_store_nothing,
    test_deliveries_are_signed_and_reach_only_who_may_see_them,
    test_subscriptions_are_bounded_and_each_tenant_sees_its_own,
)
from tests.clusterrelay import nats_cluster, relay
from tests.conftest import RelayFactory
from tests.webhooks.receiver import Receiver

__all__ = [
    "admin",
    "nats_cluster",
    "receiver",
    "relay",
    "test_bad_subscriptions_answer_problems_and_store_nothing",
    "test_deliveries_are_signed_and_reach_only_who_may_see_them",
    "test_subscriptions_are_bounded_and_each_tenant_sees_its_own",
]


def test_another_relay_takes_over_a_killed_relays_deliveries(
    nats_cluster: NatsCluster, relay_factory: RelayFactory, receiver: Receiver
) -> None:
    store = ["--store", ",".join(nats_cluster.urls), *FAST]
    first = relay_factory("first", extra=[*store, "--node-id", "first"])
    with httpx.Client(base_url=first.url, headers=first.admin_headers(), timeout=30) as one:
        hook = subscribe(one, receiver.url)
        receiver.status = 503
        iid = open_incident(one, component="cluster", severity="major")["id"]
        # The first relay alone: it holds the lease and is refused.
        wait_until(lambda: len(receiver.got) >= 2, timeout=20)
        second = relay_factory("second", extra=[*store, "--node-id", "second"])
        with httpx.Client(base_url=second.url, headers=second.admin_headers(), timeout=30) as two:
            _ok(two.post(f"/v1/incidents/{iid}/updates", json={"text": "Through the second"}), 201)
            _ok(two.post(f"/v1/incidents/{iid}/resolve", json={"text": "Over"}))
            tried = len(receiver.got)
            wait_until(lambda: len(receiver.got) > tried, timeout=10)  # still refused
    first.kill()
    receiver.status = 200
    wait_until(lambda: len(deliveries(receiver)) >= 3, timeout=30)
    got = deliveries(receiver, hook["id"])
    assert [d["event"] for d in got] == ["opened", "updated", "resolved"]
    assert len({d["id"] for d in got}) == 3


def test_a_relay_that_stops_hands_its_deliveries_over_at_once(
    nats_cluster: NatsCluster, relay_factory: RelayFactory, receiver: Receiver
) -> None:
    # A lease far longer than the test: only letting go of it lets the second send.
    store = ["--store", ",".join(nats_cluster.urls), "--webhook-retry-cap", "0.5"]
    lease = ["--webhook-lease", "600"]
    first = relay_factory("first", extra=[*store, *lease, "--node-id", "handing-first"])
    with httpx.Client(base_url=first.url, headers=first.admin_headers(), timeout=30) as one:
        hook = subscribe(one, receiver.url)
        receiver.status = 503
        open_incident(one, component="delivery", severity="minor")
        wait_until(lambda: len(receiver.got) >= 2, timeout=20)
    relay_factory("second", extra=[*store, *lease, "--node-id", "handing-second"])
    first.stop(timeout=15)
    receiver.status = 200
    wait_until(lambda: len(deliveries(receiver)) >= 1, timeout=20)
    assert [d["event"] for d in deliveries(receiver, hook["id"])] == ["opened"]
