"""Tenants on relays whose store is a 3-node NATS cluster: the HTTP tests of
tests/api/test_tenants.py run again on one relay of a cluster (tests/clusterrelay.py),
and the isolation test generated from the OpenAPI document runs with tenants made
through one relay and every call made through another (their caches kept right by
KV watches: DECISIONS 46)."""

from __future__ import annotations

import uuid

from pinrelay.testing.natsproc import NatsCluster
from tests.api.tenant_isolation import check_isolation
from tests.api.test_tenants import (
    admin,
    test_a_tenant_admin_manages_its_own_keys,
    test_each_tenant_sees_its_own_devices_only,
    test_grants_let_another_tenant_push,
    test_suspension_and_deletion_stop_a_tenants_keys,
    test_the_relay_admin_key_keeps_working_in_the_default_tenant,
)
from tests.clusterrelay import nats_cluster, relay
from tests.conftest import RelayFactory

__all__ = [
    "admin",
    "nats_cluster",
    "relay",
    "test_a_tenant_admin_manages_its_own_keys",
    "test_each_tenant_sees_its_own_devices_only",
    "test_grants_let_another_tenant_push",
    "test_suspension_and_deletion_stop_a_tenants_keys",
    "test_the_relay_admin_key_keeps_working_in_the_default_tenant",
]


def test_isolation_across_relays(relay_factory: RelayFactory, nats_cluster: NatsCluster) -> None:
    store = ["--store", ",".join(nats_cluster.urls), "--auth-failure-limit", "1000000"]
    r1 = relay_factory("r1", extra=[*store, "--node-id", f"r1-{uuid.uuid4().hex[:6]}"])
    r2 = relay_factory("r2", extra=[*store, "--node-id", f"r2-{uuid.uuid4().hex[:6]}"])
    assert r2.admin_key is not None
    assert check_isolation(r2.url, r2.admin_key, setup_url=r1.url) >= 4 * 30
