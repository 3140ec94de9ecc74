"""core/matrix.py without a loop: which pushkeys name a subscription, what a device's
copy of a notification holds, and the retry key (PROTOCOL "Matrix push gateway")."""

from __future__ import annotations

import msgspec
import pytest

from pinrelay.core import matrix
from pinrelay.core.errors import LimitExceeded, RemoteProtocolError

SUB = "Qk3VqXq1oS8m2n4Zb6cT0w"


@pytest.mark.parametrize(
    ("pushkey", "expected"),
    [
        (SUB, SUB),
        (f"https://relay.example/push/{SUB}", SUB),
        # Another relay of the cluster handed it out: the id is what counts.
        (f"http://10.0.0.7:7780/push/{SUB}", SUB),
        (f"https://relay.example/push/{SUB}?up=1", None),
        (f"https://relay.example/push/{SUB}#x", None),
        (f"ftp://relay.example/push/{SUB}", None),
        (f"https://relay.example/other/{SUB}", None),
        (f"https://relay.example/push/{SUB}/messages", None),
        (f"https://relay.example/push/{SUB[:-1]}", None),
        ("https://ntfy.example.org/upAbCdEf?up=1", None),
        ("http://[::1", None),
        ("", None),
    ],
)
def test_subscription_of_pushkey(pushkey: str, expected: str | None) -> None:
    assert matrix.subscription_of_pushkey(pushkey) == expected


def body(content: str = "hi", **extra: object) -> bytes:
    devices = [
        {"app_id": "a", "pushkey": SUB, "tweaks": {"sound": "bing"}},
        {"app_id": "b", "pushkey": "other"},
    ]
    notification = {"event_id": "$e", "content": {"body": content}, "devices": devices, **extra}
    return msgspec.json.encode({"notification": notification})


def test_each_device_gets_the_notification_narrowed_to_it() -> None:
    notify = matrix.parse_notify(body(room_name="Mission Control", unknown={"kept": True}))
    assert [t.subscription for t in notify.targets] == [SUB, None]
    assert notify.event_id == "$e" and notify.urgency == "high"
    data = msgspec.json.decode(matrix.matrix_data(SUB, notify, notify.targets[0]))
    assert data == {
        "subscription": SUB,
        "notification": {
            "event_id": "$e",
            "content": {"body": "hi"},
            "room_name": "Mission Control",
            "unknown": {"kept": True},
            "devices": [{"app_id": "a", "pushkey": SUB, "tweaks": {"sound": "bing"}}],
        },
    }


def test_low_priority_is_normal_urgency() -> None:
    assert matrix.parse_notify(body(prio="low")).urgency == "normal"


def test_content_is_left_out_past_the_bound_and_then_413() -> None:
    notify = matrix.parse_notify(body(content="x" * 5000))
    data = matrix.matrix_data(SUB, notify, notify.targets[0])
    assert len(data) <= matrix.MAX_DATA
    assert "content" not in msgspec.json.decode(data)["notification"]
    huge = matrix.parse_notify(body(room_name="r" * 5000))
    with pytest.raises(LimitExceeded):
        matrix.matrix_data(SUB, huge, huge.targets[0])


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"notification": []}',
        b'{"notification": {"devices": {}}}',
        b'{"notification": {"devices": [{"pushkey": "k"}]}}',
        b'{"notification": {"devices": [{"app_id": 1, "pushkey": "k"}]}}',
        b'{"notification": {"event_id": 5, "devices": [{"app_id": "a", "pushkey": "k"}]}}',
        b'{"notification": {"prio": "urgent", "devices": [{"app_id": "a", "pushkey": "k"}]}}',
        msgspec.json.encode({"notification": {"devices": [{"app_id": "a", "pushkey": "k"}] * 21}}),
    ],
)
def test_not_a_notification_is_400(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        matrix.parse_notify(raw)
    assert caught.value.code.status == 400


def test_the_retry_key_names_the_event_and_the_set_of_subscriptions() -> None:
    key = matrix.idempotency_key("$e", ["b", "a"])
    assert key == matrix.idempotency_key("$e", ["a", "b"])
    assert key != matrix.idempotency_key("$f", ["a", "b"])
    assert key != matrix.idempotency_key("$e", ["a"])
