"""Fixtures of the cluster tests: a NATS cluster per module, relays on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.chat.conftest import links  # noqa: F401  (a fixture for the chat tests here)
from tests.conftest import RelayFactory
from tests.natsproc import NatsCluster, running_cluster
from tests.relayproc import RelayProc

StartRelay = Callable[..., RelayProc]


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three clustered nats-server processes, stopped by pid after the module."""
    with running_cluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture
def start_relay(relay_factory: RelayFactory, nats: NatsCluster) -> StartRelay:
    """A relay on the module's NATS cluster, named ``node`` (its --node-id)."""

    def start(node: str, name: str | None = None, extra: list[str] | None = None) -> RelayProc:
        store = ",".join(nats.urls)
        options = ["--store", store, "--node-id", node, *(extra or [])]
        return relay_factory(name or node, extra=options)

    return start
