"""Real nats-server processes for tests: moved to :mod:`pinrelay.testing.natsproc`.

Re-exported here so ``from tests.natsproc import NatsCluster, NatsNode,
running_cluster`` keeps working.
"""

from __future__ import annotations

from pinrelay.testing.natsproc import NatsCluster, NatsNode, running_cluster

__all__ = ["NatsCluster", "NatsNode", "running_cluster"]
