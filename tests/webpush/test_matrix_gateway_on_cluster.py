"""The Matrix gateway tests of test_matrix_gateway.py on a relay whose store is a
3-node NATS cluster (idempotent retries through store/jetstream/idempotency.py)."""

from __future__ import annotations

from tests.clusterrelay import nats_cluster, relay
from tests.webpush.test_matrix_gateway import TestMatrixGateway

__all__ = ["TestMatrixGateway", "nats_cluster", "relay"]
