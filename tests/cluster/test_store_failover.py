"""Store failover (issue 5): SIGKILL the NATS node that leads the stream during a
steady push load.  Every push answered 201 is delivered; pushes during the election
are refused with 503 (never a 201 for something not stored); the killed node comes
back and catches up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import httpx

from pinrelay.client.device import Device, Message
from pinrelay.testing.wait import wait_until, wait_until_async
from tests.conftest import RelayFactory
from tests.natsproc import NatsCluster, NatsNode
from tests.relayproc import TIMEOUT_FACTOR

STREAM = "PINRELAY"


def stream_detail(node: NatsNode) -> dict[str, Any] | None:
    r = httpx.get(f"http://127.0.0.1:{node.http_port}/jsz", params={"streams": "true"}, timeout=2.0)
    for account in r.json().get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if stream.get("name") == STREAM:
                detail: dict[str, Any] = stream
                return detail
    return None


def leader_of(cluster: NatsCluster) -> NatsNode:
    def leader() -> NatsNode | None:
        for node in cluster.nodes:
            if not node.alive:
                continue
            detail = stream_detail(node)
            name = ((detail or {}).get("cluster") or {}).get("leader")
            if name:
                return cluster.node(name)
        return None

    return wait_until(leader, 15.0, 0.2, f"a leader of stream {STREAM}", ignore=(httpx.HTTPError,))


def test_stream_leader_loss_loses_no_accepted_push(
    tmp_path: Path, relay_factory: RelayFactory
) -> None:
    (tmp_path / "nats-failover").mkdir()
    cluster = NatsCluster(tmp_path / "nats-failover")
    cluster.start()
    try:
        relay = relay_factory(
            "failover", extra=["--store", ",".join(cluster.urls), "--node-id", "f"]
        )
        device = relay.create_device()
        leader = leader_of(cluster)
        accepted: list[str] = []
        statuses: dict[int, int] = {}

        async def load() -> float:
            url = f"{relay.url}/v1/devices/{device['pin']}/messages"
            async with httpx.AsyncClient(headers=relay.admin_headers(), timeout=10) as http:
                started = time.monotonic()
                killed_at = 0.0
                n = 0
                while time.monotonic() - started < 10 * TIMEOUT_FACTOR:
                    if not killed_at and time.monotonic() - started > 1.5:
                        leader.kill()
                        killed_at = time.monotonic()
                    try:
                        r = await http.post(url, json={"data": {"n": n}, "ttl": 600})
                    except httpx.HTTPError:
                        statuses[0] = statuses.get(0, 0) + 1
                        continue
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 201:
                        accepted.append(r.json()["id"])
                    else:
                        assert r.status_code == 503, r.text
                        assert r.headers["retry-after"]
                        await asyncio.sleep(0.05)  # pacing: retry while the stream elects
                    n += 1
                return killed_at

        asyncio.run(load())
        assert statuses.get(201, 0) > 50, statuses
        # The kill bit: another node leads now, and pushes met the election as 503s.
        assert leader_of(cluster) is not leader
        assert statuses.get(503, 0) + statuses.get(0, 0) >= 1, statuses
        # The killed node comes back on its own data and catches up.
        leader.start()
        state: dict[str, Any] = {}

        def caught_up() -> bool:
            nonlocal state
            detail = stream_detail(leader) if leader.alive else None
            state = (detail or {}).get("state") or {}
            return bool(state.get("messages", -1) == len(accepted))

        wait_until(
            caught_up,
            30.0,
            0.3,
            lambda: f"the restarted node holds {state}, not {len(accepted)} messages",
            ignore=(httpx.HTTPError,),
        )

        got: list[Message] = []

        async def drain() -> None:
            sdk = Device(device["pin"], device["token"], got.append, url=relay.url)
            task = asyncio.create_task(sdk.run())
            with contextlib.suppress(TimeoutError):  # the asserts below say what is missing
                await wait_until_async(lambda: len(got) >= len(accepted), 30.0, 0.1)
            await sdk.stop()
            task.cancel()

        asyncio.run(drain())
        ids = [m.id for m in got]
        assert len(ids) == len(set(ids))
        assert set(accepted) <= set(ids), f"{len(set(accepted) - set(ids))} accepted lost"
        assert [m.cursor for m in got] == sorted(m.cursor for m in got)
    finally:
        cluster.stop()
