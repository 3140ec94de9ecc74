"""What msgspec lets through and pinrelay refuses: JSON that is not valid UTF-8, and
objects with a repeated key.

msgspec does not check the UTF-8 of a value it keeps as ``Raw`` (a push's ``data``),
so a body with ``"caf\\xe9"`` inside would be stored and then break every client's
decoder (PROTOCOL, "data").  And it resolves ``{"scope": "push", "scope": "admin"}``
to the last key, where a proxy or a log reader may take the first.  Both are
refused here, at every level of the document, before anything is stored.  Escaped
lone surrogates (``"\\ud800"``) are valid JSON text and pass.

Cost: the standard library's C scanner with a pair hook, 1-3 us for a small push
body (bench/RESULTS.md, "Ingest before and after").
"""

from __future__ import annotations

import json
from typing import Any


class StrictJsonError(ValueError):
    """Invalid UTF-8 or a repeated key; ``str()`` says which, and where."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise StrictJsonError(f"the key {key!r} appears twice in one object")
            seen.add(key)
    return obj


_decoder = json.JSONDecoder(object_pairs_hook=_unique)


def check(body: bytes | str) -> None:
    """Raise :class:`StrictJsonError` if ``body`` is not UTF-8 or repeats a key.

    Malformed JSON is not reported here: the caller's decoder says what is wrong.
    """
    try:
        # strict: refuses encoded surrogates too
        text = body if isinstance(body, str) else body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJsonError(
            f"the body is not valid UTF-8 (byte {exc.start}: {exc.reason})"
        ) from None
    try:
        _decoder.decode(text)
    except RecursionError:
        raise StrictJsonError("the body is nested too deeply") from None
    except StrictJsonError:
        raise
    except ValueError:
        return


def valid_utf8(data: bytes) -> bytes:
    """``data`` if it is valid UTF-8, else with each bad sequence replaced by U+FFFD.

    The last line of defence on the way out (PROTOCOL, "data"): a text frame that is
    not UTF-8 makes every WebSocket client close the link (1007), and the device
    would get nothing more until that message expired.
    """
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").encode("utf-8")
