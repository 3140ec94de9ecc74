"""Making good after an incident: a message with a redeemable code to each of a
tenant's devices (PROTOCOL "Making good").

Rules:

1. A make-good is a broadcast (core/channels.py ``Broadcast``) whose ``channel`` is
   :data:`MAKEGOOD_CHANNEL` and whose ``data`` is a :class:`MakeGood`; it is fanned
   out by the broadcast fan-out (broadcast.py), so it is kept first, resumed by any
   relay after a crash, and reaches each device once.  Its audience is every device
   of the tenant (PIN order), less those that refuse the ``marketing`` class.
2. There is one make-good per (incident, tenant): the store keeps which broadcast
   holds that claim (Store.claim_makegood); asking again answers with it.
3. Each device gets one code, recorded before its message is stored
   (Store.issue_codes keeps the first code issued for a (broadcast, PIN) and answers
   with it), so a page done again after a crash sends the same codes.
4. A code is redeemed once: the first redemption records when; every later one is a
   conflict.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from msgspec import Meta, Struct

#: The ``channel`` of a broadcast that is a make-good (rule 1).
MAKEGOOD_CHANNEL = "makegood"
_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_PATTERN = r"^([A-Z0-9]{1,12}-)?[0-9A-HJKMNP-TV-Z]{12}$"
_CODE_RE = re.compile(CODE_PATTERN)
CodePrefix = Annotated[str, Meta(pattern=r"^[A-Z0-9]{1,12}$")]
MakeGoodText = Annotated[str, Meta(min_length=1, max_length=1000)]


class MakeGood(Struct, frozen=True, kw_only=True):
    """What a make-good's broadcast carries (its ``data``, JSON)."""

    incident: str
    text: str
    code_prefix: str | None = None


class MakeGoodData(Struct, frozen=True, kw_only=True):
    """The ``data`` of the ``msg`` (kind ``makegood``) a device receives."""

    code: str
    text: str
    incident: str


class Code(Struct, frozen=True, kw_only=True):
    """One device's redeemable code."""

    code: str
    tenant: str
    pin: str
    incident: str
    #: The make-good's broadcast (its message id on the device).
    broadcast: str
    created_ms: int
    redeemed_ms: int | None = None


def new_code(prefix: str | None, rand: Callable[[int], bytes]) -> str:
    """``PREFIX-`` (if any) and 12 Crockford base32 digits of ``rand`` (60 bits)."""
    value = int.from_bytes(rand(8), "big") >> 4
    digits = "".join(_B32[(value >> shift) & 31] for shift in range(55, -1, -5))
    return f"{prefix}-{digits}" if prefix else digits


def is_code(value: str) -> bool:
    return _CODE_RE.fullmatch(value) is not None
