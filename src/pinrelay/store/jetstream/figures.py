"""Relays' recorded figures on the cluster (figures.py, core/readings.py).

A stream of their own, ``<bucket_prefix>_figures``: each reading is a message on
``<bucket_prefix>-figures.<node>`` (JSON), published with ``Nats-Msg-Id``
``<node>:<at_ms>`` so a retried write within the stream's duplicate window is
kept once (a later repeat is dropped when read).  The stream keeps messages 90
days (MaxAge, FIGURES_KEEP_MS): JetStream forgets old figures by itself.

A report reads a window across every relay with batched Direct Get from a start
time (no consumer, any replica answers, so the newest readings may show a moment
late), and stops at the end of the stream or once messages were stored well
after the window: a reading is stored at or after it was taken, at most
``LATE_MS`` later (a relay that lost the store holds them an hour, figures.py).

The stream is created (or adopted) by the first write or read of a store, not at
``open``: a relay's start checks enough streams already, and a cluster where no
figures were ever recorded needs none.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import msgspec

from pinrelay.core.readings import Readings
from pinrelay.core.timefmt import parse_rfc3339
from pinrelay.store.base import FIGURES_KEEP_MS
from pinrelay.store.jetstream.api import Api
from pinrelay.store.jetstream.errors import STREAM_NAME_IN_USE, ApiError

#: How much later than it was taken a reading may be stored: the hour a relay holds
#: them while the store is away, and clock skew.
LATE_MS = 65 * 60_000
#: How much earlier than it was taken a reading may seem stored (relays' clocks).
SKEW_MS = 60_000
#: Messages one Direct Get request returns, at most.
BATCH = 256
#: Publishes in flight at once when many readings are written (after an outage).
PARALLEL = 64
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Readings)


def stamp_ms(text: str) -> int:
    """Milliseconds of a ``Nats-Time-Stamp`` (RFC 3339 with nanoseconds)."""
    head, _, frac = text.rstrip("Z").partition(".")
    return parse_rfc3339(head + "Z") + int((frac + "000")[:3])


def _start_time(ms: int) -> str:
    when = dt.datetime.fromtimestamp(max(0, ms) / 1000, tz=dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Figures:
    """Readings in their stream (module doc)."""

    def __init__(self, api: Api, bucket_prefix: str, replicas: int) -> None:
        self.api = api
        self.stream = f"{bucket_prefix}_figures"
        self.prefix = f"{bucket_prefix}-figures"
        self.replicas = replicas
        self._ready = False

    def subject(self, node: str) -> str:
        token = node if _TOKEN.fullmatch(node) else "x" + node.encode().hex()
        return f"{self.prefix}.{token}"

    async def _ensure(self) -> None:
        if self._ready:
            return
        config = {
            "name": self.stream,
            "subjects": [f"{self.prefix}.*"],
            "storage": "file",
            "num_replicas": self.replicas,
            "max_age": FIGURES_KEEP_MS * 1_000_000,
            "allow_direct": True,
            "duplicate_window": 120 * 1_000_000_000,
        }

        async def create() -> None:
            try:
                await self.api.ask(f"STREAM.CREATE.{self.stream}", config)
            except ApiError as err:
                if err.err_code != STREAM_NAME_IN_USE:  # another config: adopt it
                    raise

        await self.api.call(create, f"create {self.stream}")
        self._ready = True

    async def put(self, readings: Sequence[Readings]) -> None:
        self.api.check_open()
        if not readings:
            return
        await self._ensure()

        async def one(r: Readings) -> None:
            headers = {"Nats-Msg-Id": f"{r.node}:{r.at_ms}"}
            subject, payload = self.subject(r.node), _enc.encode(r)

            async def op() -> dict[str, Any]:
                return await self.api.publish(subject, payload, headers)

            await self.api.call(op, f"record figures in {self.stream}")

        for n in range(0, len(readings), PARALLEL):
            await asyncio.gather(*(one(r) for r in readings[n : n + PARALLEL]))

    async def between(self, since_ms: int, until_ms: int) -> list[Readings]:
        """Readings taken in ``[since_ms, until_ms]``, oldest first (module doc)."""
        self.api.check_open()
        await self._ensure()
        found: dict[tuple[str, int], Readings] = {}
        stop_ms = until_ms + LATE_MS
        request: dict[str, Any] = {"start_time": _start_time(since_ms - SKEW_MS)}
        while True:

            async def op(body: dict[str, Any] = request) -> tuple[list[Any], int | None]:
                return await self._batch(body)

            items, last = await self.api.call(op, f"read {self.stream}")
            for stored_ms, payload in items:
                r = _dec.decode(payload)
                if since_ms <= r.at_ms <= until_ms:
                    found[(r.node, r.at_ms)] = r
                if stored_ms > stop_ms:
                    last = None
            if last is None:
                break
            request = {"seq": last + 1}
        return sorted(found.values(), key=lambda r: (r.at_ms, r.node))

    async def _batch(self, start: dict[str, Any]) -> tuple[list[tuple[int, bytes]], int | None]:
        """One batched Direct Get: (stored ms, payload) pairs, and the last sequence
        read if there may be more (None: the end)."""
        nc = self.api.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            body = {**start, "next_by_subj": f"{self.prefix}.*", "batch": BATCH}
            await nc.publish(f"$JS.API.DIRECT.GET.{self.stream}", _enc.encode(body), reply=inbox)
            items: list[tuple[int, bytes]] = []
            last: int | None = None
            while True:
                msg = await sub.next_msg(timeout=self.api.request_timeout)
                hdrs = msg.headers or {}
                status = hdrs.get("Status")
                if status == "404":
                    return items, None
                if status == "204":  # the end of this batch
                    more = int(hdrs.get("Nats-Num-Pending", "0")) > 0
                    return items, last if more and last is not None else None
                if status is not None:
                    raise ApiError(int(status), 0, str(hdrs.get("Description", "")))
                last = int(hdrs["Nats-Sequence"])
                items.append((stamp_ms(hdrs["Nats-Time-Stamp"]), msg.data))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
