"""tests/api/test_credits.py on relays whose store is a 3-node NATS JetStream cluster
(store/jetstream/credits.py): the hand-calculated month (its incidents written by a
store the test opens on the cluster, beside the running relay), the make-good and
its codes, and a make-good whose relay is SIGKILLed mid fan-out, finished by another
relay on the same cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pinrelay.core.incidents import Incident
from pinrelay.core.readings import Readings
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.testing.natsproc import NatsCluster
from tests.api.test_credits import (
    admin,
    check_a_killed_make_good_resumes,
    check_credits_of_a_synthetic_month,
    test_a_make_good_reaches_each_device_once_and_its_code_redeems_once,
    test_a_service_level_is_the_relay_admins_to_set,
    test_make_goods_asked_for_at_once_are_one,
)
from tests.clusterrelay import nats_cluster, relay
from tests.conftest import RelayFactory
from tests.relayproc import RelayProc

__all__ = [
    "admin",
    "nats_cluster",
    "relay",
    "test_a_make_good_reaches_each_device_once_and_its_code_redeems_once",
    "test_a_service_level_is_the_relay_admins_to_set",
    "test_make_goods_asked_for_at_once_are_one",
]


def test_credits_of_a_synthetic_month_match_the_hand_calculation(
    relay: RelayProc, nats_cluster: NatsCluster
) -> None:
    def put(_relay: RelayProc, incidents: Sequence[Incident], readings: Sequence[Readings]) -> None:
        async def write() -> None:
            store = JetStreamStore(nats_cluster.urls)
            await store.open()
            try:
                for i in incidents:
                    assert await store.put_incident(i)
                await store.put_readings(readings)
            finally:
                await store.close()

        asyncio.run(write())

    check_credits_of_a_synthetic_month(relay, put)


def test_another_relay_finishes_a_make_good_whose_relay_was_killed(
    nats_cluster: NatsCluster, relay_factory: RelayFactory
) -> None:
    store = ["--store", ",".join(nats_cluster.urls), "--broadcast-takeover", "1"]
    first = relay_factory("first", extra=[*store, "--node-id", "first", "--broadcast-page", "5"])
    second = relay_factory("second", extra=[*store, "--node-id", "second"])
    check_a_killed_make_good_resumes(first, lambda: second, n=100)
