"""A relay's broadcast counts whose write's answer is lost are counted once
(DECISIONS 62): the ``count-answer-lost`` fault (PINRELAY_FAULTS) stores each batch,
then fails its write as if the answer had not come, so the relay sends the same
batch again every second while the fault lasts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from pinrelay.core import frames
from pinrelay.testing.wait import wait_until
from tests.api.test_channels import _broadcast, _channel, _join, _ok
from tests.api.test_tenants import Tenant
from tests.conftest import RelayFactory
from tests.linkclient import link, recv, send
from tests.relayproc import RelayProc

MEMBERS = 4
LOST = "broadcast upkeep failed: StoreClosed('injected fault count-answer-lost"


def _counts(t: Tenant, bid: str) -> tuple[int, int]:
    with t.client("broadcast") as c:
        view: dict[str, Any] = _ok(c.get(f"/v1/broadcasts/{bid}"))
    return int(view["delivered"]), int(view["acked"])


async def _receive_and_ack(relay: RelayProc, devices: list[dict[str, Any]], bid: str) -> None:
    """Every member links, takes the broadcast and acks it."""
    links = [(await link(relay, d))[0] for d in devices]
    try:
        for ws in links:
            m = await recv(ws, timeout=10)
            assert isinstance(m, frames.Msg) and m.id == bid
            await send(ws, frames.Ack(cursor=m.cursor))
    finally:
        for ws in links:
            await ws.close()


def test_counts_whose_answer_was_lost_are_counted_once(
    tmp_path: Path, relay_factory: RelayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = tmp_path / "count-answer-lost"
    monkeypatch.setenv("PINRELAY_FAULTS", f"count-answer-lost={fault}")
    relay = relay_factory("counts")
    with httpx.Client(base_url=relay.url, headers=relay.admin_headers(), timeout=30) as admin:
        t = Tenant(admin, "counted")
        channel = _channel(t, "news")
        devices = [t.device() for _ in range(MEMBERS)]
        for d in devices:
            _join(admin, d, channel)
        every = (MEMBERS, MEMBERS)

        first = _broadcast(t, channel, {"n": 1})
        asyncio.run(_receive_and_ack(relay, devices, first))
        wait_until(lambda: _counts(t, first) == every, 20, 0.1, "the first one's counts")

        # Each write of the next counts is stored, then fails as if unanswered: the
        # same batch goes again every second, and adds nothing where it landed.
        fault.touch()
        second = _broadcast(t, channel, {"n": 2})
        asyncio.run(_receive_and_ack(relay, devices, second))
        wait_until(
            lambda: relay.output().count(LOST) >= 3, 20, 0.1, "three lost answers to the count"
        )
        delivered, acked = _counts(t, second)
        assert 1 <= delivered <= MEMBERS and acked <= MEMBERS, (delivered, acked)

        # The fault gone, the batch goes once more, then what waited behind it.
        fault.unlink()
        wait_until(lambda: _counts(t, second) == every, 20, 0.1, "the second one's counts")
        assert _counts(t, first) == every
