"""tests/api/test_quotas.py on a relay whose store is a 3-node NATS JetStream
cluster: the rate and links quotas are the edges' (the same code), the devices
quota is the engine's count of a tenant's devices, by compare-and-set of its
record (store/jetstream/tenants.py, "Device counts")."""

from __future__ import annotations

import concurrent.futures

import httpx

from pinrelay.testing.natsproc import NatsCluster
from tests.api.test_quotas import (
    PUSH,
    SLOW_RATE,
    Tenant,
    admin,
    assert_over,
    test_a_flood_gets_429s_while_another_tenant_pushes_freely,
    test_a_tenant_over_its_links_quota_is_refused_on_the_link,
    test_a_tenant_over_its_rate_gets_429_and_nothing_is_stored,
    test_quotas_changed_later_apply_to_what_exists,
    test_stored_bytes_refuse_past_the_quota_until_the_device_acks,
    test_the_devices_quota_holds_under_concurrent_creates,
)
from tests.clusterrelay import nats_cluster, relay
from tests.conftest import RelayFactory
from tests.relayproc import RelayProc, wait_until

__all__ = [
    "admin",
    "nats_cluster",
    "relay",
    "test_a_flood_gets_429s_while_another_tenant_pushes_freely",
    "test_a_tenant_over_its_links_quota_is_refused_on_the_link",
    "test_a_tenant_over_its_rate_gets_429_and_nothing_is_stored",
    "test_quotas_changed_later_apply_to_what_exists",
    "test_relays_racing_to_create_devices_stop_at_the_quota",
    "test_stored_bytes_refuse_past_the_quota_until_the_device_acks",
    "test_the_devices_quota_holds_under_concurrent_creates",
]


def test_relays_racing_to_create_devices_stop_at_the_quota(
    admin: httpx.Client, relay: RelayProc, nats_cluster: NatsCluster, relay_factory: RelayFactory
) -> None:
    """Two relays on one cluster: creates racing through both never pass the devices
    quota (the tenant record's count, by compare-and-set); each relay holds half the
    rate quota while both are alive."""
    other = relay_factory("second", extra=["--store", ",".join(nats_cluster.urls)])
    wait_until(
        lambda: len(httpx.get(f"{relay.url}/v1/info").json()["link_urls"]) == 2,
        30,
        message="the second relay never showed among the live ones",
    )
    capped = Tenant(admin, "raced", devices=5, rate=SLOW_RATE, burst=4)
    auth = {"Authorization": f"Bearer {capped.keys['devices']}"}

    def create(n: int) -> httpx.Response:
        url = (relay if n % 2 else other).url
        return httpx.post(f"{url}/v1/devices", json={}, headers=auth, timeout=30)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(create, range(16)))
    assert sorted(r.status_code for r in answers) == [201] * 5 + [429] * 11
    for r in answers:
        if r.status_code == 429:
            assert_over(r, capped, "devices")
    pin = next(r.json()["pin"] for r in answers if r.status_code == 201)
    # burst 4 over 2 live relays: 2 at once through each.
    push = {"Authorization": f"Bearer {capped.keys['push']}"}
    for url in (relay.url, other.url):
        codes = [
            httpx.post(f"{url}/v1/devices/{pin}/messages", json=PUSH, headers=push).status_code
            for _ in range(3)
        ]
        assert codes == [201, 201, 429], (url, codes)
