"""The Python device SDK and a thin HTTP client for the push API."""

from pinrelay.client.device import Device, LinkRefused, Message
from pinrelay.client.http import ApiError, RelayClient
from pinrelay.client.keys import FileKeyStore, KeyStore, MemoryKeyStore, SubscriptionKeys
from pinrelay.client.webpush import WebPushMessage, WebPushSubscription

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
    "WebPushMessage",
    "WebPushSubscription",
]
