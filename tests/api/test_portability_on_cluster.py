"""The portability tests of test_portability.py on a relay whose store is a 3-node
NATS cluster (the move request and its acceptance are compare-and-sets of the device
record, store/jetstream/devices.py)."""

from __future__ import annotations

from tests.api.test_portability import (
    admin,
    test_a_move_counts_against_the_devices_quota,
    test_a_new_handset_by_token_rotation_after_a_move,
    test_a_tenantless_device_moves_the_same_way,
    test_export_move_and_new_handset,
    test_export_pages_are_bounded,
    test_move_requests_are_checked,
)
from tests.clusterrelay import nats_cluster, relay

__all__ = [
    "admin",
    "nats_cluster",
    "relay",
    "test_a_move_counts_against_the_devices_quota",
    "test_a_new_handset_by_token_rotation_after_a_move",
    "test_a_tenantless_device_moves_the_same_way",
    "test_export_move_and_new_handset",
    "test_export_pages_are_bounded",
    "test_move_requests_are_checked",
]
