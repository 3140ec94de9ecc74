"""The chat edges of tests/chat/test_chat_link.py, on relays whose store is a
3-node NATS cluster (store/jetstream/contacts.py and unread.py behind them); across
relays and through relay kills: tests/cluster/test_chat_cluster.py.

Every test class of that module runs again here, with ``relay_factory`` starting
relays with ``--store`` on one cluster for the module (they share its stream and
buckets; every test makes devices of its own), the classes' ``shared_relay`` tests
on one relay on that cluster.  The expired-chat test runs on a cluster of its own in
tests/chat/test_chat_expiry_on_cluster.py.  The group tests of
tests/chat/test_groups.py run on the cluster in tests/chat/test_groups_on_cluster.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinrelay.testing.natsproc import NatsCluster
from tests.chat.test_chat_link import (
    TestContacts,
    TestHttpChat,
    TestSend,
    pair,
)
from tests.clusterrelay import nats_cluster, shared_relay
from tests.conftest import RelayFactory
from tests.relayproc import RelayProc

__all__ = [
    "TestContacts",
    "TestHttpChat",
    "TestSend",
    "nats_cluster",
    "pair",
    "shared_relay",
]


@pytest.fixture
def relay_factory(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[RelayFactory]:
    """Relays on the cluster; every one is stopped by pid, even when a test fails."""
    started: list[RelayProc] = []

    def start(name: str = "relay", extra: list[str] | None = None) -> RelayProc:
        # A node id of its own: a stopped relay stays listed as live for a few seconds.
        node = f"{name}-{uuid.uuid4().hex[:8]}"
        store = ["--store", ",".join(nats_cluster.urls), "--node-id", node]
        proc = RelayProc(tmp_path / name, extra=[*store, *(extra or [])])
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        try:
            proc.stop()
        finally:
            proc.kill()
