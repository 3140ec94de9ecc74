"""``pinrelay chat``: a terminal chat on prompt_toolkit (docs/DECISIONS.md, 37).

:class:`ChatSession` holds one link with the SDK's :class:`Device` and feeds a
:class:`~pinrelay.tui.view.ChatView`; :func:`build_app` draws the view in a
full-screen prompt_toolkit application: the conversation, a status bar with the
link's state, and an input line.  Enter sends the line, Ctrl-D or Ctrl-C quits.

Both run on one asyncio loop: the SDK's callbacks change the view and ask the app to
redraw (``invalidate``); the input line's handler queues the text for one sender
task, so messages go out (and show) in the order typed.  Tests drive the same app
with prompt_toolkit's pipe input and DummyOutput (tests/tui/).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer
from prompt_toolkit.data_structures import Point
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import HSplit, Layout, VSplit, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style

from pinrelay.client.device import Device, Message
from pinrelay.client.http import ApiError
from pinrelay.tui.view import ChatView

STYLE = Style.from_dict(
    {
        "time": "#888888",
        "peer": "bold ansicyan",
        "me": "bold",
        "note": "italic #888888",
        "mark.sending": "#888888",
        "mark.sent": "",
        "mark.delivered": "ansigreen",
        "mark.read": "bold ansigreen",
        "mark.failed": "bold ansired",
        "status": "reverse",
        "status.linked": "reverse ansigreen",
        "status.retrying": "reverse ansiyellow",
        "status.connecting": "reverse",
        "prompt": "bold",
    }
)


def build_app(
    view: ChatView,
    on_line: Callable[[str], None],
    *,
    input: Input | None = None,
    output: Output | None = None,
) -> Application[None]:
    """The full-screen app that draws ``view``; ``on_line(text)`` for each line typed."""
    keys = KeyBindings()

    @keys.add("c-c")
    @keys.add("c-d")
    def _quit(event: KeyPressEvent) -> None:
        event.app.exit()

    def accept(buffer: Buffer) -> bool:
        text = buffer.text
        if text.strip():
            on_line(text)
        return False  # clear the input line

    entry = Buffer(multiline=False, accept_handler=accept)

    def bottom() -> Point:
        # The cursor on the last line: the window scrolls to the newest message.
        return Point(0, max(0, view.line_count() - 1))

    def conversation_text() -> StyleAndTextTuples:
        return list(view.fragments())

    def status_text() -> StyleAndTextTuples:
        return list(view.status_fragments())

    conversation = Window(
        FormattedTextControl(conversation_text, get_cursor_position=bottom),
        wrap_lines=True,
    )
    status = Window(FormattedTextControl(status_text), height=1, style="class:status")
    prompt = VSplit(
        [
            Window(FormattedTextControl([("class:prompt", "> ")]), width=2),
            Window(BufferControl(entry)),
        ],
        height=1,
    )
    app: Application[None] = Application(
        layout=Layout(HSplit([conversation, status, prompt]), focused_element=entry),
        key_bindings=keys,
        style=STYLE,
        full_screen=True,
        input=input,
        output=output,
    )
    view.on_update = app.invalidate
    return app


class ChatSession:
    """A chat of device ``pin`` with ``peer`` (a PIN or a group id) over one link.

    ``device_options`` go to :class:`Device` (``backoff_base``, ``link_urls``...).
    """

    def __init__(
        self,
        pin: str,
        token: str,
        peer: str,
        *,
        url: str,
        view: ChatView | None = None,
        **device_options: Any,
    ) -> None:
        self.peer = peer
        self.view = view or ChatView(pin, peer)
        self.device = Device(
            pin, token, self._on_message, url=url, on_event=self.view.link, **device_options
        )
        self._typed: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reads: set[asyncio.Task[None]] = set()
        #: The link ended by itself (not on the user's Ctrl-D): another link of the
        #: same device replaced it, or the relay refused the device (run() raises).
        self.link_ended = False

    def say(self, text: str) -> None:
        """Send ``text`` to the peer (queued: sent in the order typed)."""
        self._typed.put_nowait(text)

    async def run(self, *, input: Input | None = None, output: Output | None = None) -> None:
        """Run the app until the user quits; raises :class:`LinkRefused` if the relay
        refuses the device.  What was shown is acknowledged before it returns."""
        app = build_app(self.view, self.say, input=input, output=output)
        link: asyncio.Task[None] | None = None

        def start() -> None:
            nonlocal link
            link = asyncio.get_running_loop().create_task(self.device.run())
            link.add_done_callback(lambda task: self._link_ended(app, task))
            self._spawn(self._sender())
            self._spawn(self._check_peer())

        try:
            with contextlib.suppress(EOFError):  # the input closed: as Ctrl-D
                await app.run_async(pre_run=start)
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._reads:  # reads of what was shown go out before the link closes
                await asyncio.wait(self._reads, timeout=1.0)
            await self.device.stop()
            if link is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(link), 2.0)
                if not link.done():
                    link.cancel()
                    await asyncio.gather(link, return_exceptions=True)
        if link is not None and link.done() and not link.cancelled():
            error = link.exception()
            if error is not None:
                raise error

    def _link_ended(self, app: Application[None], task: asyncio.Task[None]) -> None:
        """The device stopped running (refused, or replaced by another link of the
        same device): the app ends with it."""
        if app.is_running and app.future is not None and not app.future.done():
            self.link_ended = True
            app.exit()

    def _on_message(self, message: Message) -> None:
        message_id = self.view.incoming(message)
        if message_id is not None:
            # A task: it runs once this callback returned and the SDK moved its
            # cursor, so the read goes after the message's ack (PROTOCOL "read").
            read = asyncio.get_running_loop().create_task(self.device.read(message_id))
            self._reads.add(read)
            read.add_done_callback(self._reads.discard)

    async def _sender(self) -> None:
        while True:
            text = await self._typed.get()
            handle = await self.device.send(self.peer, text)
            self.view.outgoing(handle)

    async def _check_peer(self) -> None:
        """Say at once when messages to the peer would be refused."""
        try:
            if self.view.is_group:
                groups = await self.device.groups.list()
                mine = next((g for g in groups if g.group == self.peer), None)
                if mine is None:
                    self.view.note(f"you are not in group {self.peer}: messages will be refused")
                else:
                    self.view.named(mine.name)
                return
            contacts = await self.device.contacts.list()
        except ApiError as exc:
            if exc.status not in (0, 404):  # no such route yet; the link says unreachable
                self.view.note(f"could not check the contact: {exc.status} {exc.detail}")
            return
        state = next((c.state for c in contacts if c.pin == self.peer), None)
        if state != "accepted":
            why = f"({state})" if state else "(no invitation)"
            self.view.note(
                f"{self.peer} is not your contact {why}: messages will be refused until"
                f" you are (pinrelay contacts invite {self.peer})"
            )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
