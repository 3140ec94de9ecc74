"""The push service tests of tests/webpush/test_push_service.py and the receipt tests
of test_push_receipts.py, on a relay whose store is a 3-node NATS cluster
(store/jetstream/subscriptions.py and pushreceipts.py behind it).  Across relays:
tests/cluster/test_webpush_cluster.py."""

from __future__ import annotations

from tests.clusterrelay import nats_cluster, relay
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
    "nats_cluster",
    "relay",
    "test_no_receipt_for_a_message_that_will_never_arrive",
    "test_receipt_after_the_ack",
    "test_receipt_over_the_inbox_ack",
]
