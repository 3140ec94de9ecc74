"""tests/chat/test_chat_link.py's expired-chat test on a relay whose store is a 3-node
NATS cluster (the failed receipt comes from store/jetstream/expiry.py; with relays
killed: tests/cluster/test_chat_expiry.py).

On a cluster of its own, with no other relay on it: a relay whose 30 s long poll for
expiry notices began before the chat expired puts a notice that fires during the
poll back for up to that long (``Expiries.due`` compares it with the clock read
before the wait), so with the module relay of test_chat_link_on_cluster.py alive the
receipt came later than this test waits.
"""

from __future__ import annotations

from tests.chat.test_chat_link import test_a_chat_that_expires_undelivered_fails
from tests.chat.test_chat_link_on_cluster import nats_cluster, relay_factory

__all__ = ["nats_cluster", "relay_factory", "test_a_chat_that_expires_undelivered_fails"]
