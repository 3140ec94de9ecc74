"""How the relay and its SQLite writer process talk (store/sqlite_writer.py).

A :class:`Request` carries one write (any op of store/sqlite_ops.py,
store/sqlite_channel_ops.py, store/sqlite_incident_ops.py,
store/sqlite_credit_ops.py or store/sqlite_figure_ops.py, tagged, so one
decoder reads them all); a :class:`Reply` answers a whole group with the
commit's time.  msgpack, framed by the writer module.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pinrelay.store import sqlite_ops as ops
from pinrelay.store.sqlite_channel_ops import ChannelOp
from pinrelay.store.sqlite_credit_ops import CreditOp
from pinrelay.store.sqlite_figure_ops import PutDelayDay, PutReadings
from pinrelay.store.sqlite_incident_ops import Probe, PutIncident
from pinrelay.store.sqlite_webhook_ops import WebhookOp

AnyOp = (
    ops.CreateDevice
    | ops.DeleteDevice
    | ops.SetToken
    | ops.TouchDevice
    | ops.CreateKey
    | ops.RevokeKey
    | ops.AckMany
    | ops.Sweep
    | ops.Append
    | ops.SetDeviceTenant
    | ops.SetGrant
    | ops.PutTenant
    | ops.ContactAction
    | ops.CreateGroup
    | ops.ChangeMembers
    | ops.Forget
    | ops.PutUnread
    | ops.DropUnread
    | ops.CreatePairing
    | ops.RequestMove
    | ops.AcceptMove
    | ops.RedeemPairing
    | ops.TakeBudget
    | ops.CreateSubscription
    | ops.DeleteSubscription
    | ops.PutPushReceipts
    | ops.Stop
    | ChannelOp
    | PutIncident
    | Probe
    | CreditOp
    | PutReadings
    | PutDelayDay
    | WebhookOp
)


class Request(msgspec.Struct, array_like=True):
    seq: int
    op: AnyOp


class Answer(msgspec.Struct, array_like=True):
    seq: int
    ok: bool
    #: The op's result, or (error kind, detail, error code) when not ok.
    value: Any


class Reply(msgspec.Struct, array_like=True):
    """The writer's answer to one group: how long its commit took, and each write's."""

    commit_s: float
    #: Writes committed (a Stop is answered but is not one).
    writes: int
    #: Whether that commit was fsynced (synchronous=FULL), not only ordered.
    synced: bool
    answers: list[Answer]


request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()
