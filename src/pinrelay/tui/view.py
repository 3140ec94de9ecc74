"""The terminal chat's view-model: SDK events in, lines out, no terminal needed.

:class:`ChatView` is told what the device's SDK sees (messages, its own outgoing
handles, link events) and keeps the conversation as :class:`Line` objects.  An
outgoing line holds its :class:`~pinrelay.client.chat.Outgoing` handle and shows
the handle's state as a mark (:data:`MARKS`): ``…`` sending, ``✓`` sent, ``D``
delivered, ``R`` read, ``✗`` failed or unsent; the mark is read from the handle
at every render, so a receipt changes the line in place.  The app (tui/app.py)
draws :meth:`ChatView.fragments` and :meth:`ChatView.status_fragments`; tests read
:meth:`ChatView.text_lines`.

Rules:

1. A message of this conversation (a chat from the peer, or one of the group) is
   shown and its id returned by :meth:`ChatView.incoming`: the app sends ``read``
   for it.  Nothing else is marked read.
2. Everything else the link hands over (chats of other conversations, contact
   notices, pushes) is shown as a note: the SDK acknowledges it, so hiding it would
   lose it from the user's sight.
3. The view keeps at most ``max_lines`` lines (the oldest go).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pinrelay.client.chat import Change, Outgoing, State
from pinrelay.client.device import Connecting, LinkEvent, Listening, Message, Retrying
from pinrelay.core.chat import is_group_id

#: The mark each state of an outgoing message shows.
MARKS: dict[State, str] = {
    "sending": "…",
    "sent": "✓",
    "delivered": "D",
    "read": "R",
    "failed": "✗",
    "unsent": "✗",
}
#: prompt_toolkit style classes of the marks (tui/app.py defines them).
_MARK_STYLE: dict[State, str] = {
    "sending": "class:mark.sending",
    "sent": "class:mark.sent",
    "delivered": "class:mark.delivered",
    "read": "class:mark.read",
    "failed": "class:mark.failed",
    "unsent": "class:mark.failed",
}

Fragments = list[tuple[str, str]]
LinkState = Literal["connecting", "retrying", "linked"]


@dataclass(slots=True)
class Line:
    """One line of the conversation."""

    kind: Literal["in", "out", "note"]
    at: str
    text: str
    #: The sender's PIN (``in``; a note about a message from someone).
    sender: str | None = None
    #: The message id (``in``; ``out`` once sent).
    id: str | None = None
    handle: Outgoing | None = None

    @property
    def state(self) -> State | None:
        return self.handle.state if self.handle is not None else None

    @property
    def mark(self) -> str:
        return MARKS[self.handle.state] if self.handle is not None else ""


def _local(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _sent_at(value: str, fallback: float) -> str:
    """A message's ``sent_at`` (RFC 3339, UTC) as local HH:MM:SS."""
    try:
        return _local(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return _local(fallback)


class ChatView:
    """The conversation of device ``me`` with ``peer`` (a PIN or a group id)."""

    def __init__(
        self,
        me: str,
        peer: str,
        *,
        clock: Callable[[], float] = time.time,
        max_lines: int = 1000,
    ) -> None:
        self.me = me
        self.peer = peer
        self.is_group = is_group_id(peer)
        #: A group's name, once known (the status bar shows it).
        self.peer_name: str | None = None
        self.lines: list[Line] = []
        self.link_state: LinkState = "connecting"
        #: The link's state in a few words: "connecting to …", "linked on node-1 (eu)".
        self.link_detail = "connecting"
        #: Called after every change (the app redraws).
        self.on_update: Callable[[], None] | None = None
        self._clock = clock
        self._max = max_lines

    # --- what the SDK tells ------------------------------------------------------
    def incoming(self, message: Message) -> str | None:
        """Show a message the link handed over; its id if it is to be marked read."""
        data: Any = message.data
        at = _sent_at(message.sent_at, self._clock())
        if message.kind == "chat" and isinstance(data, dict):
            text = str(data.get("text", ""))
            group = data.get("group")
            if self._ours(message.sender, group):
                self._add(Line("in", at, text, sender=message.sender, id=message.id))
                return message.id
            where = f" in {group}" if group else ""
            self.note(f"{message.sender}{where} (another chat): {text}", at, message.sender)
            return None
        if message.kind == "contact" and isinstance(data, dict):
            self.note(self._contact_text(message.sender, data), at, message.sender)
            return None
        self.note(f"{message.kind}: {json.dumps(message.data)}", at, message.sender)
        return None

    def outgoing(self, handle: Outgoing) -> Line:
        """Show a message this device sends; its mark follows the handle's state."""
        line = Line("out", _local(self._clock()), handle.text, sender=self.me, handle=handle)
        handle.on_change = self._changed
        self._add(line)
        return line

    def link(self, event: LinkEvent) -> None:
        """The link's state, from the SDK's ``on_event``."""
        if isinstance(event, Connecting):
            again = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            self.link_state, self.link_detail = "connecting", f"connecting to {event.url}…{again}"
        elif isinstance(event, Retrying):
            self.link_state = "retrying"
            self.link_detail = (
                f"retrying at {_local(event.retry_at)} (in {event.delay_s:.1f} s): {event.reason}"
            )
        elif isinstance(event, Listening):
            where = f" on {event.node} ({event.region})" if event.node else ""
            self.link_state, self.link_detail = "linked", f"linked{where}"
        self._updated()

    def note(self, text: str, at: str | None = None, sender: str | None = None) -> None:
        """A line of the app's own, or of something that is not this conversation."""
        self._add(Line("note", at or _local(self._clock()), text, sender=sender))

    def named(self, name: str) -> None:
        """The group's name is known: the status bar shows it."""
        self.peer_name = name
        self._updated()

    # --- what the app draws --------------------------------------------------
    def text_lines(self) -> list[str]:
        """The conversation as plain text, one string per line (the transcript)."""
        return ["".join(text for _style, text in self._line(line)) for line in self.lines]

    def fragments(self) -> Fragments:
        """The conversation as prompt_toolkit (style, text) fragments."""
        result: Fragments = []
        for n, line in enumerate(self.lines):
            if n:
                result.append(("", "\n"))
            result.extend(self._line(line))
        return result

    def line_count(self) -> int:
        """Lines :meth:`fragments` spans (texts may hold newlines)."""
        return sum(1 + line.text.count("\n") for line in self.lines)

    def status_fragments(self) -> Fragments:
        style = {
            "linked": "class:status.linked",
            "retrying": "class:status.retrying",
            "connecting": "class:status.connecting",
        }[self.link_state]
        return [
            ("class:status", f" {self.me} ⇄ {self._peer_label()}  "),
            (style, f" {self.link_detail} "),
            ("class:status", "  Enter: send · Ctrl-D: quit "),
        ]

    def records(self) -> list[dict[str, Any]]:
        """The conversation as JSON objects (``chat --json`` prints them at exit)."""
        return [
            {
                "kind": line.kind,
                "at": line.at,
                "from": line.sender,
                "id": line.handle.id if line.handle is not None else line.id,
                "text": line.text,
                **({"state": line.state} if line.handle is not None else {}),
            }
            for line in self.lines
        ]

    # --- inside ----------------------------------------------------------------
    def _peer_label(self) -> str:
        return f"{self.peer_name} ({self.peer})" if self.peer_name else self.peer

    def _ours(self, sender: str | None, group: object) -> bool:
        if self.is_group:
            return group == self.peer
        return group is None and sender == self.peer

    def _contact_text(self, sender: str | None, data: dict[str, Any]) -> str:
        event = str(data.get("event", ""))
        if event == "invited" and not data.get("group"):
            return f"{sender} invited you (pinrelay contacts accept {sender})"
        if event == "accepted":
            return f"{sender} accepted: you are contacts"
        group = data.get("group")
        name = data.get("name")
        about = f" {group}" + (f" ({name})" if name else "") if group else ""
        return f"{sender}: {event}{about}"

    def _line(self, line: Line) -> Fragments:
        text = line.text.replace("\n", "\n" + " " * 10)
        if line.kind == "note":
            return [("class:time", f"{line.at}  "), ("class:note", f"· {text}")]
        if line.kind == "in":
            who = line.sender or "?"
            return [
                ("class:time", f"{line.at}  "),
                ("class:peer", f"{who}: "),
                ("", text),
            ]
        handle = line.handle
        assert handle is not None
        fragments: Fragments = [
            ("class:time", f"{line.at}  "),
            ("class:me", "you: "),
            ("", text),
            ("", "  "),
            (_MARK_STYLE[handle.state], MARKS[handle.state]),
        ]
        if handle.state == "unsent":
            fragments.append(("class:mark.failed", f" {handle.code}: {handle.reason}"))
        elif handle.state == "failed":
            fragments.append(("class:mark.failed", " expired undelivered"))
        return fragments

    def _changed(self, _handle: Outgoing, _change: Change) -> None:
        self._updated()

    def _add(self, line: Line) -> None:
        self.lines.append(line)
        if len(self.lines) > self._max:
            del self.lines[: len(self.lines) - self._max]
        self._updated()

    def _updated(self) -> None:
        if self.on_update is not None:
            self.on_update()
