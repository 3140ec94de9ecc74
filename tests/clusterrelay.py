"""Module-scoped fixtures for tests that run again on the cluster store: one 3-node
NATS cluster and one relay on it per module (every test makes devices of its own).
A module imports ``nats_cluster`` and ``relay`` from here to replace the SQLite relay."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pinrelay.testing.natsproc import NatsCluster, running_cluster
from tests.relayproc import RelayProc


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with running_cluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory, nats_cluster: NatsCluster
) -> Iterator[RelayProc]:
    """One relay on the cluster for the module, stopped by pid afterwards."""
    node = f"relay-{uuid.uuid4().hex[:8]}"
    store = ["--store", ",".join(nats_cluster.urls), "--node-id", node]
    proc = RelayProc(tmp_path_factory.mktemp("relay"), extra=store)
    try:
        yield proc.start(timeout=60)
    finally:
        try:
            proc.stop()
        finally:
            proc.kill()
