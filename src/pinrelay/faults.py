"""Injected faults at the store boundary, for tests of what a relay does when its
store misbehaves while the rest works (docs/OPERATIONS.md, "Injected faults").

``PINRELAY_FAULTS=NAME=FILE[,NAME=FILE…]``, read once when this module is
imported: fault NAME is on while FILE exists, so a test turns it on and off by
creating and removing the file while the relay runs.  Without the variable every
check is one lookup in an empty dict: inert.

- ``read-fail``: the relay's message reads (Store.read) raise, on either store.
- ``feed-stall``: a cluster relay's feed (store/jetstream/feed.py) holds each new
  message, handing nothing on, until the fault is off: a stalled consumer.
- ``count-answer-lost``: a relay's broadcast counts are stored, then their write
  raises StoreClosed as if the answer had been lost (broadcast.py): they go again.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

ENV = "PINRELAY_FAULTS"
NAMES = ("read-fail", "feed-stall", "count-answer-lost")
#: How often a held fault looks at its file again.
POLL_S = 0.05


def parse(spec: str) -> dict[str, Path]:
    """``NAME=FILE`` items, comma separated; ValueError for an unknown name."""
    found: dict[str, Path] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, file = item.partition("=")
        if name not in NAMES or not file:
            raise ValueError(f"{ENV}: {item!r} is not NAME=FILE with NAME one of {NAMES}")
        found[name] = Path(file)
    return found


_FAULTS = parse(os.environ.get(ENV, ""))


def active(name: str) -> bool:
    """Fault ``name`` is on now."""
    file = _FAULTS.get(name)
    return file is not None and file.exists()


async def hold(name: str) -> None:
    """Until fault ``name`` is off (at once when it is)."""
    while active(name):
        await asyncio.sleep(POLL_S)
