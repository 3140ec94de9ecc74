"""Errors and their wire forms.

Every error pinrelay reports has one :class:`ErrorCode`, which carries the three
forms it takes on the wire: the ``code`` string of a link ``error`` frame and of a
problem+json ``type``, the WebSocket close code (always ``4000 + HTTP status``) and
the HTTP status.  See docs/PROTOCOL.md, "Errors".

Exception tree::

    PinrelayError
    ├── LocalProtocolError     we were asked to do something the protocol forbids
    ├── RemoteProtocolError    the peer sent something the protocol forbids
    ├── LimitExceeded          a size or count bound was crossed
    └── Overloaded             shed: try again after ``retry_after`` seconds
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Error kinds: ``(wire code, HTTP status, title)``; close code is 4000 + status."""

    BAD_REQUEST = ("bad_request", 400, "Malformed request")
    UNAUTHORIZED = ("unauthorized", 401, "Missing or wrong credentials")
    FORBIDDEN = ("forbidden", 403, "Credentials lack the scope for this")
    NOT_FOUND = ("not_found", 404, "No such resource")
    HELLO_TIMEOUT = ("hello_timeout", 408, "No hello in time")
    CONFLICT = ("conflict", 409, "Conflicts with the current state")
    REPLACED = ("replaced", 409, "Replaced by a newer link for this device")
    GONE = ("gone", 410, "No longer available")
    TOO_LARGE = ("too_large", 413, "Payload too large")
    URI_TOO_LONG = ("uri_too_long", 414, "Request line too long")
    UNSUPPORTED_MEDIA = ("unsupported_media_type", 415, "Unsupported media type")
    INVALID = ("invalid", 422, "Request failed validation")
    RATE_LIMITED = ("rate_limited", 429, "Too many requests")
    HEADERS_TOO_LARGE = ("headers_too_large", 431, "Request header fields too large")
    INTERNAL = ("internal", 500, "Internal error")
    OVERLOADED = ("overloaded", 503, "Relay overloaded or shutting down")

    def __init__(self, wire: str, status: int, title: str) -> None:
        self.wire = wire
        self.status = status
        self.title = title

    @property
    def close_code(self) -> int:
        """WebSocket close code: 4000 + the HTTP status (PROTOCOL.md, "Close codes")."""
        return 4000 + self.status

    @property
    def problem_type(self) -> str:
        """The problem+json ``type`` URI (RFC 9457 §3.1.1)."""
        return f"https://pinrelay.dev/problems/{self.wire}"


class PinrelayError(Exception):
    """Base of all pinrelay errors; carries the :class:`ErrorCode` to report."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, detail: str, code: ErrorCode | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class LocalProtocolError(PinrelayError):
    """We were asked to do something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(PinrelayError):
    """The peer broke the protocol: bad frame, bad body, wrong state."""

    code = ErrorCode.BAD_REQUEST


class LimitExceeded(PinrelayError):
    """A bound on size or count was crossed."""

    code = ErrorCode.TOO_LARGE


class Overloaded(PinrelayError):
    """The relay is shedding load; the caller should retry after ``retry_after`` s."""

    code = ErrorCode.OVERLOADED

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class RateLimited(PinrelayError):
    """Too many failures or requests: 429 with Retry-After (``retry_after`` seconds)."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
