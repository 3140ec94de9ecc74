"""The bodies of api/credits.py's routes (PROTOCOL "Service credits", "Making good");
their components in the OpenAPI document (api/openapi_credits.py)."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from pinrelay.core.credits import Credit
from pinrelay.core.makegood import CodePrefix, MakeGoodText
from pinrelay.core.tenants import TenantId


class CreditList(Struct, kw_only=True):
    month: str
    credits: list[Credit]


class MakeGoodCreate(Struct, kw_only=True, forbid_unknown_fields=True):
    tenant: TenantId
    text: MakeGoodText
    code_prefix: CodePrefix | None = None


class MakeGoodView(Struct, kw_only=True):
    """A make-good and how far its fan-out got (its broadcast's record)."""

    id: str
    incident: str
    tenant: str
    text: str
    created_at: str
    #: Devices reached so far (given a code, or skipped for refusing marketing).
    devices: int
    stored: int
    skipped: int
    done: bool


class CodeView(Struct, kw_only=True):
    code: str
    tenant: str
    pin: str
    incident: str
    redeemed_at: Annotated[str, Meta(description="When it was redeemed")] | None = None
