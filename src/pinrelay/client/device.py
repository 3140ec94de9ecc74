"""The async device SDK: link, receive, acknowledge, reconnect (PROTOCOL.md).

``Device.run()`` keeps one link open.  It hands each message to the application
callback once, in cursor order, and acknowledges it only after the callback
returned, so a crash in between means redelivery, never loss.  Redelivered
messages (same cursor or id) are acknowledged and not handed over again.

When a link drops it reconnects with exponential back-off and full jitter,
honouring a ``drain`` frame's ``retry_after_ms``, and rotates through every link
URL it knows (failover).  With ``inbox=True`` it long-polls the HTTP inbox
instead of holding a WebSocket.

A message of kind ``system`` (an incident's news, PROTOCOL "System messages") has
no cursor: it goes to ``on_system`` as a :class:`SystemMessage`, once per id, and
is never acknowledged (without ``on_system`` it is dropped: an application written
before system messages keeps its cursor-ordered ``on_message``).

A message of kind ``webpush`` is decrypted with the keys in ``keys`` before the
callback sees it (``Message.webpush``; client/webpush.py).

``on_event`` hears what the link is doing, so an application (the CLI) can say
it: :class:`Connecting` before each attempt, :class:`Retrying` with the reason
and the time of the next attempt whenever one failed or a link dropped, and
:class:`Listening` once the relay said ``welcome`` (the inbox: answered a poll).
The SDK itself never prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import websockets
from websockets.asyncio.client import ClientConnection, connect

from pinrelay.client.channels import BroadcastInfo, ChannelRoutes, broadcast_of
from pinrelay.client.chat import Outbox, Outgoing
from pinrelay.client.contacts import AsyncRunner, Contacts, Groups
from pinrelay.client.keys import KeyStore, MemoryKeyStore
from pinrelay.client.webpush import WebPush, WebPushMessage, WebPushSubscription
from pinrelay.core import frames

log = logging.getLogger(__name__)

#: Close and error codes after which retrying cannot help.
FATAL_STATUSES = frozenset({400, 401, 403, 404, 422})


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    cursor: int
    kind: str
    data: Any
    topic: str | None
    urgency: str
    sent_at: str
    expires_at: str
    sender: str | None
    #: A message of kind ``webpush``, opened: the plaintext (or why there is none).
    webpush: WebPushMessage | None = None

    @property
    def broadcast(self) -> BroadcastInfo | None:
        """A message of kind ``broadcast``: its channel, the tenant's value and the
        unsubscribe action (``await device.channels.unsubscribe(message)``)."""
        return broadcast_of(self.kind, self.data)


@dataclass(frozen=True, slots=True)
class SystemMessage:
    """An incident's news from the relay (PROTOCOL "System messages"): not stored,
    no cursor, never acknowledged; ``id`` is ``<incident>.<n>`` (one per change)."""

    id: str
    incident: str
    #: ``opened``, ``updated`` or ``resolved``.
    event: str
    text: str
    #: The whole ``data`` object (``incident``, ``event``, ``text``, ``component``,
    #: ``severity``, and fields later versions add).
    data: dict[str, Any]
    urgency: str
    sent_at: str
    expires_at: str


@dataclass(frozen=True, slots=True)
class Connecting:
    """An attempt to link (or to poll the inbox) starts."""

    url: str
    #: 1 for the first attempt after a link was up (or at start), 2 after one failed...
    attempt: int


@dataclass(frozen=True, slots=True)
class Retrying:
    """An attempt failed, or a link dropped: the next attempt comes at ``retry_at``."""

    attempt: int
    #: One readable line: "connection refused", "drain: shutdown", ...
    reason: str
    delay_s: float
    #: Wall-clock time (seconds since the epoch) of the next attempt.
    retry_at: float


@dataclass(frozen=True, slots=True)
class Listening:
    """The relay accepted the device: ``welcome`` on a link, or a first inbox answer."""

    url: str
    node: str | None
    region: str | None
    cursor: int


LinkEvent = Connecting | Retrying | Listening


def describe(exc: BaseException) -> str:
    """Why an attempt failed, in one line a user can act on."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if any(isinstance(c, ConnectionRefusedError) for c in chain) or (
        isinstance(exc, httpx.ConnectError) and "refused" in str(exc).lower()
    ):
        return "connection refused (is the relay running?)"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {exc}"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.url}"
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return "timed out"
    if isinstance(exc, websockets.InvalidStatus):
        return f"HTTP {exc.response.status_code} on the link"
    if isinstance(exc, websockets.ConnectionClosed):
        rcvd = exc.rcvd
        if rcvd is None:
            return "the link closed without a close frame"
        return f"the link closed ({rcvd.code}{' ' + rcvd.reason if rcvd.reason else ''})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class LinkRefused(Exception):
    """The relay refused the device (bad token, unknown PIN, bad cursor): fatal."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        self.code = code


class _Retry(Exception):
    def __init__(self, delay: float | None, reason: str) -> None:
        super().__init__(delay, reason)
        self.delay = delay
        self.reason = reason


Callback = Callable[[Message], Awaitable[None] | None]
SystemCallback = Callable[[SystemMessage], Awaitable[None] | None]


class Device:
    def __init__(
        self,
        pin: str,
        token: str,
        on_message: Callback,
        *,
        url: str | None = None,
        link_urls: list[str] | None = None,
        cursor: int = 0,
        window: int | None = None,
        inbox: bool = False,
        backoff_base: float = 0.25,
        backoff_max: float = 30.0,
        remember_ids: int = 10_000,
        on_link: Callable[[frames.Welcome], None] | None = None,
        on_event: Callable[[LinkEvent], None] | None = None,
        on_receipt: Callable[[str, str, str | None], None] | None = None,
        keys: KeyStore | None = None,
        on_system: SystemCallback | None = None,
    ) -> None:
        if url is None and not link_urls:
            raise ValueError("give the relay's HTTP url, or link_urls")
        self.pin = pin
        self.token = token
        self.url = url.rstrip("/") if url else None
        self.link_urls = list(link_urls or [])
        #: The last cursor handed to the application (and acknowledged).
        self.cursor = cursor
        self.window = window
        self.inbox = inbox
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.links_opened = 0
        self.duplicates = 0
        #: Web Push messages handed over without a payload (``Message.webpush.error``).
        self.undecryptable = 0
        self._on_message = on_message
        self._on_system = on_system
        self._on_link = on_link
        self._on_event = on_event
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._remember = remember_ids
        #: The message being handed to ``on_message``: (id, cursor), else None.
        self._handing: tuple[str, int] | None = None
        #: Receipts told to ``on_receipt``, (id, state, from): a relay may store one
        #: twice after a crash (PROTOCOL "Receipts"); the application hears it once.
        self._receipts_seen: OrderedDict[tuple[str, str, str | None], None] = OrderedDict()
        self._stopping = asyncio.Event()
        self._attempt = 0
        self._next_url = 0
        self._ws: ClientConnection | None = None
        #: The current link said welcome (sends may go out on it).
        self._linked = False
        #: The last cursor sent in an ack on the current link.
        self._acked = cursor
        #: Chat messages this device sends (client/chat.py).
        self.outbox = Outbox(remember_ids)
        #: Told of every receipt as (message id, state, from): also those for messages
        #: this SDK no longer holds a handle for (sent before a restart).
        self._on_receipt = on_receipt
        self._reads: list[str] = []
        #: Reads sent on this link and not answered ``read_done`` yet, by client_id:
        #: sent again on the next link if this one ends (a crash may have lost them;
        #: the relay sends one receipt per message however often it is told).
        self._reads_out: dict[str, list[str]] = {}
        self._read_seq = 0
        self._tasks: set[asyncio.Task[None]] = set()
        runner = AsyncRunner(self.url, pin, token)
        #: Invite, accept, decline, block, unblock, remove, list (over HTTP: needs ``url``).
        self.contacts = Contacts(runner)
        #: Create, add, remove, leave, list (over HTTP: needs ``url``).
        self.groups = Groups(runner)
        #: Broadcast channels: join, leave, refuse a class, unsubscribe (over HTTP).
        self.channels = ChannelRoutes(runner)
        #: Web Push subscriptions (over HTTP: needs ``url``); their private keys are
        #: in ``keys`` (default: in memory, lost with the process).
        self.webpush = WebPush(runner, keys if keys is not None else MemoryKeyStore())

    async def subscribe(self, application_server_key: str | None = None) -> WebPushSubscription:
        """A new Web Push subscription (``device.webpush.subscribe``): give its
        ``to_json()`` to the application server; what it pushes arrives as messages
        of kind ``webpush`` with ``Message.webpush`` carrying the plaintext."""
        return await self.webpush.subscribe(application_server_key)

    # --- chat ------------------------------------------------------------------
    async def send(
        self, to: str, text: str, *, ttl: float | None = None, client_id: str | None = None
    ) -> Outgoing:
        """Send a chat message to a contact's PIN or a group; its handle at once.

        It goes out now if a link is up, else on the next link; a link that drops
        before the relay answered sends it again (same client_id: stored once)."""
        handle = Outgoing(to, text, ttl, client_id)
        self.outbox.waiting[handle.client_id] = handle
        ws = self._ws
        if ws is not None and self._linked:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(_send_frame(handle))
        return handle

    async def read(self, *ids: str) -> None:
        """Tell the senders these messages were read (a ``read`` frame; kept for the
        next link if none is up)."""
        self._reads.extend(ids)
        if self._handing is not None and self._handing[0] in ids:
            # Read in on_message: the application has it, so it is acknowledged
            # first, or the relay would find it undelivered and send no receipt.
            self.cursor = max(self.cursor, self._handing[1])
        ws = self._ws
        if ws is not None and self._linked:
            await self._flush_reads(ws)

    async def _flush_reads(self, ws: ClientConnection) -> None:
        if self._reads and self.cursor > self._acked:
            # Ack first: a message is read receipted once its delivery is stored.
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._ack(ws)
        # Only while ``ws`` is still the link: if it ended during an await above, its
        # session already put back what it had out, and ids taken now would be sent
        # on a dead link and waited for forever; left here, the next link sends them.
        while self._reads and self._ws is ws and self._linked:
            batch, self._reads = self._reads[:256], self._reads[256:]
            self._read_seq += 1
            client_id = f"r{self._read_seq}"
            self._reads_out[client_id] = batch
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(frames.encode(frames.Read(ids=batch, client_id=client_id)).decode())

    def _answer(self, frame: frames.Sent | frames.Unsent) -> None:
        if isinstance(frame, frames.Sent):
            handle = self.outbox.answered(frame.client_id, frame.id)
            if handle is not None:
                handle.move("sent")
                for state, by in self.outbox.take_early(frame.id):
                    handle.move(state, by)
            return
        handle = self.outbox.answered(frame.client_id, None)
        if handle is None:
            return
        if frame.code == "rate_limited":
            # Not refused for good: sent again when the relay says (same client_id).
            self.outbox.waiting[handle.client_id] = handle
            delay = (frame.retry_after_ms or 1000) / 1000
            asyncio.get_running_loop().call_later(delay, self._resend, handle)
            return
        handle.code, handle.reason = frame.code, frame.message
        handle.move("unsent")

    def _resend(self, handle: Outgoing) -> None:
        ws = self._ws
        if ws is not None and self._linked and handle.client_id in self.outbox.waiting:
            task = asyncio.get_running_loop().create_task(_send_quietly(ws, _send_frame(handle)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _receipt(self, message: Message) -> None:
        data = message.data if isinstance(message.data, dict) else {}
        message_id, state = str(data.get("id", "")), str(data.get("state", ""))
        handle = self.outbox.by_id.get(message_id)
        if state in ("delivered", "read", "failed"):
            if handle is not None:
                handle.move(state, message.sender)  # type: ignore[arg-type]
            else:  # its ``sent`` may still come (Outbox.early)
                self.outbox.hold(message_id, state, message.sender)  # type: ignore[arg-type]
        key = (message_id, state, message.sender)
        if self._on_receipt is not None and key not in self._receipts_seen:
            self._receipts_seen[key] = None
            if len(self._receipts_seen) > self._remember:
                self._receipts_seen.popitem(last=False)
            self._on_receipt(message_id, state, message.sender)

    # --- public --------------------------------------------------------------
    async def run(self) -> None:
        """Receive until :meth:`stop`; raises :class:`LinkRefused` when refused for good."""
        while not self._stopping.is_set():
            delay: float | None = None
            self._emit(Connecting(self._target(), self._attempt + 1))
            try:
                if self.inbox:
                    await self._poll_inbox()
                else:
                    await self._link_once()
                reason = "the link closed"
            except LinkRefused:
                raise
            except _Retry as retry:
                delay, reason = retry.delay, retry.reason
            except (OSError, websockets.WebSocketException, httpx.HTTPError, TimeoutError) as exc:
                log.debug("link to relay lost: %r", exc)
                reason = describe(exc)
            if self._stopping.is_set():
                break
            if delay is None:
                # Full jitter (AWS architecture blog): spreads a reconnect storm.
                cap = min(self.backoff_max, self.backoff_base * 2**self._attempt)
                delay = random.uniform(0, cap)
            self._attempt += 1
            self._emit(Retrying(self._attempt, reason, delay, time.time() + delay))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _emit(self, event: LinkEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def _target(self) -> str:
        """Where the next attempt goes: the relay's HTTP url, else the next link URL."""
        if self.url is not None and (self.inbox or not self.link_urls):
            return self.url
        return self.link_urls[self._next_url % len(self.link_urls)]

    def stop_receiving(self) -> None:
        """Hand the application no further message, from now on: callable from
        ``on_message`` (to take exactly N messages), where awaiting :meth:`stop`
        would come too late for messages already buffered.  What was handed over
        is still acknowledged; ``await stop()`` next."""
        self._stopping.set()

    async def stop(self) -> None:
        """Stop receiving; what the application has seen is acknowledged first, and
        nothing is handed over once this was called."""
        self._stopping.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                if self.cursor > self._acked:
                    await self._ack(ws)
            await ws.close()

    async def _ack(self, ws: ClientConnection) -> None:
        cursor = self.cursor
        await ws.send(frames.encode(frames.Ack(cursor=cursor)).decode())
        self._acked = max(self._acked, cursor)

    # --- receiving -----------------------------------------------------------
    async def _deliver(self, f: frames.Msg) -> bool:
        """Hand a message to the application unless it is a duplicate."""
        if self._stopping.is_set():
            # Frames buffered before the link closed still come out of recv(): the
            # application must not see what will not be acknowledged.
            return False
        if f.cursor <= self.cursor or f.id in self._seen:
            self.duplicates += 1
            return False
        webpush = None
        if f.kind == "webpush":
            webpush = self.webpush.open(f.data, f.urgency)
            if webpush.error is not None:
                # Handed over all the same (and acked): one bad push must not stop
                # the ones behind it, nor vanish unseen.
                self.undecryptable += 1
                log.warning("Web Push message %s (cursor %d): %s", f.id, f.cursor, webpush.error)
        message = Message(
            id=f.id,
            cursor=f.cursor,
            kind=f.kind,
            data=msgspec.json.decode(f.data),
            topic=f.topic,
            urgency=f.urgency,
            sent_at=f.sent_at,
            expires_at=f.expires_at,
            sender=f.sender,
            webpush=webpush,
        )
        if message.kind == "receipt":
            self._receipt(message)
        else:
            self._handing = (f.id, f.cursor)
            try:
                result = self._on_message(message)
                if inspect.isawaitable(result):
                    await result
            finally:
                self._handing = None
        self.cursor = f.cursor
        self._seen[f.id] = None
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return True

    async def _deliver_system(self, f: frames.SystemMsg) -> bool:
        """Hand a system message to the application once per id; never acked."""
        if self._stopping.is_set():
            return False
        if f.id in self._seen:
            self.duplicates += 1
            return False
        data = msgspec.json.decode(f.data)
        if not isinstance(data, dict):
            data = {}
        message = SystemMessage(
            id=f.id,
            incident=str(data.get("incident", "")),
            event=str(data.get("event", "")),
            text=str(data.get("text", "")),
            data=data,
            urgency=f.urgency,
            sent_at=f.sent_at,
            expires_at=f.expires_at,
        )
        self._seen[f.id] = None  # first: a callback that fails is not called again
        if len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        if self._on_system is None:
            return False
        result = self._on_system(message)
        if inspect.isawaitable(result):
            await result
        return True

    async def _resolve_urls(self) -> list[str]:
        if self.url is not None and (not self.link_urls or self._attempt % 4 == 3):
            async with httpx.AsyncClient(timeout=10) as http:
                response = await http.get(f"{self.url}/v1/info")
                response.raise_for_status()
                self.link_urls = list(response.json()["link_urls"]) or self.link_urls
        return self.link_urls

    async def _link_once(self) -> None:
        urls = await self._resolve_urls()
        url = urls[self._next_url % len(urls)]
        self._next_url += 1  # the next attempt tries the next relay (failover)
        try:
            ws = await connect(
                url, ping_interval=None, open_timeout=10, max_size=2**20, max_queue=64
            )
        except websockets.InvalidStatus as exc:
            # 503 at capacity or while draining: come back when told, plus jitter.
            retry = exc.response.headers.get("Retry-After", "")
            if retry.isdigit():
                reason = f"HTTP {exc.response.status_code} on the link, retry after {retry} s"
                raise _Retry(int(retry) * random.uniform(1.0, 1.5), reason) from None
            raise
        self._ws = ws
        try:
            await self._session(ws, url)
        finally:
            self._link_ended()
            await ws.close()

    def _link_ended(self) -> None:
        self._ws = None
        self._linked = False
        # Reads the relay did not confirm go out again on the next link.
        self._reads[:0] = [i for batch in self._reads_out.values() for i in batch]
        self._reads_out.clear()

    async def _session(self, ws: ClientConnection, url: str) -> None:
        hello = frames.Hello(pin=self.pin, token=self.token, cursor=self.cursor, window=self.window)
        await ws.send(frames.encode(hello).decode())
        first = await self._first_frame(ws)
        if isinstance(first, frames.Error):
            raise self._refusal(first)
        if not isinstance(first, frames.Welcome):
            raise _Retry(None, f"the relay answered hello with {type(first).__name__}")
        self.cursor = max(self.cursor, first.cursor)
        self._acked = self.cursor  # hello.cursor acknowledged it (PROTOCOL "hello")
        self.links_opened += 1
        self._attempt = 0
        if self._on_link is not None:
            self._on_link(first)
        self._emit(Listening(url, first.node, first.region, self.cursor))
        self._linked = True
        for handle in list(self.outbox.waiting.values()):
            await ws.send(_send_frame(handle))  # unanswered: again, in send order
        await self._flush_reads(ws)
        unacked = 0
        ack_every = max(1, first.window // 4)
        while True:
            try:
                if unacked:
                    raw = await asyncio.wait_for(ws.recv(), 0.005)
                else:
                    raw = await ws.recv()
            except TimeoutError:
                await self._ack(ws)
                unacked = 0
                continue
            except websockets.ConnectionClosed as exc:
                raise _Retry(None, describe(exc)) from None
            try:
                frame = frames.decode_server_any(raw)
            except msgspec.ValidationError:
                continue  # a frame type or field newer than this SDK (PROTOCOL "Evolution")
            if isinstance(frame, frames.SystemMsg):
                await self._deliver_system(frame)  # not counted: never acked
            elif isinstance(frame, frames.Msg):
                await self._deliver(frame)
                unacked += 1
                if unacked >= ack_every:
                    await self._ack(ws)
                    unacked = 0
            elif isinstance(frame, frames.Sent | frames.Unsent):
                self._answer(frame)
            elif isinstance(frame, frames.ReadDone):
                self._reads_out.pop(frame.client_id, None)
            elif isinstance(frame, frames.Drain):
                raise _Retry(frame.retry_after_ms / 1000, f"drain: {frame.reason}")
            elif isinstance(frame, frames.Error):
                raise self._refusal(frame)

    async def _first_frame(self, ws: ClientConnection) -> frames.ServerFrame:
        """The answer to hello, skipping frame types newer than this SDK."""
        async with asyncio.timeout(15):
            while True:
                try:
                    return frames.decode_server(await ws.recv())
                except msgspec.ValidationError:
                    continue

    def _refusal(self, error: frames.Error) -> Exception:
        if error.status in FATAL_STATUSES and error.code != "replaced":
            return LinkRefused(error.status, error.code, error.message)
        # The relay's delay plus jitter, so refused links do not all return at once.
        retry = (
            error.retry_after_ms / 1000 * random.uniform(1, 1.5) if error.retry_after_ms else None
        )
        if error.code == "replaced":
            # Another link for this device took over: that is the application's
            # choice, so stop instead of fighting it.
            self._stopping.set()
        return _Retry(retry, f"{error.code} ({error.status}): {error.message}")

    # --- long-poll fallback --------------------------------------------------
    async def _poll_inbox(self) -> None:
        if self.url is None:
            raise ValueError("inbox mode needs the relay's HTTP url")
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=45) as http:
            listening = False
            while not self._stopping.is_set():
                # The first poll does not wait: it says at once whether the relay
                # accepts the device (Listening), and hands over the backlog.
                response = await http.get(
                    f"/v1/devices/{self.pin}/inbox",
                    params={"after": self.cursor, "wait": 25 if listening else 0},
                )
                if response.status_code != 200:
                    self._http_refusal(response)
                self._attempt = 0
                if not listening:
                    listening = True
                    self._emit(Listening(self.url, None, None, self.cursor))
                batch = _inbox_decoder.decode(response.content)
                for news in batch.system:  # the same each poll while it holds: once
                    await self._deliver_system(news)
                for f in batch.messages:
                    await self._deliver(f)
                if batch.messages:
                    ack = await http.post(
                        f"/v1/devices/{self.pin}/ack", json={"cursor": self.cursor}
                    )
                    if ack.status_code != 204:
                        self._http_refusal(ack)

    def _http_refusal(self, response: httpx.Response) -> None:
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        code = str(problem.get("type", "")).rsplit("/", 1)[-1] or "http"
        detail = str(problem.get("detail", response.reason_phrase))
        if response.status_code in FATAL_STATUSES:
            raise LinkRefused(response.status_code, code, detail)
        retry = response.headers.get("retry-after")
        reason = f"HTTP {response.status_code} from the inbox: {detail}"
        raise _Retry(float(retry) if retry and retry.isdigit() else None, reason)


async def _send_quietly(ws: ClientConnection, data: str) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.send(data)  # a link that closed meanwhile: the next one sends it


def _send_frame(handle: Outgoing) -> str:
    frame = frames.Send(to=handle.to, text=handle.text, client_id=handle.client_id, ttl=handle.ttl)
    return frames.encode(frame).decode()


class _InboxBody(msgspec.Struct):
    messages: list[frames.Msg]
    cursor: int
    system: list[frames.SystemMsg] = msgspec.field(default_factory=list)


_inbox_decoder = msgspec.json.Decoder(_InboxBody)
