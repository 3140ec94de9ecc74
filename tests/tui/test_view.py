"""The chat's view-model without a terminal: SDK events in, lines and marks out."""

from __future__ import annotations

from typing import Any

from pinrelay.client.chat import Outgoing, State
from pinrelay.client.device import Connecting, Listening, Message, Retrying
from pinrelay.tui.view import MARKS, ChatView

ME, PEER, OTHER = "0A0A0A0A", "0B0B0B0B", "0C0C0C0C"
GROUP = "G0123456789AB"
T0 = 1_800_000_000.0


def view(peer: str = PEER, **kwargs: Any) -> ChatView:
    return ChatView(ME, peer, clock=lambda: T0, **kwargs)


def msg(
    kind: str, data: Any, sender: str | None = PEER, message_id: str = "01M836D19VP1NT5ZC6RRXJ3T14"
) -> Message:
    return Message(
        id=message_id,
        cursor=1,
        kind=kind,
        data=data,
        topic=None,
        urgency="normal",
        sent_at="2027-01-15T08:00:00.000Z",
        expires_at="2027-01-22T08:00:00.000Z",
        sender=sender,
    )


def body(line: str) -> str:
    """A line without its time (the first 10 characters: 'HH:MM:SS  ')."""
    return line[10:]


def test_an_outgoing_mark_moves_in_place_and_never_back() -> None:
    v = view()
    updates: list[str] = []
    v.on_update = lambda: updates.append(v.text_lines()[-1])
    handle = Outgoing(PEER, "hello", None)
    line = v.outgoing(handle)
    assert body(v.text_lines()[0]) == "you: hello  …"
    states: tuple[State, ...] = ("sent", "delivered", "read")
    for state in states:
        handle.move(state)
    handle.move("delivered")  # a late, repeated receipt: nothing changes
    assert [body(u)[-1] for u in updates] == ["…", "✓", "D", "R"]
    assert len(v.lines) == 1 and v.lines[0] is line
    assert (line.mark, line.state) == ("R", "read")


def test_refused_and_failed_messages_say_why() -> None:
    v = view()
    refused, expired = Outgoing(PEER, "a", None), Outgoing(PEER, "b", None)
    v.outgoing(refused)
    v.outgoing(expired)
    refused.code, refused.reason = "not_contact", f"{PEER} is not a contact that accepted you"
    refused.move("unsent")
    expired.move("sent")
    expired.move("failed")
    lines = [body(line) for line in v.text_lines()]
    assert lines == [
        f"you: a  ✗ not_contact: {PEER} is not a contact that accepted you",
        "you: b  ✗ expired undelivered",
    ]
    assert MARKS["failed"] == MARKS["unsent"] == "✗"


def test_the_peers_chats_are_shown_and_to_be_read() -> None:
    v = view()
    assert v.incoming(msg("chat", {"text": "hi", "group": None})) == "01M836D19VP1NT5ZC6RRXJ3T14"
    assert body(v.text_lines()[0]) == f"{PEER}: hi"
    assert v.lines[0].kind == "in" and v.lines[0].sender == PEER


def test_everything_else_is_a_note_and_not_read() -> None:
    v = view()
    assert v.incoming(msg("chat", {"text": "psst", "group": None}, sender=OTHER)) is None
    assert v.incoming(msg("chat", {"text": "all", "group": GROUP})) is None
    assert v.incoming(msg("contact", {"event": "invited"}, sender=OTHER)) is None
    assert v.incoming(msg("contact", {"event": "accepted"})) is None
    assert v.incoming(msg("push", {"n": 1}, sender=None)) is None
    assert [body(line) for line in v.text_lines()] == [
        f"· {OTHER} (another chat): psst",
        f"· {PEER} in {GROUP} (another chat): all",
        f"· {OTHER} invited you (pinrelay contacts accept {OTHER})",
        f"· {PEER} accepted: you are contacts",
        '· push: {"n": 1}',
    ]
    assert {line.kind for line in v.lines} == {"note"}


def test_a_group_view_shows_the_groups_chats_with_each_sender() -> None:
    v = view(GROUP)
    assert v.is_group
    assert v.incoming(msg("chat", {"text": "one", "group": GROUP}, sender=OTHER)) is not None
    assert v.incoming(msg("chat", {"text": "two", "group": None})) is None
    assert [body(line) for line in v.text_lines()] == [
        f"{OTHER}: one",
        f"· {PEER} (another chat): two",
    ]
    # The bar names the group once its name is known.
    updates: list[None] = []
    v.on_update = lambda: updates.append(None)
    v.named("crew")
    status = "".join(text for _style, text in v.status_fragments())
    assert f"{ME} ⇄ crew ({GROUP})" in status and updates


def test_the_link_state_follows_the_sdks_events() -> None:
    v = view()
    assert (v.link_state, v.link_detail) == ("connecting", "connecting")
    v.link(Connecting("ws://127.0.0.1:1/v1/link", 2))
    assert (v.link_state, v.link_detail) == (
        "connecting",
        "connecting to ws://127.0.0.1:1/v1/link… (attempt 2)",
    )
    v.link(Retrying(2, "connection refused (is the relay running?)", 1.25, T0 + 1.25))
    assert (v.link_state, v.link_detail[:12]) == ("retrying", "retrying at ")
    assert v.link_detail.endswith("(in 1.2 s): connection refused (is the relay running?)")
    v.link(Listening("ws://127.0.0.1:1/v1/link", "node-1", "eu", 7))
    assert (v.link_state, v.link_detail) == ("linked", "linked on node-1 (eu)")
    status = "".join(text for _style, text in v.status_fragments())
    assert f"{ME} ⇄ {PEER}" in status and "linked on node-1 (eu)" in status
    v.link(Listening("http://127.0.0.1:1", None, None, 7))  # the inbox names no node
    assert v.link_detail == "linked"


def test_lines_are_bounded_and_multiline_texts_counted() -> None:
    v = view(max_lines=3)
    for n in range(5):
        v.note(f"note {n}")
    assert [body(line) for line in v.text_lines()] == ["· note 2", "· note 3", "· note 4"]
    v.outgoing(Outgoing(PEER, "two\nlines", None))
    assert v.line_count() == 4
    rendered = "".join(text for _style, text in v.fragments())
    assert rendered.count("\n") == v.line_count() - 1


def test_records_for_the_json_transcript() -> None:
    v = view()
    handle = Outgoing(PEER, "out", None)
    v.outgoing(handle)
    handle.id = "01M836EJZKBE5YJZ0382CGPRYY"
    handle.move("sent")
    v.incoming(msg("chat", {"text": "in", "group": None}))
    at = v.lines[0].at
    assert v.records()[0] == {
        "kind": "out",
        "at": at,
        "from": ME,
        "id": "01M836EJZKBE5YJZ0382CGPRYY",
        "text": "out",
        "state": "sent",
    }
    assert v.records()[1]["kind"] == "in" and "state" not in v.records()[1]
