"""A make-good code's redemption on the cluster whose answer was lost
(store/jetstream/credits.py, DECISIONS 62): the write landed, the store sent it again
and met the code redeemed; the redemption's nonce tells it the code was its own.

The ``publish-answer-lost`` fault (faults.py) stores the next publish, then times
it out as a lost answer would, on a real 3-node cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pinrelay import faults

from .test_contract import NOW
from .test_contract_credits import code
from .test_jetstream import OpenStore, open_store

__all__ = ["open_store"]


async def test_a_redemption_whose_answer_was_lost_is_still_this_callers(
    open_store: OpenStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store()
    await store.issue_codes([code("AAAAAAAAAAAA", "0000000A"), code("BBBBBBBBBBBB", "0000000B")])
    lost = tmp_path / "publish-answer-lost"
    monkeypatch.setitem(faults._FAULTS, "publish-answer-lost", lost)
    lost.touch()
    got, first = await store.redeem_code("AAAAAAAAAAAA", NOW + 5)
    assert not lost.exists(), "the fault did not fire: no answer was lost"
    assert first and got is not None and got.redeemed_ms == NOW + 5
    # Anyone after that finds it used, as before.
    got, first = await store.redeem_code("AAAAAAAAAAAA", NOW + 9)
    assert not first and got is not None and got.redeemed_ms == NOW + 5
    assert (await store.redeem_code("BBBBBBBBBBBB", NOW + 10))[1]
