"""tests/api/test_quotas.py on a relay whose store is a 3-node NATS JetStream
cluster: the rate and links quotas are the edges' (the same code), the devices
quota is the engine's count of a tenant's devices, by compare-and-set of its
record (store/jetstream/tenants.py, "Device counts")."""

from __future__ import annotations

from tests.api.test_quotas import (
    admin,
    test_a_flood_gets_429s_while_another_tenant_pushes_freely,
    test_a_tenant_over_its_links_quota_is_refused_on_the_link,
    test_a_tenant_over_its_rate_gets_429_and_nothing_is_stored,
    test_quotas_changed_later_apply_to_what_exists,
    test_the_devices_quota_holds_under_concurrent_creates,
)
from tests.clusterrelay import nats_cluster, relay

__all__ = [
    "admin",
    "nats_cluster",
    "relay",
    "test_a_flood_gets_429s_while_another_tenant_pushes_freely",
    "test_a_tenant_over_its_links_quota_is_refused_on_the_link",
    "test_a_tenant_over_its_rate_gets_429_and_nothing_is_stored",
    "test_quotas_changed_later_apply_to_what_exists",
    "test_the_devices_quota_holds_under_concurrent_creates",
]
