"""The raw JetStream API: requests, publishes and batched Direct Get, retried.

Every call to the cluster goes through :meth:`Api.call`, which runs one attempt
inside :func:`~.errors.nats_errors` and retries :class:`~.errors.Unavailable`
(leader election, reconnect) for ``retry_for`` seconds with the same message ids,
then raises StoreClosed (503, retry later).  The single-attempt methods
(:meth:`Api.ask`, :meth:`Api.publish`, ...) raise :class:`~.errors.ApiError` for an
error answer; callers that expect one (a key not found, a compare-and-set lost)
catch it inside their attempt and test its named properties.

The NATS connection is the store's; :meth:`Api.nc` raises StoreClosed once it is
closed, so a retry loop stops when the store does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg as NatsMsg

from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.errors import ApiError, Unavailable, nats_errors

T = TypeVar("T")
# msgspec, not the json module: every publish acknowledgement is decoded here.
_enc = msgspec.json.Encoder().encode
_dec = msgspec.json.Decoder(dict[str, Any]).decode


async def ask(nc: NATS, subject: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One JetStream API request (``$JS.API.<subject>``, JSON both ways).

    Raises :class:`ApiError` for an error answer.
    """
    msg = await nc.request(f"$JS.API.{subject}", _enc(body), timeout=timeout)
    return ApiError.check(_dec(msg.data))


def publish_answer(msg: NatsMsg) -> dict[str, Any]:
    """A stream's answer to a publish (``seq``, ``duplicate``, ``count``...).

    A 503 status with no body means no stream took the subject right now.
    """
    if not msg.data and msg.headers and msg.headers.get("Status") == "503":
        raise nats.errors.NoRespondersError
    return ApiError.check(_dec(msg.data))


#: How long a compare-and-set waits before trying again when another write to its
#: key is in flight (a commit on loopback takes a few milliseconds).
IN_FLIGHT_WAIT_S = 0.002


class Api:
    """One store's JetStream API calls on its NATS connection."""

    def __init__(self, request_timeout: float, retry_for: float) -> None:
        self.request_timeout = request_timeout
        #: How long a transient failure (leader election, reconnect) is retried
        #: before the caller gets StoreClosed (503, retry later).
        self.retry_for = retry_for
        self._nc: NATS | None = None

    def attach(self, nc: NATS | None) -> None:
        """Use ``nc`` from now on (None: the store is closed)."""
        self._nc = nc

    @property
    def nc(self) -> NATS:
        """The connection; StoreClosed once the store is closed."""
        nc = self._nc
        if nc is None or nc.is_closed:
            raise StoreClosed("store is closed")
        return nc

    def check_open(self) -> None:
        """Raise StoreClosed once the store is closed."""
        _ = self.nc

    async def call(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``op``, retrying transient failures for ``retry_for`` s; then StoreClosed."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            self.check_open()
            try:
                with nats_errors(what):
                    return await op()
            except Unavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreClosed(exc.detail) from exc.__cause__
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # --- single attempts (raise ApiError for an error answer) ----------------------
    async def ask(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        """One JetStream API request; see :func:`ask`."""
        return await ask(self.nc, subject, body, self.request_timeout)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str]
    ) -> dict[str, Any]:
        """Publish to a stream and wait for its answer (see :func:`publish_answer`)."""
        msg = await self.nc.request(
            subject, payload, timeout=self.request_timeout, headers=dict(headers)
        )
        return publish_answer(msg)

    async def send(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish without waiting (a message of an atomic batch before its commit)."""
        await self.nc.publish(subject, payload, headers=headers)

    async def direct_batch(
        self, stream: str, subject: str, start: int, batch: int
    ) -> tuple[list[tuple[int, bytes]], bool]:
        """One batched Direct Get of ``subject`` from ``start`` (any replica answers).

        Returns (sequence, payload) pairs and whether the responder had no more.
        """
        nc = self.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            body = {"seq": start, "next_by_subj": subject, "batch": batch}
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", _enc(body), reply=inbox)
            items: list[tuple[int, bytes]] = []
            while True:
                msg = await sub.next_msg(timeout=self.request_timeout)
                hdrs = msg.headers or {}
                status = hdrs.get("Status")
                if status == "404":
                    return items, True
                if status == "204":  # EOB
                    return items, int(hdrs.get("Nats-Num-Pending", "0")) == 0
                if status is not None:
                    raise ApiError(int(status), 0, str(hdrs.get("Description", "")))
                items.append((int(hdrs["Nats-Sequence"]), msg.data))
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # --- retried ---------------------------------------------------------------------
    async def request(self, subject: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """:meth:`ask`, retried; any error answer is StoreClosed."""

        async def op() -> dict[str, Any]:
            return await self.ask(subject, body)

        return await self.call(op, what)

    async def request_unless(
        self,
        subject: str,
        body: dict[str, Any],
        what: str,
        expected: Callable[[ApiError], bool],
    ) -> dict[str, Any] | None:
        """:meth:`request`, but None for an error answer that ``expected`` accepts."""

        async def op() -> dict[str, Any] | None:
            try:
                return await self.ask(subject, body)
            except ApiError as err:
                if expected(err):
                    return None
                raise

        return await self.call(op, what)

    async def unless_moved(
        self, send: Callable[[], Awaitable[dict[str, Any]]], what: str
    ) -> int | None:
        """A compare-and-set write (``send``: a publish, or an atomic batch's commit),
        retried: the sequence the server answered, or None if a key had moved on
        (then it stored none of it).  ``send`` is called anew for each attempt."""

        deadline = time.monotonic() + self.retry_for

        async def op() -> int | None:
            while True:
                try:
                    resp = await send()
                except ApiError as err:
                    if err.wrong_last_sequence:
                        return None
                    # Another write to the key is in flight: it commits within a few
                    # ms (then this one meets "moved on"), or never (a leader without
                    # its quorum: StoreClosed once retry_for is spent).
                    if err.in_flight and time.monotonic() < deadline:
                        await asyncio.sleep(IN_FLIGHT_WAIT_S)
                        continue
                    raise
                return int(resp["seq"])

        return await self.call(op, what)


def not_found(err: ApiError) -> bool:
    """For :meth:`Api.request_unless`: no such message."""
    return err.not_found


def refused(err: ApiError) -> bool:
    """For :meth:`Api.request_unless`: any answer but a server failure (5xx)."""
    return not err.server_side


def gone(err: ApiError) -> bool:
    """For :meth:`Api.request_unless` of a delete: the message was not there, or
    any other answer but a server failure."""
    return err.not_found or refused(err)
