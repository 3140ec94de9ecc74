"""What an open store follows: its buckets' watches, the feed of new messages and the
expiry notices' consumers, started together and stopped together."""

from __future__ import annotations

from collections.abc import Sequence

from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from pinrelay.store.jetstream.expiry import Expiries
from pinrelay.store.jetstream.feed import Feed
from pinrelay.store.jetstream.setup import settling
from pinrelay.store.jetstream.watch import Watch


class Following:
    def __init__(self, watches: Sequence[Watch], feed: Feed, expiries: Expiries) -> None:
        self.watches = tuple(watches)
        self.feed = feed
        self.expiries = expiries

    async def start(self, nc: NATS, js: JetStreamContext, deadline: float) -> None:
        """Start everything, tried again until ``deadline`` (monotonic) as set-up is: a
        consumer's create can time out on a busy cluster (its meta layer queues it
        behind others' stream creates).  Raises the last attempt's error."""
        await settling(lambda: self._start(nc, js), deadline, "following the streams and buckets")

    async def _start(self, nc: NATS, js: JetStreamContext) -> None:
        # On a failure, stop those started, so that the next attempt starts clean.
        try:
            for watch in self.watches:
                await watch.start(nc, js)
            await self.feed.start(js)
            await self.expiries.start(js)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self.feed.stop()
        await self.expiries.stop()
        for watch in self.watches:
            await watch.stop()
