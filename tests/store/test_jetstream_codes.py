"""A make-good code's redemption on the cluster whose answer was lost
(store/jetstream/credits.py, DECISIONS 62): the write landed, the store sent it again
and met the code redeemed; the redemption's nonce tells it the code was its own.

The redemption's publish is stored by the real 3-node cluster, and its answer
dropped, as tests/store/test_jetstream_social.py drops a contact write's.
"""

from __future__ import annotations

import pytest

from .test_contract import NOW
from .test_contract_credits import code
from .test_jetstream import OpenStore, drop_answer, open_store

__all__ = ["open_store"]


async def test_a_redemption_whose_answer_was_lost_is_still_this_callers(
    open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await open_store()
    await store.issue_codes([code("AAAAAAAAAAAA", "0000000A"), code("BBBBBBBBBBBB", "0000000B")])
    record = store.layout.buckets.channels.subject("code.AAAAAAAAAAAA")
    lost = drop_answer(store, monkeypatch, record)
    got, first = await store.redeem_code("AAAAAAAAAAAA", NOW + 5)
    assert lost, "no answer was lost"
    assert first and got is not None and got.redeemed_ms == NOW + 5
    # Anyone after that finds it used, as before.
    got, first = await store.redeem_code("AAAAAAAAAAAA", NOW + 9)
    assert not first and got is not None and got.redeemed_ms == NOW + 5
    assert (await store.redeem_code("BBBBBBBBBBBB", NOW + 10))[1]
