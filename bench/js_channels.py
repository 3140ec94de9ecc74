"""What a broadcast's fan-out costs on the cluster engine (store/jetstream/channels.py).

On a fresh 3-node cluster (ports picked free, stopped by pid), one JetStreamStore:
N devices join one channel (64 joins in flight; ``--direct``: their PINs are written
into the channel's shards, with no devices), then the fan-out's store calls are
timed as a relay makes them, page by page (FANOUT_PAGE members): ``channel_members``
alone, ``admit`` for a service broadcast with no consent records (reads only), the
same once every device has one (a refusal of the other class), a marketing broadcast
with a cap (a read and a compare-and-set per member), and that broadcast resumed
(reads only: each device remembers it was counted).  Wall time per page and for the
whole channel; the cluster is on this machine, so a round trip is ~0.2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from pinrelay.core.channels import FANOUT_PAGE, Channel, ChannelClass
from pinrelay.core.tenants import DEFAULT_TENANT
from pinrelay.store.jetstream import JetStreamStore
from pinrelay.store.jetstream.channels import Shard, shard_key
from pinrelay.testing.natsproc import running_cluster

CHANNEL = "C0000000000AB"
NOW = 1_700_000_000_000


async def in_flight(calls: list[Callable[[], Awaitable[object]]], limit: int = 64) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(c) for c in calls))


async def fan_out(
    store: JetStreamStore, step: Callable[[list[str]], Awaitable[object]] | None
) -> tuple[float, int]:
    """Page through the channel as a fan-out does: seconds, pages."""
    start, after, pages = time.perf_counter(), "", 0
    while True:
        page = await store.channel_members(CHANNEL, after, FANOUT_PAGE)
        if not page:
            return time.perf_counter() - start, pages
        if step is not None:
            await step(page)
        after, pages = page[-1], pages + 1


async def write_shard(store: JetStreamStore, key: str, members: list[str]) -> None:
    def write(_: Shard | None) -> Shard:
        return Shard(sorted(members))

    await store.channels.shards.change(key, write)


async def run(urls: list[str], members: int, direct: bool) -> None:
    store = JetStreamStore(urls, bucket_prefix="bch", stream="BCH", subject_prefix="bch")
    await store.open()
    try:
        pins = [f"{(n * 2654435761) % 2**32:08X}" for n in range(1, members + 1)]
        await store.create_channel(
            Channel(id=CHANNEL, tenant=DEFAULT_TENANT, name="c", klass="marketing", created_ms=NOW),
            10,
        )
        if direct:
            shards: dict[str, list[str]] = {}
            for pin in pins:
                shards.setdefault(shard_key(CHANNEL, pin), []).append(pin)
            await in_flight([partial(write_shard, store, k, m) for k, m in shards.items()])
        else:
            t = time.perf_counter()
            await in_flight(
                [partial(store.create_device, p, "h", None, NOW, tenant=None) for p in pins]
            )
            made = time.perf_counter() - t
            t = time.perf_counter()
            await in_flight([partial(store.join_channel, p, CHANNEL, True) for p in pins])
            joined = time.perf_counter() - t
            print(f"{members} devices: created in {made:.1f} s, joined in {joined:.1f} s")
        rows: list[tuple[str, float, int]] = []

        async def timed(what: str, step: Callable[[list[str]], Awaitable[object]] | None) -> None:
            seconds, pages = await fan_out(store, step)
            rows.append((what, seconds, pages))

        await timed("channel_members only", None)

        def admitting(
            klass: ChannelClass, bid: str, cap: int | None
        ) -> Callable[[list[str]], Awaitable[object]]:
            return lambda page: store.admit(page, klass, bid, 1, cap)

        await timed("+ admit service (no records)", admitting("service", "S1", None))
        await timed("+ admit marketing cap 1", admitting("marketing", "M1", 1))
        await timed("+ admit marketing resumed", admitting("marketing", "M1", 1))
        await timed("+ admit service (records)", admitting("service", "S2", None))
        print(f"| fan-out of {members} members | whole channel | per page of {FANOUT_PAGE} |")
        print("|---|---|---|")
        for what, seconds, pages in rows:
            print(f"| {what} | {seconds:.2f} s | {1000 * seconds / max(1, pages):.1f} ms |")
    finally:
        await store.destroy()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument(
        "--direct",
        action="store_true",
        help="write the members into their shards (no devices, no joins): for 100,000",
    )
    args = parser.parse_args()
    with running_cluster(Path(tempfile.mkdtemp(prefix="bch-"))) as cluster:
        asyncio.run(run(cluster.urls, args.members, args.direct))


if __name__ == "__main__":
    main()
