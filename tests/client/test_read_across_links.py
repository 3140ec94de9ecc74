"""Regression: a ``read`` asked just as the link drops is not lost.

``Device.read`` acknowledges first when it has unacknowledged messages, which awaits
a write on the link.  When the link ended during that await, its session had put
back the reads it had out (none yet) and the next link flushed what was waiting;
the read then took its ids anyway and sent them on the dead link, where no
``read_done`` would ever come, and no later link sent them again: the read receipts
were lost (seen about once in ten runs of tests/chat/test_chat_crash.py, every read
of both devices at once, after the last SIGKILL).
"""

from __future__ import annotations

from typing import Any

from pinrelay.client.device import Device, Message


async def on_message(m: Message) -> None:
    pass


class DyingLink:
    """A link whose first write (the ack) sees the link end meanwhile."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.sent: list[str] = []

    async def send(self, text: Any) -> None:
        self.sent.append(str(text))
        if len(self.sent) == 1:
            self.device._link_ended()  # what the session's end does, during the await


async def test_a_read_asked_as_the_link_drops_waits_for_the_next_link() -> None:
    device = Device("0A0A0A0A", "token", on_message, url="http://127.0.0.1:9", cursor=5)
    link = DyingLink(device)
    device._ws, device._linked, device._acked = link, True, 3  # type: ignore[assignment]
    await device.read("01A", "01B")
    assert len(link.sent) == 1 and '"ack"' in link.sent[0]  # the ack went; no read after it
    # Still to send, on the next link (its session flushes them after welcome).
    assert (device._reads, device._reads_out) == (["01A", "01B"], {})
