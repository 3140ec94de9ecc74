"""Waking the link that holds a device."""

from pinrelay.router.local import Linked, LocalRouter

__all__ = ["Linked", "LocalRouter"]
