"""The Matrix gateway tests of test_matrix_gateway.py on a relay whose store is a
3-node NATS cluster (idempotent retries through store/jetstream/idempotency.py)."""

from __future__ import annotations

from tests.webpush.test_matrix_gateway import TestMatrixGateway
from tests.webpush.test_push_service_on_cluster import nats_cluster, relay

__all__ = ["TestMatrixGateway", "nats_cluster", "relay"]
