"""tests/chat/test_groups.py's group life on relays whose store is a 3-node NATS
cluster (store/jetstream/groups.py behind them): creation, notices, a send to every
member with receipts, a member leaving, a stranger refused; the byte budget per
stored copy.  Not the 500-member
fan-out through a SIGKILL: relay kills on the cluster are tests/cluster's."""

from __future__ import annotations

from tests.chat.test_chat_link_on_cluster import nats_cluster, relay_factory
from tests.chat.test_groups import (
    test_a_senders_bytes_are_budgeted_per_stored_copy,
    test_group_life,
)

__all__ = [
    "nats_cluster",
    "relay_factory",
    "test_a_senders_bytes_are_budgeted_per_stored_copy",
    "test_group_life",
]
