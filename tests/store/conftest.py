"""Fixtures for the Store contract suite.

To run the contract against another engine, add its name to the ``store``
fixture's ``params`` and a branch to :func:`make_store`.

The ``jetstream`` engine runs against a real 3-node nats-server cluster on
127.0.0.1 (:func:`nats_cluster`, one per session, started only when a JetStream
test runs).  Each test gets its own stream, subject prefix and buckets, and deletes
them afterwards.  The contract's ``store`` finds them made: while one test runs, the
next one's are created on a thread of their own (:class:`MadeAhead`, about 1 s of the
cluster's time a test), so its ``open`` checks them as a second relay's would; the
create path is what tests/store/test_jetstream*.py and every relay start exercise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import threading
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
#: Where the test's store keeps its data (its JetStream namespace's name).
PLACE = pytest.StashKey[Path]()
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
        names.append(store.figures.stream)  # made by the first write of figures
        await delete_streams(nc.jetstream(timeout=10.0), names)
    finally:
        await nc.close()


class MadeAhead:
    """JetStream namespaces of the contract's engines, made one test ahead.

    A namespace is made by opening and closing a store on it, on an event loop of its
    own thread, so it is made while the test before runs; :meth:`take` waits for it
    (and raises what making it raised).  Whatever is left at the end is deleted.
    """

    def __init__(self, servers: Sequence[str], places: pytest.TempPathFactory) -> None:
        self.servers = list(servers)
        self.places = places
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="made-ahead", daemon=True)
        self.thread.start()
        self.ahead: dict[str, tuple[Path, concurrent.futures.Future[None]]] = {}

    def _make(self, engine: str) -> tuple[Path, concurrent.futures.Future[None]]:
        place = self.places.mktemp("js-store")

        async def make() -> None:
            s = make_store(engine, place, self.servers)
            await s.open()
            await s.close()

        return place, asyncio.run_coroutine_threadsafe(make(), self.loop)

    def take(self, engine: str) -> Path:
        """A namespace whose streams and buckets exist and hold nothing, and starts
        making the next one."""
        ready = self.ahead.pop(engine, None)
        place, made = ready if ready is not None else self._make(engine)
        self.ahead[engine] = self._make(engine)
        try:
            made.result(timeout=120)
        except BaseException:
            self._forget(engine, place)
            raise
        return place

    def _forget(self, engine: str, place: Path) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(
                destroy_jetstream(self.servers, place, engine), self.loop
            ).result(timeout=60)

    def close(self) -> None:
        try:
            for engine, (place, made) in self.ahead.items():
                with contextlib.suppress(Exception):
                    made.result(timeout=120)
                self._forget(engine, place)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()


@pytest.fixture(scope="session")
def made_ahead(
    nats_cluster: NatsCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MadeAhead]:
    ahead = MadeAhead(nats_cluster.urls, tmp_path_factory)
    try:
        yield ahead
    finally:
        ahead.close()


@pytest.fixture(params=["sqlite", *PARTITIONS])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An opened store, of its own; closed after the test, whatever happens."""
    engine: str = request.param
    request.node.stash[ENGINE] = engine
    servers: list[str] = []
    place = tmp_path
    if engine in PARTITIONS:
        ahead: MadeAhead = request.getfixturevalue("made_ahead")
        servers = ahead.servers
        place = await asyncio.to_thread(ahead.take, engine)
    request.node.stash[SERVERS] = servers
    request.node.stash[PLACE] = place
    s = make_store(engine, place, servers)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        if engine in PARTITIONS:
            await destroy_jetstream(servers, place, engine)


@pytest.fixture
async def reopen(request: pytest.FixtureRequest, store: Store) -> AsyncIterator[Reopen]:
    """Open a second store of the same engine on the same data as ``store``."""
    opened: list[Store] = []
    stash = request.node.stash

    async def _reopen() -> Store:
        s = make_store(stash[ENGINE], stash[PLACE], stash[SERVERS])
        opened.append(s)
        await s.open()
        return s

    try:
        yield _reopen
    finally:
        for s in opened:
            await s.close()
