"""Regression: a receipt that arrives before the ``sent`` naming its message.

After a relay crash the SDK sends the ``send`` again on its next link; the relay
answers it only once the first attempt's idempotency lease is taken over (seconds),
while the recipient may already have acknowledged the message and its delivered
receipt reach the sender first.  The SDK used to drop that receipt (no handle had
the id yet), leaving the message at ``sent`` for good (seen in
tests/cluster/test_chat_cluster.py under relay kills).
"""

from __future__ import annotations

from pinrelay.client.chat import Outgoing
from pinrelay.client.device import Device, Message
from pinrelay.core import frames


async def on_message(m: Message) -> None:
    pass


def receipt(message_id: str, state: str, by: str) -> Message:
    data = {"id": message_id, "state": state}
    return Message("01R", 1, "receipt", data, None, "normal", "", "", by)


async def test_a_receipt_before_its_sent_is_applied_when_the_sent_comes() -> None:
    device = Device("0A0A0A0A", "token", on_message, url="http://127.0.0.1:9")
    handle = Outgoing("0B0B0B0B", "hello", None)
    seen: list[str] = []
    handle.on_change = lambda h, change: seen.append(change.state)
    device.outbox.waiting[handle.client_id] = handle
    device._receipt(receipt("01MSG", "delivered", "0B0B0B0B"))
    device._receipt(receipt("01OTHER", "delivered", "0B0B0B0B"))  # not ours: kept aside
    assert handle.state == "sending"
    device._answer(frames.Sent(client_id=handle.client_id, id="01MSG", to="0B0B0B0B"))
    assert (handle.state, seen) == ("delivered", ["sent", "delivered"])
    assert list(device.outbox.early) == ["01OTHER"]
