"""The two WebSocket frames a busy link is made of, without the general parser.

Almost everything on an open link is a small text frame: ``msg`` frames out, ``ack``
frames in.  websockets' sans-I/O parser is a chain of generators and its sender
builds a Frame object per message; for these two cases plain byte slicing does the
same work at a fraction of the event loop's time (docs/DECISIONS.md, 28).  Anything
else (control frames, fragments, binary, oversized or partial frames) is left to
websockets, which stays in charge of the handshake and the close.
"""

from __future__ import annotations

import struct

try:  # websockets' C helper, as its own parser uses (0.1 µs, not 0.9, for an ack)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a websockets built without its C speedups
    from websockets.utils import apply_mask

_FIN_TEXT = 0x81
_MASKED = 0x80
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


def text_frame(payload: bytes) -> bytes:
    """A whole unmasked text frame (server to client), RFC 6455 §5.2."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 65536:
        return _HEAD_16.pack(_FIN_TEXT, 126, n) + payload
    return _HEAD_64.pack(_FIN_TEXT, 127, n) + payload


def client_text_frames(data: bytes, limit: int) -> list[tuple[bytes, int]] | None:
    """Each payload with the offset where its frame ends, if ``data`` is exactly a
    run of complete client text frames.

    Each must be final (not fragmented), masked, without RSV bits and at most
    ``limit`` bytes long; otherwise None, and the caller hands ``data`` to the full
    parser.  An empty ``data`` is an empty run.
    """
    out: list[tuple[bytes, int]] = []
    at = 0
    end = len(data)
    while at < end:
        if end - at < 6 or data[at] != _FIN_TEXT:
            return None
        second = data[at + 1]
        if not second & _MASKED:
            return None
        n = second & 0x7F
        mask = at + 2
        if n == 126:
            if end - at < 8:
                return None
            n = (data[mask] << 8) | data[mask + 1]
            mask += 2
        elif n == 127:
            return None
        stop = mask + 4 + n
        if n > limit or stop > end:
            return None
        out.append((apply_mask(data[mask + 4 : stop], data[mask : mask + 4]), stop))
        at = stop
    return out


def whole_frames(data: bytes) -> bool:
    """Whether ``data`` is exactly a run of complete client frames of any kind: fed
    to a parser that stood at a frame boundary, it leaves the parser at one."""
    at = 0
    end = len(data)
    while at < end:
        if end - at < 2:
            return False
        n = data[at + 1] & 0x7F
        head = at + 2
        if n == 126:
            if end - head < 2:
                return False
            n = int.from_bytes(data[head : head + 2], "big")
            head += 2
        elif n == 127:
            if end - head < 8:
                return False
            n = int.from_bytes(data[head : head + 8], "big")
            head += 8
        if data[at + 1] & _MASKED:
            head += 4
        at = head + n
    return at == end
