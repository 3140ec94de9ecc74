"""A link's requests: ``send``, ``read`` and ``subscribe`` frames (PROTOCOL "send",
"read", "Web Push"), handled one at a time in the order they came, so a recipient
sees one sender's messages in the order they were sent and a ``read`` follows the
acks before it.

The queue is bounded twice: past MAX_QUEUED_CHAT frames or MAX_QUEUED_BYTES of text
the link stops reading until it is half empty (what the client sends meanwhile waits
in the kernel's buffers), so a pipelining client is slowed, never refused out of
order; past QUEUE_HARD_LIMIT (what one socket read can add) the link fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from pinrelay.chat import Chat
from pinrelay.core import frames
from pinrelay.core.chat import Refused
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.session import Failure, ServerSession
from pinrelay.core.webpush import SubscribeFields
from pinrelay.delivery import Delivery
from pinrelay.webpush import WebPush

log = logging.getLogger(__name__)

MAX_QUEUED_CHAT = 64
MAX_QUEUED_BYTES = 256 * 1024
QUEUE_HARD_LIMIT = 4096
#: retry_after_ms of the error that closes a link whose queue overflowed.
OVERFLOW_RETRY_MS = 5_000

Request = frames.Send | frames.Read | frames.Subscribe


class Link(Protocol):
    """What the queue needs of its link (server.LinkProtocol)."""

    pin: str | None
    delivery: Delivery | None
    session: ServerSession
    transport: asyncio.Transport | None

    def _send(self, data: bytes) -> None: ...

    def _fail(self, failure: Failure) -> None: ...

    def _resume_reading(self) -> None: ...


def unsent(client_id: str, code: str, message: str, retry_after: float | None = None) -> bytes:
    retry_ms = None if retry_after is None else int(retry_after * 1000) + 1
    return frames.encode(
        frames.Unsent(client_id=client_id, code=code, message=message, retry_after_ms=retry_ms)
    )


class Requests:
    __slots__ = ("_bytes", "_chat", "_link", "_queue", "_task", "_webpush", "full")

    def __init__(self, link: Link, chat: Chat | None, webpush: WebPush | None) -> None:
        self._link = link
        self._chat = chat
        self._webpush = webpush
        self._queue: deque[Request] = deque()
        self._bytes = 0
        self._task: asyncio.Task[None] | None = None
        #: Reading is paused because the queue is full.
        self.full = False

    def add(self, frame: Request) -> None:
        link = self._link
        if link.pin is None or self._chat is None:
            link._fail(link.session.fail(ErrorCode.NOT_FOUND, "this relay has no chat"))
            return
        queue = self._queue
        if len(queue) >= QUEUE_HARD_LIMIT:
            detail = "too many sends wait for answers"
            link._fail(link.session.fail(ErrorCode.RATE_LIMITED, detail, OVERFLOW_RETRY_MS))
            return
        queue.append(frame)
        self._bytes += _size(frame)
        transport = link.transport
        over = len(queue) >= MAX_QUEUED_CHAT or self._bytes >= MAX_QUEUED_BYTES
        if over and not self.full and transport is not None and not transport.is_closing():
            self.full = True
            transport.pause_reading()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(self._chat))

    def _clear(self) -> None:
        self._queue.clear()
        self._bytes = 0

    async def _run(self, chat: Chat) -> None:
        link = self._link
        pin = link.pin
        queue = self._queue
        try:
            while queue and pin is not None and link.delivery is not None:
                if link.delivery.closed:
                    self._clear()
                    return
                frame = queue[0]
                if isinstance(frame, frames.Read):
                    await link.delivery.settled()  # the acks sent before it, first
                    await chat.read(pin, frame.ids)
                    if frame.client_id is not None:
                        link._send(frames.encode(frames.ReadDone(client_id=frame.client_id)))
                elif isinstance(frame, frames.Subscribe):
                    if not await self._subscribe(pin, frame):
                        return
                else:
                    link._send(await _answer_send(chat, pin, frame))
                queue.popleft()
                self._bytes -= _size(frame)
                if self.full and len(queue) <= MAX_QUEUED_CHAT // 2:
                    self.full = False
                    link._resume_reading()
        except Exception as exc:
            # The store failed: nothing answered is lost; the client resends what was
            # not answered (with its client_id: nothing is stored twice).
            if not isinstance(exc, PinrelayError):
                log.exception("chat on the link of %s failed", pin)
            self._clear()
            link._fail(link.session.fail(ErrorCode.OVERLOADED, "cannot store now", 1000))
        finally:
            self._task = None

    async def _subscribe(self, pin: str, frame: frames.Subscribe) -> bool:
        """Answer ``subscribed``; a bad key or too many fail the link (False)."""
        link, webpush = self._link, self._webpush
        fields = SubscribeFields(keys=frame.keys, applicationServerKey=frame.applicationServerKey)
        try:
            if webpush is None:
                raise PinrelayError("this relay has no Web Push", ErrorCode.NOT_FOUND)
            sub = await webpush.subscribe(pin, fields)
        except PinrelayError as exc:
            if exc.code is ErrorCode.OVERLOADED:
                raise
            self._clear()
            link._fail(link.session.fail(exc.code, exc.detail))
            return False
        answer = frames.Subscribed(client_id=frame.client_id, subscription=webpush.view(sub))
        link._send(frames.encode(answer))
        return True


def _size(frame: Request) -> int:
    return len(frame.text) if isinstance(frame, frames.Send) else 0


async def _answer_send(chat: Chat, pin: str, frame: frames.Send) -> bytes:
    try:
        sent = await chat.send(pin, frame.to, frame.text, frame.client_id, frame.ttl)
    except Refused as exc:
        return unsent(frame.client_id, exc.reason, exc.detail, exc.retry_after)
    return frames.encode(frames.Sent(client_id=frame.client_id, id=sent.id, to=sent.to))
