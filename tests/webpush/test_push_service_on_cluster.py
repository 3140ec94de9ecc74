"""The push service tests of tests/webpush/test_push_service.py and the receipt tests
of test_push_receipts.py, on a relay whose store is a 3-node NATS cluster
(store/jetstream/subscriptions.py and pushreceipts.py behind it).  Across relays:
tests/cluster/test_webpush_cluster.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from pinrelay.testing.natsproc import NatsCluster, running_cluster
from tests.relayproc import RelayProc
from tests.webpush.test_push_receipts import (
    test_no_receipt_for_a_message_that_will_never_arrive,
    test_receipt_after_the_ack,
    test_receipt_over_the_inbox_ack,
)
from tests.webpush.test_push_service import (
    TestBadRequests,
    TestMessageResource,
    TestPushing,
    TestSubscriptions,
)

__all__ = [
    "TestBadRequests",
    "TestMessageResource",
    "TestPushing",
    "TestSubscriptions",
    "test_no_receipt_for_a_message_that_will_never_arrive",
    "test_receipt_after_the_ack",
    "test_receipt_over_the_inbox_ack",
]


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    with running_cluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def relay(
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
