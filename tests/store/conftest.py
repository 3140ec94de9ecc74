"""Fixtures for the Store contract suite.

To run the contract against another engine, add its name to the ``store``
fixture's ``params`` and a branch to :func:`make_store`.

The ``jetstream`` engine runs against a real 3-node nats-server cluster on
127.0.0.1 (:func:`nats_cluster`, one per session, started only when a JetStream
test runs).  Each test gets its own stream, subject prefix and buckets, named
after its ``tmp_path``, and deletes them afterwards.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypedDict

import nats
import pytest

from pinrelay.store.base import Store
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.jetstream.setup import delete_streams
from pinrelay.store.sqlite import SqliteStore
from tests.natsproc import NatsCluster, running_cluster

ENGINE = pytest.StashKey[str]()
SERVERS = pytest.StashKey[list[str]]()
Reopen = Callable[[], Awaitable[Store]]
#: The JetStream engines: one stream, and devices spread over three.
PARTITIONS = {"jetstream": 1, "jetstream-p3": 3}


class JetStreamNames(TypedDict):
    stream: str
    subject_prefix: str
    bucket_prefix: str


def jetstream_names(directory: Path) -> JetStreamNames:
    """A namespace of its own for the store kept "under" ``directory``."""
    tag = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    return JetStreamNames(stream=f"PR_{tag}", subject_prefix=f"d{tag}", bucket_prefix=f"pr_{tag}")


def make_store(engine: str, directory: Path, servers: Sequence[str] = ()) -> Store:
    """A new, unopened store of ``engine`` keeping its data under ``directory``."""
    if engine == "sqlite":
        return SqliteStore(directory / "pinrelay.db")
    if engine in PARTITIONS:
        assert servers, "the jetstream engine needs the nats_cluster fixture"
        # The partitioned engine also reads the way relays do by default (batched
        # Direct Get); the single-stream one reads from the leader.
        return JetStreamStore(
            list(servers),
            replicas=3,
            partitions=PARTITIONS[engine],
            direct_reads=PARTITIONS[engine] > 1,
            # A contract test asks expired_chats and waits for the answer: a short
            # poll (relays long-poll for 30 s).
            expiry_wait_s=1.0,
            **jetstream_names(directory),
        )
    raise ValueError(f"unknown store engine {engine!r}")


@pytest.fixture(scope="session")
def nats_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """Three clustered nats-server processes with JetStream, stopped by pid at the end."""
    with running_cluster(tmp_path_factory.mktemp("nats")) as cluster:
        yield cluster


async def destroy_jetstream(servers: Sequence[str], directory: Path, engine: str) -> None:
    """Delete the streams and buckets of the store kept under ``directory``."""
    s = make_store(engine, directory, servers)
    assert isinstance(s, JetStreamStore)
    await destroy_unopened(s)


async def destroy_unopened(store: JetStreamStore) -> None:
    """Delete the streams and buckets of ``store`` (not opened: whatever a test left
    in its namespace goes, all at once, without checking it first)."""
    nc = await nats.connect(store.servers)
    try:
        names = [*store.streams, *(f"KV_{b}" for b in store.bucket_names())]
        await delete_streams(nc.jetstream(timeout=10.0), names)
    finally:
        await nc.close()


@pytest.fixture(params=["sqlite", *PARTITIONS])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store on ``tmp_path``; closed after the test, whatever happens."""
    engine: str = request.param
    request.node.stash[ENGINE] = engine
    servers: list[str] = []
    if engine in PARTITIONS:
        cluster: NatsCluster = request.getfixturevalue("nats_cluster")
        servers = cluster.urls
    request.node.stash[SERVERS] = servers
    s = make_store(engine, tmp_path, servers)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        if engine in PARTITIONS:
            await destroy_jetstream(servers, tmp_path, engine)


@pytest.fixture
async def reopen(
    request: pytest.FixtureRequest, store: Store, tmp_path: Path
) -> AsyncIterator[Reopen]:
    """Open a second store of the same engine on the same data as ``store``."""
    opened: list[Store] = []

    async def _reopen() -> Store:
        s = make_store(request.node.stash[ENGINE], tmp_path, request.node.stash[SERVERS])
        opened.append(s)
        await s.open()
        return s

    try:
        yield _reopen
    finally:
        for s in opened:
            await s.close()
