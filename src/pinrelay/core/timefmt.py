"""RFC 3339 timestamps on the wire; integer milliseconds inside."""

from __future__ import annotations

import datetime as _dt


def to_ms(now: float) -> int:
    return int(now * 1000)


_seconds: dict[int, str] = {}


def rfc3339(ms: int) -> str:
    """``2026-11-23T03:04:05.678Z`` for a Unix time in milliseconds."""
    # Every message carries two timestamps and most share their second with the
    # previous message: format each second once (a bounded cache).
    sec, milli = divmod(ms, 1000)
    prefix = _seconds.get(sec)
    if prefix is None:
        if len(_seconds) > 4096:
            _seconds.clear()
        dt = _dt.datetime.fromtimestamp(sec, tz=_dt.UTC)
        prefix = _seconds[sec] = dt.strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{prefix}{milli:03d}Z"


def parse_rfc3339(text: str) -> int:
    """Milliseconds for an RFC 3339 timestamp (inverse of :func:`rfc3339`)."""
    dt = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return round(dt.timestamp() * 1000)
