"""Tenants: who owns a device, a key, a subscription, a channel (issue 15).

Every API key and every device belongs to one tenant; groups, subscriptions and
messages belong to their device's.  The relay's own admin key (from its config)
belongs to none and sees every tenant.  A tenant's key reaches a device of another
tenant only through a grant the device made; every other such call answers as for
a PIN that does not exist (PROTOCOL, "Tenants").

A deleted tenant leaves a tombstone: its id is never used again, its keys stop
working, and its devices, which keep their data, count as tenant-less until their
owners move them.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated

from msgspec import Meta, Struct

#: The tenant existing data migrates into, and that keys and devices made before
#: tenants existed belong to.
DEFAULT_TENANT = "default"
#: A tenant id: ``default``, or 12 lowercase base32 characters (60 random bits).
TENANT_ID_RE = re.compile(r"^(default|[a-z2-7]{12})$")
TenantId = Annotated[str, Meta(pattern=r"^(default|[a-z2-7]{12})$")]
TenantName = Annotated[str, Meta(min_length=1, max_length=100)]


class Quotas(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """A tenant's bounds; None: no bound of that kind (beyond the relay's own)."""

    #: Devices the tenant may hold.
    devices: Annotated[int, Meta(ge=0)] | None = None
    #: Messages a second, sustained (a token bucket refilled at this rate) ...
    rate: Annotated[float, Meta(gt=0)] | None = None
    #: ... and at once (the bucket's size; default: one second's worth).
    burst: Annotated[int, Meta(ge=1)] | None = None
    #: Bytes of undelivered messages the tenant's keys may have stored (pushes and
    #: broadcasts; core/ledger.py, PROTOCOL "Quotas").
    stored_bytes: Annotated[int, Meta(ge=0)] | None = None
    #: Links (WebSocket connections) its devices may hold at once.
    links: Annotated[int, Meta(ge=0)] | None = None


class Tenant(Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created_ms: int
    suspended: bool = False
    quotas: Quotas = Quotas()
    #: Set when the tenant was deleted: a tombstone, so its id is never reused.
    deleted_ms: int | None = None

    @property
    def live(self) -> bool:
        return self.deleted_ms is None


def may_reach(caller: str | None, owner: str | None, grants: Collection[str] = ()) -> bool:
    """Whether a key of tenant ``caller`` (None: the relay's admin) may act on a
    device owned by ``owner`` that granted ``grants``."""
    return caller is None or caller == owner or caller in grants
