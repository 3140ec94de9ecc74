"""The Python device SDK and a thin HTTP client for the push API.

The names below are imported on first use (PEP 562): ``pinrelay.client.http`` alone
(httpx) must not pull in the link SDK (websockets, cryptography, http-ece), so a CLI
command that makes one HTTP request starts without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pinrelay.client.device import Device, LinkRefused, Message, SystemMessage
    from pinrelay.client.http import ApiError, RelayClient
    from pinrelay.client.keys import FileKeyStore, KeyStore, MemoryKeyStore, SubscriptionKeys
    from pinrelay.client.webpush import WebPushMessage, WebPushSubscription

#: Each public name and the module that defines it.
_WHERE = {
    "ApiError": "http",
    "Device": "device",
    "FileKeyStore": "keys",
    "KeyStore": "keys",
    "LinkRefused": "device",
    "MemoryKeyStore": "keys",
    "Message": "device",
    "RelayClient": "http",
    "SubscriptionKeys": "keys",
    "SystemMessage": "device",
    "WebPushMessage": "webpush",
    "WebPushSubscription": "webpush",
}

__all__ = [
    "ApiError",
    "Device",
    "FileKeyStore",
    "KeyStore",
    "LinkRefused",
    "MemoryKeyStore",
    "Message",
    "RelayClient",
    "SubscriptionKeys",
    "SystemMessage",
    "WebPushMessage",
    "WebPushSubscription",
]


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value  # once: later lookups do not come here
    return value
