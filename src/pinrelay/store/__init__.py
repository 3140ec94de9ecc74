"""Durable storage: one :class:`~pinrelay.store.base.Store` protocol, several engines."""

from pinrelay.store.base import IdempotencyKey, Rejected, Store, StoreClosed

__all__ = ["IdempotencyKey", "Rejected", "Store", "StoreClosed"]
