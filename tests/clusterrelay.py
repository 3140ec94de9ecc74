"""Module-scoped fixtures for tests that run again on the cluster store: one 3-node
NATS cluster and one relay on it per module (every test makes devices of its own).
A module imports ``nats_cluster`` and ``relay`` from here to replace the SQLite relay,
or ``nats_cluster`` and ``shared_relay`` to run its ``shared_relay`` tests on the cluster."""

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


def _cluster_relay(
    tmp_path_factory: pytest.TempPathFactory, nats_cluster: NatsCluster
) -> Iterator[RelayProc]:
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


@pytest.fixture(scope="module")
def relay(
    tmp_path_factory: pytest.TempPathFactory, nats_cluster: NatsCluster
) -> Iterator[RelayProc]:
    """One relay on the cluster for the module, stopped by pid afterwards."""
    yield from _cluster_relay(tmp_path_factory, nats_cluster)


@pytest.fixture(scope="module")
def shared_relay(
    tmp_path_factory: pytest.TempPathFactory, nats_cluster: NatsCluster
) -> Iterator[RelayProc]:
    """For a module that keeps tests/conftest.py's ``relay`` (a fresh relay per test,
    from its own ``relay_factory``): what tests marked ``shared_relay`` get instead,
    one relay on the cluster for the module (the default one is on SQLite)."""
    yield from _cluster_relay(tmp_path_factory, nats_cluster)
