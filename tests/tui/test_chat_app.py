"""`pinrelay chat`'s app against a real relay: typed through prompt_toolkit's pipe
input, drawn to its DummyOutput.  Alice chats in the app, Bob uses the SDK; Alice's
mark moves ✓ → D → R as Bob's device acknowledges and reads, Bob's reply shows with
his PIN and is read back to him because Alice's app showed it."""

from __future__ import annotations

import asyncio

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from pinrelay.client.device import Device, LinkRefused, Message
from pinrelay.testing.wait import wait_until_async
from pinrelay.tui.app import ChatSession
from pinrelay.tui.view import ChatView, Line
from tests.chat.test_chat_link import befriend
from tests.relayproc import RelayProc

# Every test here on the `relay` fixture makes devices of its own: one relay for the
# module (tests/conftest.py).
pytestmark = pytest.mark.shared_relay


class RecordingView(ChatView):
    """A ChatView that keeps the text of every state it was drawn in."""

    def __init__(self, me: str, peer: str) -> None:
        super().__init__(me, peer)
        self.frames: list[list[str]] = []

    def _updated(self) -> None:
        self.frames.append(self.text_lines())
        super()._updated()


def marks_of(view: RecordingView, text: str) -> list[str]:
    """The marks the line of ``text`` showed, in order, each once."""
    seen: list[str] = []
    for frame in view.frames:
        for line in frame:
            if f"you: {text}  " in line:
                mark = line.rsplit("  ", 1)[1][0]
                if not seen or seen[-1] != mark:
                    seen.append(mark)
    return seen


def outgoing(view: ChatView, text: str) -> Line | None:
    return next((ln for ln in view.lines if ln.kind == "out" and ln.text == text), None)


async def test_two_devices_chat_and_the_marks_move(relay: RelayProc) -> None:
    alice, bob = relay.create_device(), relay.create_device()
    befriend(relay, alice, bob)
    bob_got: list[Message] = []

    def bob_receives(m: Message) -> None:
        if m.kind == "chat":
            bob_got.append(m)

    bob_device = Device(bob["pin"], bob["token"], bob_receives, url=relay.url)
    bob_link = asyncio.create_task(bob_device.run())
    view = RecordingView(alice["pin"], bob["pin"])
    session = ChatSession(
        alice["pin"], alice["token"], bob["pin"], url=relay.url, view=view, backoff_base=0.05
    )
    with create_pipe_input() as keys:
        app = asyncio.create_task(session.run(input=keys, output=DummyOutput()))
        try:
            await wait_until_async(lambda: view.link_state == "linked", 10, 0.02, "linked")
            assert view.link_detail == "linked on node-1 (local)"
            keys.send_text("hello bob ✓\r")
            line = await wait_until_async(
                lambda: outgoing(view, "hello bob ✓"), 10, 0.02, "the line shows"
            )
            # Bob's SDK acknowledges it: delivered.
            await wait_until_async(lambda: line.mark == "D", 10, 0.02, lambda: f"D: {line}")
            assert [m.data["text"] for m in bob_got] == ["hello bob ✓"]
            assert line.handle is not None and line.handle.id == bob_got[0].id
            await bob_device.read(bob_got[0].id)
            await wait_until_async(lambda: line.mark == "R", 10, 0.02, lambda: f"R: {line}")
            assert marks_of(view, "hello bob ✓")[-3:] == ["✓", "D", "R"]
            assert marks_of(view, "hello bob ✓")[0] in ("…", "✓")

            # Bob answers; Alice's app shows it with his PIN and tells him it was read.
            reply = await bob_device.send(alice["pin"], "hi alice")
            await wait_until_async(
                lambda: reply.state == "read", 10, 0.02, lambda: f"read: {reply} {view.lines}"
            )
            shown = [ln for ln in view.text_lines() if f"{bob['pin']}: hi alice" in ln]
            assert len(shown) == 1

            # Two lines typed at once go out, and show, in the order typed.
            keys.send_text("one\rtwo\r")
            await wait_until_async(lambda: outgoing(view, "two"), 10, 0.02, "both lines")
            texts = [ln.text for ln in view.lines if ln.kind == "out"]
            assert texts == ["hello bob ✓", "one", "two"]
            await wait_until_async(lambda: [m.data["text"] for m in bob_got][-2:] == ["one", "two"])
            keys.send_text("\x04")  # Ctrl-D
            await asyncio.wait_for(app, 10)
        finally:
            if not app.done():
                app.cancel()
            await bob_device.stop()
            bob_link.cancel()
            await asyncio.gather(app, bob_link, return_exceptions=True)
    assert not session.link_ended
    transcript = view.text_lines()
    assert any(ln.endswith("you: hello bob ✓  R") for ln in transcript), transcript


