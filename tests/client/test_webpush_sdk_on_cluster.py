"""The SDK's Web Push tests of test_webpush_sdk.py on a relay whose store is a 3-node
NATS JetStream cluster: subscriptions, keys and decryption do not depend on the
engine, and this says so."""

from __future__ import annotations

from tests.client.test_webpush_sdk import (
    test_a_receipt_says_delivered_only_once_the_application_had_it,
    test_an_undecryptable_push_is_reported_and_does_not_block_the_next,
    test_keys_in_a_file_outlive_the_process,
    test_list_and_delete,
    test_pywebpush_without_vapid_reaches_the_callback_once_in_order,
    test_the_largest_payload_passes_and_a_larger_one_is_refused,
    test_urgency_and_topic_reach_the_application,
    test_vapid_restricted_subscription,
)
from tests.clusterrelay import nats_cluster, relay

__all__ = [
    "nats_cluster",
    "relay",
    "test_a_receipt_says_delivered_only_once_the_application_had_it",
    "test_an_undecryptable_push_is_reported_and_does_not_block_the_next",
    "test_keys_in_a_file_outlive_the_process",
    "test_list_and_delete",
    "test_pywebpush_without_vapid_reaches_the_callback_once_in_order",
    "test_the_largest_payload_passes_and_a_larger_one_is_refused",
    "test_urgency_and_topic_reach_the_application",
    "test_vapid_restricted_subscription",
]
