"""The Python device SDK and a thin HTTP client for the push API."""

from pinrelay.client.device import Device, LinkRefused, Message
from pinrelay.client.http import ApiError, RelayClient

__all__ = ["ApiError", "Device", "LinkRefused", "Message", "RelayClient"]
