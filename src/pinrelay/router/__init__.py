"""Waking the link that holds a device."""

from pinrelay.router.base import Linked, Router
from pinrelay.router.local import LocalRouter

__all__ = ["Linked", "LocalRouter", "Router"]