async def test_a_stranger_is_told_and_the_message_is_refused(relay: RelayProc) -> None:
    alice, stranger = relay.create_device(), relay.create_device()
    view = ChatView(alice["pin"], stranger["pin"])
    session = ChatSession(alice["pin"], alice["token"], stranger["pin"], url=relay.url, view=view)
    with create_pipe_input() as keys:
        app = asyncio.create_task(session.run(input=keys, output=DummyOutput()))
        try:
            await wait_until_async(lambda: view.link_state == "linked", 10, 0.02, "linked")
            note = f"{stranger['pin']} is not your contact (no invitation)"
            await wait_until_async(
                lambda: any(note in line for line in view.text_lines()), 10, 0.02, note
            )
            keys.send_text("anyone?\r")
            line = await wait_until_async(lambda: outgoing(view, "anyone?"), 10, 0.02, "shown")
            await wait_until_async(lambda: line.mark == "✗", 10, 0.02, lambda: f"✗: {line}")
            assert line.handle is not None and line.handle.code == "not_contact"
            assert view.text_lines()[-1].endswith(f"✗ not_contact: {line.handle.reason}")
            keys.send_text("\x04")
            await asyncio.wait_for(app, 10)
        finally:
            if not app.done():
                app.cancel()
                await asyncio.gather(app, return_exceptions=True)


async def test_a_refused_device_ends_the_app_with_the_reason(relay: RelayProc) -> None:
    alice, bob = relay.create_device(), relay.create_device()
    session = ChatSession(alice["pin"], "wrong", bob["pin"], url=relay.url)
    with create_pipe_input() as keys, pytest.raises(LinkRefused, match="unauthorized"):
        await asyncio.wait_for(session.run(input=keys, output=DummyOutput()), 20)
    assert session.link_ended


async def test_a_group_chat(relay: RelayProc) -> None:
    """Alice chats in a group of Bob and Carol: each one's message shows with the
    sender's PIN, hers reaches both and moves to D and R on their receipts."""
    alice, bob, carol = (relay.create_device() for _ in range(3))
    befriend(relay, alice, bob)
    befriend(relay, alice, carol)
    alice_sdk = Device(alice["pin"], alice["token"], lambda _m: None, url=relay.url)
    group = await alice_sdk.groups.create("trio", [bob["pin"], carol["pin"]])
    assert sorted(group.members) == sorted([alice["pin"], bob["pin"], carol["pin"]])
    got: dict[str, list[Message]] = {bob["pin"]: [], carol["pin"]: []}
    members = [
        Device(d["pin"], d["token"], got[d["pin"]].append, url=relay.url) for d in (bob, carol)
    ]
    links = [asyncio.create_task(m.run()) for m in members]
    view = ChatView(alice["pin"], group.group)
    session = ChatSession(alice["pin"], alice["token"], group.group, url=relay.url, view=view)
    with create_pipe_input() as keys:
        app = asyncio.create_task(session.run(input=keys, output=DummyOutput()))
        try:
            await wait_until_async(lambda: view.link_state == "linked", 10, 0.02, "linked")
            await members[0].send(group.group, "hi all")
            want = f"{bob['pin']}: hi all"
            await wait_until_async(
                lambda: any(want in ln for ln in view.text_lines()), 10, 0.02, want
            )
            keys.send_text("hello trio\r")
            line = await wait_until_async(lambda: outgoing(view, "hello trio"), 10, 0.02, "shown")
            await wait_until_async(lambda: line.mark == "D", 10, 0.02, lambda: f"D: {line}")

            def chats(pin: str) -> list[Message]:
                return [m for m in got[pin] if m.kind == "chat" and m.data["text"] == "hello trio"]

            await wait_until_async(lambda: chats(bob["pin"]) and chats(carol["pin"]), 10, 0.02)
            assert chats(bob["pin"])[0].data["group"] == group.group
            await members[1].read(chats(carol["pin"])[0].id)
            await wait_until_async(lambda: line.mark == "R", 10, 0.02, lambda: f"R: {line}")
            keys.send_text("\x04")
            await asyncio.wait_for(app, 10)
        finally:
            if not app.done():
                app.cancel()
            for m in members:
                await m.stop()
            for t in links:
                t.cancel()
            await asyncio.gather(app, *links, return_exceptions=True)
