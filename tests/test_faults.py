"""PINRELAY_FAULTS parsing (faults.py) and the owed-devices register (Metrics.owed):
the small pieces behind DECISIONS 63; the relay-process tests are
tests/api/test_delivery_stall.py and tests/cluster/test_feed_stall.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinrelay import faults
from pinrelay.metrics import Owed


def test_faults_are_name_equals_file_items_of_known_names() -> None:
    assert faults.parse("") == {}
    assert faults.parse("read-fail=/tmp/a, feed-stall=/tmp/b") == {
        "read-fail": Path("/tmp/a"),
        "feed-stall": Path("/tmp/b"),
    }
    for bad in ("read-fail", "read-fail=", "disk-full=/tmp/x"):
        with pytest.raises(ValueError, match="PINRELAY_FAULTS"):
            faults.parse(bad)


def test_without_the_variable_no_fault_is_on() -> None:
    # The test process runs without PINRELAY_FAULTS (relays get it in their own env).
    assert all(not faults.active(name) for name in faults.NAMES)


def test_the_oldest_owed_is_the_first_still_owed() -> None:
    owed = Owed()
    assert owed.oldest() is None
    a, b, c = object(), object(), object()
    owed.start(a, 100)
    owed.start(b, 200)
    owed.start(a, 300)  # owed already: since stays 100
    assert owed.oldest() == 100 and len(owed) == 2
    owed.stop(a)
    owed.start(c, 400)
    assert owed.oldest() == 200
    owed.stop(b)
    owed.stop(b)  # twice is harmless
    assert owed.oldest() == 400
    owed.start(a, 500)  # owed again: from the new time, behind c
    owed.stop(c)
    assert owed.oldest() == 500
