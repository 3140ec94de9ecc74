"""Tenant isolation (tests/api/tenant_isolation.py) on a relay whose store is a 3-node
NATS cluster: every operation of the OpenAPI document, the portability routes
included, answers another tenant's keys as for ids that do not exist."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinrelay.testing.natsproc import NatsCluster, running_cluster
from tests.api.tenant_isolation import check_isolation
from tests.relayproc import RelayProc


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with running_cluster(tmp_path / "nats") as cluster:
        yield cluster


def test_no_tenant_key_reaches_another_tenants_objects_on_the_cluster(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    store = ["--store", ",".join(nats_cluster.urls), "--node-id", f"r-{uuid.uuid4().hex[:8]}"]
    # As on SQLite: B's keys on device-token routes are failed logins by the thousand.
    proc = RelayProc(tmp_path / "relay", extra=[*store, "--auth-failure-limit", "1000000"])
    try:
        relay = proc.start(timeout=60)
        assert relay.admin_key is not None
        assert check_isolation(relay.url, relay.admin_key) >= 4 * 30
    finally:
        try:
            proc.stop()
        finally:
            proc.kill()
