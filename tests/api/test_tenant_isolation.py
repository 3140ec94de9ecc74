"""Tenant isolation on one relay on SQLite, every operation of its OpenAPI document
(tests/api/tenant_isolation.py; the cluster's run is in tests/cluster)."""

from __future__ import annotations

from tests.api.tenant_isolation import check_isolation
from tests.conftest import RelayFactory


def test_no_tenant_key_reaches_another_tenants_objects(relay_factory: RelayFactory) -> None:
    # Device-token routes called with B's keys are failed logins: lift the per-source
    # limit so every pair of calls meets 401, not a 429 that one of them tipped.
    relay = relay_factory(extra=["--auth-failure-limit", "1000000"])
    assert relay.admin_key is not None
    # Some 33 operations name a device, key, tenant, subscription or group (Dec 2026).
    assert check_isolation(relay.url, relay.admin_key) >= 4 * 30
