"""RFC 3339 timestamps on the wire; integer milliseconds inside."""

from __future__ import annotations

import datetime as _dt


def to_ms(now: float) -> int:
    return int(now * 1000)


def rfc3339(ms: int) -> str:
    """``2026-11-23T03:04:05.678Z`` for a Unix time in milliseconds."""
    dt = _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_rfc3339(text: str) -> int:
    """Milliseconds for an RFC 3339 timestamp (inverse of :func:`rfc3339`)."""
    dt = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(dt.timestamp() * 1000)
