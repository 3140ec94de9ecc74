"""Cluster failover (issue 5): a relay killed under 1,000 SDK devices, and the NATS
node that leads the stream killed under a steady push load, beside a bare nats-py
JetStream publisher losing its own stream leader on the same cluster.

The cluster is what ``pinrelay cluster up`` starts (its own :mod:`pinrelay.cluster`
functions: the same nats-server config and relay command line): 3 ``nats-server``
processes with JetStream clustered on 127.0.0.1 and 3 ``pinrelay serve --store
nats://...`` relays, on ports picked free at run time, in bench/out/<run>/.

1. **Relay failover.**  D devices (default 1,000) are created, then linked with the
   SDK's :class:`~pinrelay.client.device.Device` from ``--device-procs`` child
   processes (``python -m bench.cluster_failover devices ...``), each given the
   ``link_urls`` of relay-1's ``/v1/info`` (every live relay, relay-1 first), so all
   link to relay-1.  One push per device through the other relays checks every link
   delivers.  Then relay-1 is SIGKILLed; at once one message per device is pushed
   through the live relays (50 keep-alive connections), in batches (POST
   /v1/messages) or one request each (``--push-modes``; one run per mode).  Failover
   time per device = the monotonic time its callback got that message minus the kill
   time (CLOCK_MONOTONIC is one clock for all processes of the machine).  Also: when
   each device linked again, when relay-1 left every live relay's ``/v1/info``, and
   that each device's application saw exactly the two messages pushed to it, each
   once.  Relay-1 is then restarted (same node id and data).
2. **Store leader loss.**  Two publishers run at once, each ``--workers`` closed
   loops paced to ``--rate`` in total: pushes through the relays (POST
   /v1/devices/{pin}/messages with an Idempotency-Key, round-robin over the relays,
   to ``--load-devices`` fresh devices), and a bare nats-py publisher (one
   connection, ``js.publish`` with a ``Nats-Msg-Id``) on its own R3 file stream.
   Before each round the bare stream's leader is moved to the node leading the
   relays' stream (``$JS.API.STREAM.INFO.<stream>`` -> cluster.leader), so one
   SIGKILL after ``--pre`` s takes both leaders, with the same other leaderships and
   the same machine load; the load goes on for ``--post`` s.  A refused or
   unanswered attempt is retried with the same key (through the next relay) 0.1 s
   later, until it succeeds.  Reported per publisher: the longest window with no
   success, the refusals, that every push succeeded in the end, and the ratio.  The
   killed node is restarted and every stream's replicas must be current again before
   the next round.  At the end every device's backlog must equal what was accepted
   for it, and the bare stream must hold exactly the acknowledged messages.

Every process started here is stopped by its pid in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import itertools
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig
from nats.js.client import JetStreamContext

from bench.common import (
    LOOPBACK,
    Child,
    add_common_args,
    console,
    cpu_seconds,
    fmt,
    machine,
    md_table,
    module_argv,
    percentile,
    print_table,
    progress,
    run_dir,
    run_main,
    stop_all,
    stop_popen,
    system_busy_seconds,
    timed_phase,
    wait_machine_quiet,
    write_credentials,
    write_section,
)
from pinrelay import cluster as cl
from pinrelay.client.device import Device, Message
from pinrelay.core import frames
from pinrelay.store.jetstream import JetStreamStore

MODULE = "bench.cluster_failover"
#: The stream the relays store messages in: JetStreamStore's default (the relay
#: passes no other name).
STREAM = str(inspect.signature(JetStreamStore).parameters["stream"].default)
BARE_STREAM = "BENCH_BARE"
BARE_PREFIX = "benchbare"
#: A push (or publish) still failing after this long counts as failed for good.
GIVE_UP_S = 90.0
RETRY_DELAY_S = 0.1


# --- the cluster -------------------------------------------------------------------
class LocalCluster:
    """3 nats-server + N relays, as ``pinrelay cluster up`` starts them; by pid."""

    def __init__(self, data: Path, relays: int, nats_nodes: int) -> None:
        self.key = "pra_bench_" + secrets.token_urlsafe(24)
        # plan() records where the admin key comes from; spawn() passes it on.
        os.environ["PINRELAY_ADMIN_KEY"] = self.key
        self.spec = cl.plan(data, relays, nats_nodes, LOOPBACK)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def relays(self) -> list[cl.RelayNode]:
        return self.spec.relays

    @property
    def nats(self) -> list[cl.NatsNode]:
        return self.spec.nats

    @property
    def nats_urls(self) -> list[str]:
        return [cl.nats_url(self.spec, n) for n in self.nats]

    def url(self, relay: cl.RelayNode) -> str:
        return cl.relay_url(self.spec, relay)

    def link_url(self, relay: cl.RelayNode) -> str:
        return cl.link_url(self.spec, relay)

    def nats_node(self, name: str) -> cl.NatsNode:
        return next(n for n in self.nats if n.name == name)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def spawn(self, node: cl.NatsNode | cl.RelayNode) -> None:
        self.procs[node.name] = cl.spawn(self.spec, node, self.key)

    async def start(self, timeout: float = 60.0) -> None:
        for n in self.nats:
            self.spawn(n)
        await asyncio.to_thread(cl.wait_nats, self.spec, self.nats, timeout)
        # As `cluster up`: the first relay creates the streams and buckets, then the
        # others start (several creating them at once on a fresh cluster time out).
        for group in (self.relays[:1], self.relays[1:]):
            for r in group:
                self.spawn(r)
            await asyncio.to_thread(cl.wait_relays, self.spec, group, timeout)

    async def restart_nats(self, node: cl.NatsNode, timeout: float = 60.0) -> None:
        self.spawn(node)
        await asyncio.to_thread(cl.wait_nats, self.spec, [node], timeout)

    async def restart_relay(self, node: cl.RelayNode, timeout: float = 60.0) -> None:
        self.spawn(node)
        await asyncio.to_thread(cl.wait_relays, self.spec, [node], timeout)

    def kill(self, name: str) -> float:
        """SIGKILL by pid; returns the monotonic time just before the signal."""
        proc = self.procs[name]
        at = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return at

    def stop(self) -> None:
        """Relays first, then the NATS nodes: SIGTERM by pid, SIGKILL after 15 s."""
        for name in [*(r.name for r in self.relays), *(n.name for n in self.nats)]:
            proc = self.procs.get(name)
            if proc is not None:
                with contextlib.suppress(Exception):
                    stop_popen(proc, 15.0)


class OtherCpu:
    """CPU the rest of the machine used meanwhile, in cores.

    Like bench.common.OtherLoad, but the set of our processes changes (killed and
    restarted nodes): each pid's CPU is sampled every 0.25 s, so a process that is
    killed keeps the figure it had at its last sample.
    """

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self._pids = pids
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._t0 = time.monotonic()
        self._busy0 = system_busy_seconds()
        self.sample()

    def sample(self) -> None:
        for pid in {*self._pids(), os.getpid()}:
            with contextlib.suppress(OSError):
                value = cpu_seconds(pid)
                self._first.setdefault(pid, value)
                self._last[pid] = value

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self.sample()

    def cores(self) -> float:
        self.sample()
        wall = time.monotonic() - self._t0
        busy = system_busy_seconds() - self._busy0
        ours = sum(self._last[p] - self._first[p] for p in self._last)
        return max(0.0, busy - ours) / wall if wall > 0 else float("nan")


@contextlib.asynccontextmanager
async def other_cpu(pids: Callable[[], list[int]]) -> Any:
    watch = OtherCpu(pids)
    task = asyncio.create_task(watch.run())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- NATS monitoring ---------------------------------------------------------------
async def js_api(nc: NATS, subject: str, body: bytes = b"") -> dict[str, Any] | None:
    """One JetStream API request; None on any failure (an election, a reconnect)."""
    try:
        msg = await nc.request(f"$JS.API.{subject}", body, timeout=2.0)
        reply: dict[str, Any] = json.loads(msg.data)
    except (nats.errors.Error, TimeoutError, ValueError):
        return None
    return None if "error" in reply else reply


async def stream_leader(nc: NATS, stream: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await js_api(nc, f"STREAM.INFO.{stream}")
        leader = ((info or {}).get("cluster") or {}).get("leader")
        if leader:
            return str(leader)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"stream {stream}: no leader after {timeout:g} s")


async def stream_names(nc: NATS) -> list[str]:
    reply = await js_api(nc, "STREAM.NAMES", b"{}")
    return sorted(str(s) for s in (reply or {}).get("streams") or [])


async def led_by(c: LocalCluster, nc: NATS, node: str) -> list[str]:
    """What else ``node`` leads: the JetStream meta group and streams."""
    led = []
    meta = await asyncio.to_thread(cl.meta_leader, c.spec, c.nats_node(node))
    if meta == node:
        led.append("meta")
    for name in await stream_names(nc):
        info = await js_api(nc, f"STREAM.INFO.{name}")
        if ((info or {}).get("cluster") or {}).get("leader") == node:
            led.append(name)
    return led


def client_names(c: LocalCluster, node: str) -> list[str]:
    """The names of client connections on a NATS node (its /connz)."""
    n = c.nats_node(node)
    try:
        r = httpx.get(f"http://{LOOPBACK}:{n.http_port}/connz", params={"limit": 1024}, timeout=2)
        conns = r.json().get("connections") or []
    except (httpx.HTTPError, ValueError):
        return []
    return sorted(str(x.get("name") or "?") for x in conns)


async def all_current(nc: NATS, streams: Sequence[str], size: int) -> bool:
    """Every stream has a leader and ``size - 1`` followers, all current, no lag."""
    for name in streams:
        info = await js_api(nc, f"STREAM.INFO.{name}")
        cluster = (info or {}).get("cluster") or {}
        replicas = cluster.get("replicas") or []
        if not cluster.get("leader") or len(replicas) != size - 1:
            return False
        if not all(r.get("current") and not r.get("lag") for r in replicas):
            return False
    return True


async def wait_current(nc: NATS, size: int, timeout: float = 120.0) -> float:
    """Until every stream's replicas are current; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        names = await stream_names(nc)
        if names and await all_current(nc, names, size):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise TimeoutError(f"streams not current after {timeout:g} s")


def jsz_leaders(c: LocalCluster) -> dict[str, str]:
    """Stream (and "meta") -> leader, as the live NATS nodes' /jsz report them (HTTP:
    independent of any client connection, which may itself be reconnecting)."""
    leaders: dict[str, str] = {}
    for node in c.nats:
        if not c.alive(node.name):
            continue
        try:
            r = httpx.get(
                f"http://{LOOPBACK}:{node.http_port}/jsz", params={"streams": "true"}, timeout=1
            )
            body = r.json()
            accounts = body.get("account_details") or []
        except (httpx.HTTPError, ValueError):
            continue
        meta = (body.get("meta_cluster") or {}).get("leader")
        if meta:
            leaders.setdefault("meta", str(meta))
        for account in accounts:
            for stream in account.get("stream_detail") or []:
                leader = (stream.get("cluster") or {}).get("leader")
                if leader:
                    leaders.setdefault(str(stream.get("name")), str(leader))
    return leaders


async def wait_new_leaders(
    c: LocalCluster, streams: Sequence[str], old: str, since: float
) -> dict[str, tuple[str, float]]:
    """Poll /jsz until each stream has a leader other than ``old``: (leader, s since)."""
    found: dict[str, tuple[str, float]] = {}
    while len(found) < len(streams):
        leaders = await asyncio.to_thread(jsz_leaders, c)
        for name in streams:
            leader = leaders.get(name)
            if name not in found and leader and leader != old:
                found[name] = (leader, time.monotonic() - since)
        await asyncio.sleep(0.05)
    return found


async def move_leader(nc: NATS, stream: str, to: str, timeout: float = 30.0) -> bool:
    """Step the stream's leader down until ``to`` leads it (placement preferred)."""
    deadline = time.monotonic() + timeout
    body = json.dumps({"placement": {"preferred": to}}).encode()
    while time.monotonic() < deadline:
        if await stream_leader(nc, stream) == to:
            return True
        await js_api(nc, f"STREAM.LEADER.STEPDOWN.{stream}", body)
        await asyncio.sleep(1.0)
    return False


# --- the device processes ---------------------------------------------------------
async def device_host(creds_path: str, urls: list[str]) -> None:
    """Child: SDK devices for the credentials in ``creds_path``; JSON lines out."""
    creds: list[list[str]] = json.loads(await asyncio.to_thread(Path(creds_path).read_text))
    out = sys.stdout

    def emit(event: dict[str, Any]) -> None:
        out.write(json.dumps(event, separators=(",", ":")) + "\n")
        out.flush()

    sdks: list[Device] = []
    for pin, token in creds:

        def on_message(m: Message, pin: str = pin) -> None:
            emit({"ev": "msg", "pin": pin, "id": m.id, "t": time.monotonic()})

        def on_link(w: frames.Welcome, pin: str = pin) -> None:
            emit({"ev": "link", "pin": pin, "node": w.node, "t": time.monotonic()})

        sdks.append(Device(pin, token, on_message, link_urls=urls, on_link=on_link))
    tasks = [asyncio.create_task(s.run()) for s in sdks]
    emit({"ev": "started", "devices": len(sdks)})
    await asyncio.to_thread(sys.stdin.readline)  # "quit", or EOF
    await asyncio.gather(*(s.stop() for s in sdks), return_exceptions=True)
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    refused = sum(
        1
        for r in results
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    )
    emit(
        {
            "ev": "bye",
            "duplicates": sum(s.duplicates for s in sdks),
            "links_opened": sum(s.links_opened for s in sdks),
            "refused": refused,
        }
    )


# --- part 1: relay failover --------------------------------------------------------
@dataclass
class Failover:
    #: "batch" (POST /v1/messages, 100 a request) or "single" (one POST per device).
    mode: str = ""
    number: int = 0
    #: Seconds to push one message to every device: before the kill (relays idle),
    #: and from the kill to the last push answered.
    warm_push_s: float = 0.0
    push_s: float = 0.0
    devices: int = 0
    relays: int = 0
    device_procs: int = 0
    victim: str = ""
    on_victim: int = 0
    create_s: float = 0.0
    link_s: float = 0.0
    #: Before the kill: push → the device's callback, seconds.
    warm: list[float] = field(default_factory=list)
    #: After the kill, per device on the killed relay, seconds since the kill:
    relinked: list[float] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)
    #: Push → callback for the post-kill messages (excludes the wait for a push slot).
    push_to_device: list[float] = field(default_factory=list)
    push_retries: int = 0
    missing: int = 0
    app_duplicates: int = 0
    unexpected: int = 0
    sdk_duplicates: int = 0
    refused_links: int = 0
    moved_to: dict[str, int] = field(default_factory=dict)
    info_gone_s: float = float("nan")
    other_cores: float = float("nan")
    restart_s: float = 0.0


class DeviceEvents:
    """What the device processes report: links and messages per PIN."""

    def __init__(self) -> None:
        self.links: dict[str, list[tuple[str, float]]] = {}
        self.msgs: dict[str, list[tuple[str, float]]] = {}
        self.by_id: dict[str, float] = {}
        self.linked = 0
        self.received = 0
        self.bye: list[dict[str, Any]] = []

    def on_event(self, child: Child, event: dict[str, Any]) -> None:
        ev = event.get("ev")
        if ev == "link":
            pin = str(event["pin"])
            if pin not in self.links:
                self.linked += 1
            self.links.setdefault(pin, []).append((str(event["node"]), float(event["t"])))
        elif ev == "msg":
            mid = str(event["id"])
            self.msgs.setdefault(str(event["pin"]), []).append((mid, float(event["t"])))
            self.by_id.setdefault(mid, float(event["t"]))
            self.received += 1
        elif ev == "bye":
            self.bye.append(event)


async def create_devices(
    c: LocalCluster, count: int, label: str, concurrency: int = 30
) -> list[tuple[str, str]]:
    """POST /v1/devices through every relay in turn; (pin, token) pairs."""
    created: list[tuple[str, str]] = []
    headers = {"Authorization": f"Bearer {c.key}"}
    urls = [c.url(r) for r in c.relays if c.alive(r.name)]
    remaining = count
    with progress() as bar:
        task = bar.add_task(label, total=count)

        async def worker(index: int) -> None:
            nonlocal remaining
            url = urls[index % len(urls)]
            async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
                while remaining > 0:
                    remaining -= 1
                    for attempt in range(5):
                        r = await http.post("/v1/devices", json={})
                        if r.status_code == 201:
                            break
                        if attempt == 4:
                            raise RuntimeError(f"creating a device: {r.status_code} {r.text}")
                        await asyncio.sleep(0.5)
                    body = r.json()
                    created.append((str(body["pin"]), str(body["token"])))
                    bar.advance(task)

        await asyncio.gather(*(worker(i) for i in range(min(concurrency, count))))
    return created


async def push_each(
    clients: Sequence[httpx.AsyncClient],
    pins: Sequence[str],
    tag: str,
    sent: dict[str, float],
    answered: dict[str, float],
    ids: dict[str, str],
) -> int:
    """One push per PIN, spread over ``clients`` (one worker each); returns retries."""
    queue = list(reversed(pins))
    retries = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal retries
        while queue:
            pin = queue.pop()
            key = f"{tag}-{pin}"
            started = time.monotonic()
            while True:
                try:
                    r = await http.post(
                        f"/v1/devices/{pin}/messages",
                        json={"data": {"tag": tag}, "ttl": 600},
                        headers={"Idempotency-Key": key},
                    )
                    if r.status_code == 201:
                        break
                except httpx.HTTPError:
                    pass
                retries += 1
                if time.monotonic() - started > GIVE_UP_S:
                    raise RuntimeError(f"push to {pin} failed for {GIVE_UP_S:g} s")
                await asyncio.sleep(RETRY_DELAY_S)
            sent[pin] = started
            answered[pin] = time.monotonic()
            ids[pin] = str(r.json()["id"])

    await asyncio.gather(*(worker(h) for h in clients))
    return retries


async def wait_until(check: Callable[[], int], total: int, label: str, timeout: float) -> bool:
    """A progress bar until ``check()`` reaches ``total``; False on timeout."""
    deadline = time.monotonic() + timeout
    with progress() as bar:
        task = bar.add_task(label, total=total)
        while True:
            done = check()
            bar.update(task, completed=done)
            if done >= total:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)


async def info_links(http: httpx.AsyncClient, url: str) -> list[str] | None:
    try:
        r = await http.get(f"{url}/v1/info")
        return [str(u) for u in r.json()["link_urls"]] if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def wait_info_without(urls: Sequence[str], gone: str, since: float) -> float:
    """Seconds from ``since`` until ``gone`` is in no live relay's /v1/info."""
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            lists = await asyncio.gather(*(info_links(http, u) for u in urls))
            if all(links is not None and gone not in links for links in lists):
                return time.monotonic() - since
            await asyncio.sleep(0.05)


async def push_batches(
    clients: Sequence[httpx.AsyncClient],
    pins: Sequence[str],
    tag: str,
    sent: dict[str, float],
    answered: dict[str, float],
    ids: dict[str, str],
    size: int,
) -> int:
    """One message per PIN in batches of ``size`` (POST /v1/messages), one batch per
    client at a time; a refused or unanswered batch is retried with its key."""
    chunks = [list(pins[i : i + size]) for i in range(0, len(pins), size)]
    chunks.reverse()
    retries = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal retries
        while chunks:
            chunk = chunks.pop()
            key = f"{tag}-{chunk[0]}-{len(chunk)}"
            body = {"messages": [{"to": p, "data": {"tag": tag}, "ttl": 600} for p in chunk]}
            started = time.monotonic()
            while True:
                try:
                    r = await http.post("/v1/messages", json=body, headers={"Idempotency-Key": key})
                    if r.status_code in (200, 201, 207):
                        break
                except httpx.HTTPError:
                    pass
                retries += 1
                if time.monotonic() - started > GIVE_UP_S:
                    raise RuntimeError(f"a batch failed for {GIVE_UP_S:g} s")
                await asyncio.sleep(RETRY_DELAY_S)
            done = time.monotonic()
            for item in r.json()["results"]:
                pin = str(item["to"])
                if item.get("id") is None:
                    raise RuntimeError(f"batch push to {pin}: {item}")
                sent[pin], answered[pin], ids[pin] = started, done, str(item["id"])

    await asyncio.gather(*(worker(h) for h in clients))
    return retries


async def relay_failover(
    args: argparse.Namespace, c: LocalCluster, logs: Path, results: list[Failover]
) -> None:
    started = time.monotonic()
    creds = await create_devices(c, args.devices, "create devices")
    create_s = time.monotonic() - started
    for number in range(1, args.failover_rounds + 1):
        for mode in args.push_modes:
            result = Failover(mode=mode, number=number, create_s=create_s)
            await failover_round(args, c, logs, creds, result)
            results.append(result)


async def failover_round(
    args: argparse.Namespace,
    c: LocalCluster,
    logs: Path,
    creds: list[tuple[str, str]],
    result: Failover,
) -> None:
    victim = c.relays[0]
    live = c.relays[1:]
    result.devices, result.relays, result.victim = args.devices, len(c.relays), victim.name
    result.device_procs = args.device_procs
    mode = result.mode
    # The victim may have just restarted: wait until its /v1/info lists every relay.
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=5) as http:
        while True:
            urls = await info_links(http, c.url(victim))
            if urls is not None and len(urls) == len(c.relays):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{victim.name}'s /v1/info lists {urls}")
            await asyncio.sleep(0.2)
    events = DeviceEvents()
    children: list[Child] = []
    per = -(-len(creds) // args.device_procs)
    clients: list[httpx.AsyncClient] = []
    headers = {"Authorization": f"Bearer {c.key}"}

    async def push(
        tag: str, sent: dict[str, float], ans: dict[str, float], ids: dict[str, str]
    ) -> int:
        if mode == "batch":
            return await push_batches(clients, pins, tag, sent, ans, ids, args.batch)
        return await push_each(clients, pins, tag, sent, ans, ids)

    try:
        for i in range(args.device_procs):
            part = creds[i * per : (i + 1) * per]
            path = write_credentials(logs / f"devices-{mode}-{i}.json", part)
            child = Child(
                f"devices-{mode}{result.number}-{i}",
                module_argv(MODULE, "devices", str(path), json.dumps(urls)),
                logs,
            )
            child.on_event = events.on_event
            children.append(child)
            await child.start()
        started = time.monotonic()
        if not await wait_until(lambda: events.linked, len(creds), f"link devices ({mode})", 120):
            raise RuntimeError(f"only {events.linked} of {len(creds)} devices linked")
        result.link_s = time.monotonic() - started
        pins = [pin for pin, _ in creds]
        on_victim = [p for p in pins if events.links[p][-1][0] == victim.name]
        result.on_victim = len(on_victim)
        clients = [
            httpx.AsyncClient(base_url=c.url(live[i % len(live)]), headers=headers, timeout=30)
            for i in range(args.push_connections)
        ]
        # Every link delivers: one push each, through the relays that stay.
        sent: dict[str, float] = {}
        answered: dict[str, float] = {}
        warm_ids: dict[str, str] = {}
        started = time.monotonic()
        await push(f"warm-{mode}{result.number}", sent, answered, warm_ids)
        result.warm_push_s = time.monotonic() - started
        if not await wait_until(lambda: events.received, len(pins), "deliver (before kill)", 60):
            raise RuntimeError(f"only {events.received} of {len(pins)} warm-up messages arrived")
        result.warm = sorted(events.by_id[warm_ids[p]] - sent[p] for p in pins)
        await asyncio.sleep(1.0)

        async with other_cpu(lambda: [*c.pids(), *(ch.pid for ch in children)]) as watch:
            killed = c.kill(victim.name)
            info_task = asyncio.create_task(
                wait_info_without([c.url(r) for r in live], c.link_url(victim), killed)
            )
            sent.clear()
            answered.clear()
            ids: dict[str, str] = {}
            result.push_retries = await push(f"after-{mode}{result.number}", sent, answered, ids)
            result.push_s = time.monotonic() - killed
            want = len(pins) * 2
            if not await wait_until(lambda: events.received, want, "deliver (after kill)", 90):
                console.print(f"[red]only {events.received - len(pins)} post-kill arrived[/]")
            await asyncio.sleep(1.0)  # a duplicate would show up now
            result.other_cores = watch.cores()
        try:
            result.info_gone_s = await asyncio.wait_for(info_task, 30)
        except TimeoutError:
            console.print("[red]the killed relay stayed in /v1/info for 30 s[/]")
        for child in children:
            await child.send("quit")
            with contextlib.suppress(TimeoutError):
                await child.expect("bye", 30)
        for bye in events.bye:
            result.sdk_duplicates += int(bye.get("duplicates", 0))
            result.refused_links += int(bye.get("refused", 0))

        for pin in on_victim:
            got = [mid for mid, _ in events.msgs.get(pin, [])]
            wanted = [warm_ids[pin], ids[pin]]
            result.app_duplicates += len(got) - len(set(got))
            result.missing += len(set(wanted) - set(got))
            result.unexpected += len(set(got) - set(wanted))
            later = [(n, t) for n, t in events.links[pin] if t > killed]
            if later:
                result.relinked.append(later[0][1] - killed)
                result.moved_to[later[0][0]] = result.moved_to.get(later[0][0], 0) + 1
            if ids[pin] in events.by_id:
                result.delivered.append(events.by_id[ids[pin]] - killed)
                result.push_to_device.append(events.by_id[ids[pin]] - sent[pin])
            result.answered.append(answered[pin] - killed)
        for values in (result.relinked, result.delivered, result.answered, result.push_to_device):
            values.sort()
    finally:
        for h in clients:
            await h.aclose()
        await stop_all(children)
    # Back to all relays (the node id is free once its record expired).
    started = time.monotonic()
    await c.restart_relay(victim)
    result.restart_s = time.monotonic() - started
    console.print(
        f"failover {result.number} ({mode} pushes): kill -> delivered p50 "
        f"{s(result.delivered, 50)} s, p99 {s(result.delivered, 99)} s, "
        f"max {s(result.delivered, 100)} s"
    )


# --- part 2: store leader loss -----------------------------------------------------
@dataclass
class Load:
    """One steady load across a leader kill."""

    ok_times: list[float] = field(default_factory=list)
    #: Seconds from a push's first attempt to its success, for those that retried.
    retried: list[float] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    duplicates: int = 0
    by_pin: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    #: When the load stopped starting pushes (the loops finish the one they are on).
    stopped: float = 0.0
    ended: float = 0.0

    def count(self, what: str) -> None:
        self.refusals[what] = self.refusals.get(what, 0) + 1


#: (worker, sequence number, attempt, key) -> "ok", "dup" (ok, already stored) or a
#: refusal ("503", "timeout", ...).
Attempt = Callable[[int, int, int, str], Awaitable[str]]


@dataclass
class Round:
    kind: str
    number: int
    leader: str = ""
    also_led: list[str] = field(default_factory=list)
    clients_on_leader: list[str] = field(default_factory=list)
    new_leader: str = ""
    election_s: float = float("nan")
    #: The slowest new leader among the groups this publisher uses that the node led.
    slowest_group: str = ""
    slowest_s: float = float("nan")
    acked: int = 0
    #: Successes per second before the kill, and after the longest window.
    rate: float = 0.0
    rate_after: float = 0.0
    longest_gap_s: float = float("nan")
    gap_from_kill_s: float = float("nan")
    refusals: dict[str, int] = field(default_factory=dict)
    retried: int = 0
    retry_max_s: float = float("nan")
    failed: int = 0
    duplicates: int = 0
    catchup_s: float = float("nan")
    other_cores: float = float("nan")


@dataclass
class Flow:
    """One publisher's closed loops under the load."""

    label: str
    attempt: Attempt
    load: Load


async def steady_load(
    flows: Sequence[Flow],
    workers: int,
    rate: float,
    pre_s: float,
    post_s: float,
    kill: Callable[[], Awaitable[float]],
    label: str,
) -> float:
    """For each flow, ``workers`` loops paced to ``rate`` in total; ``kill`` after
    ``pre_s``.  Returns the kill time.  Every push is retried until it succeeds (or
    for GIVE_UP_S); the loops finish the push they are on when the time is up."""
    stop = asyncio.Event()
    interval = workers / rate

    async def worker(flow: Flow, w: int) -> None:
        load = flow.load
        seq = 0
        slot = time.monotonic() + w * interval / workers
        while not stop.is_set():
            await asyncio.sleep(max(0.0, slot - time.monotonic()))
            slot = max(slot + interval, time.monotonic())
            key = f"{flow.label}-{w}-{seq}-{secrets.token_hex(4)}"
            first = time.monotonic()
            tries = 0
            while True:
                outcome = await flow.attempt(w, seq, tries, key)
                tries += 1
                if outcome in ("ok", "dup"):
                    load.ok_times.append(time.monotonic())
                    if outcome == "dup":
                        load.duplicates += 1
                    if tries > 1:
                        load.retried.append(time.monotonic() - first)
                    break
                load.count(outcome)
                if time.monotonic() - first > GIVE_UP_S:
                    load.failed += 1
                    break
                await asyncio.sleep(RETRY_DELAY_S)
            seq += 1

    started = time.monotonic()
    for flow in flows:
        flow.load.started = started
    tasks = [asyncio.create_task(worker(f, w)) for f in flows for w in range(workers)]
    try:
        with timed_phase(label, pre_s + post_s) as update:
            while time.monotonic() - started < pre_s:
                update(time.monotonic() - started)
                await asyncio.sleep(0.2)
            killed = await kill()
            while time.monotonic() - started < pre_s + post_s:
                update(time.monotonic() - started)
                await asyncio.sleep(0.2)
        stop.set()
        for flow in flows:
            flow.load.stopped = time.monotonic()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for flow in flows:
        flow.load.ended = time.monotonic()
    return killed


def summarize(load: Load, killed: float, r: Round) -> None:
    times = sorted(load.ok_times)
    r.acked = len(times)
    before = sum(1 for t in times if t < killed)
    r.rate = before / (killed - load.started) if killed > load.started else 0.0
    # Windows while the load ran: after it stopped, only stragglers finish, so their
    # gaps say nothing (a push stuck past the end still counts, up to the end).
    end = load.stopped or load.ended
    points = [load.started, *(t for t in times if t <= end), end]
    gaps = [(b - a, a) for a, b in itertools.pairwise(points)]
    if gaps:
        gap, start = max(gaps)
        r.longest_gap_s = gap
        r.gap_from_kill_s = start - killed
        resumed = start + gap
        after = sum(1 for t in times if resumed < t <= end)
        r.rate_after = after / (end - resumed) if end > resumed else 0.0
    r.refusals = dict(load.refusals)
    r.retried = len(load.retried)
    r.retry_max_s = max(load.retried) if load.retried else 0.0
    r.failed = load.failed
    r.duplicates = load.duplicates


class RelayPusher:
    """Pushes through the relays; a retry goes to the next relay."""

    def __init__(self, c: LocalCluster, workers: int, pins: list[str]) -> None:
        headers = {"Authorization": f"Bearer {c.key}"}
        self.clients = [
            [httpx.AsyncClient(base_url=c.url(r), headers=headers, timeout=10) for r in c.relays]
            for _ in range(workers)
        ]
        self.pins = pins
        self.load = Load()

    def pin(self, worker: int, seq: int) -> str:
        return self.pins[(worker * 7919 + seq) % len(self.pins)]

    async def attempt(self, worker: int, seq: int, tries: int, key: str) -> str:
        mine = self.clients[worker]
        http = mine[(worker + seq + tries) % len(mine)]
        pin = self.pin(worker, seq)
        try:
            r = await http.post(
                f"/v1/devices/{pin}/messages",
                json={"data": {"k": key}, "ttl": 3600},
                headers={"Idempotency-Key": key},
            )
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError:
            return "no answer"
        if r.status_code == 201:
            self.load.by_pin[pin] = self.load.by_pin.get(pin, 0) + 1
            return "ok"
        return str(r.status_code)

    async def close(self) -> None:
        for mine in self.clients:
            for h in mine:
                await h.aclose()


class BarePublisher:
    """nats-py: one connection, ``js.publish`` with a Nats-Msg-Id, awaiting each ack."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.load = Load()

    async def attempt(self, worker: int, seq: int, tries: int, key: str) -> str:
        try:
            ack = await self.js.publish(
                f"{BARE_PREFIX}.{worker}",
                b'{"k":"%s"}' % key.encode(),
                timeout=2.0,
                stream=BARE_STREAM,
                headers={"Nats-Msg-Id": key},
            )
        except nats.js.errors.APIError as exc:
            return f"API {exc.code}"
        except nats.errors.NoRespondersError:
            return "no responders"
        except (nats.errors.TimeoutError, TimeoutError):
            return "timeout"
        except nats.errors.Error as exc:
            return type(exc).__name__
        return "dup" if ack.duplicate else "ok"


async def nats_connect(c: LocalCluster, name: str) -> NATS:
    nc = NATS()
    # As the relay's store connects (src/pinrelay/store/jetstream/setup.py).
    await nc.connect(
        c.nats_urls,
        name=name,
        connect_timeout=2,
        reconnect_time_wait=1,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
        error_cb=_quiet,
    )
    return nc


async def _quiet(exc: Exception) -> None:
    pass


@dataclass
class LeaderLoss:
    rounds: list[Round] = field(default_factory=list)
    devices: int = 0
    backlog_ok: int = 0
    backlog_bad: list[str] = field(default_factory=list)
    bare_stored: int = 0
    bare_expected: int = 0


async def leader_round(
    c: LocalCluster,
    monitor: NATS,
    number: int,
    flows: Sequence[Flow],
    args: argparse.Namespace,
) -> list[Round]:
    """One kill of the node leading both streams, under both loads at once."""
    await wait_current(monitor, len(c.nats))
    leader = await stream_leader(monitor, STREAM)
    moved = await move_leader(monitor, BARE_STREAM, leader)
    if not moved:
        console.print(f"[yellow]{BARE_STREAM}'s leader would not move to {leader}[/]")
    bare_leader = await stream_leader(monitor, BARE_STREAM)
    also = [s for s in await led_by(c, monitor, leader) if s not in (STREAM, BARE_STREAM)]
    clients = await asyncio.to_thread(client_names, c, leader)
    rounds = [
        Round(
            kind=kind,
            number=number,
            leader=leader if kind == "relay" else bare_leader,
            also_led=also,
            clients_on_leader=clients,
        )
        for kind in ("relay", "bare")
    ]
    election: asyncio.Task[dict[str, tuple[str, float]]] | None = None
    # One node only: two of three would take every stream's quorum.  Should the bare
    # stream's leader not have moved, the table shows it led elsewhere.
    killed_nodes = [leader]

    async def kill() -> float:
        nonlocal election
        at = time.monotonic()
        for name in killed_nodes:
            c.kill(name)
        groups = [STREAM, BARE_STREAM, *also]
        election = asyncio.create_task(wait_new_leaders(c, groups, leader, at))
        return at

    async with other_cpu(c.pids) as watch:
        killed = await steady_load(
            flows, args.workers, args.rate, args.pre, args.post, kill, f"round {number}: load"
        )
        cores = watch.cores()
    for r, flow in zip(rounds, flows, strict=True):
        summarize(flow.load, killed, r)
        r.other_cores = cores
    if election is not None:
        try:
            leaders = await asyncio.wait_for(election, 30)
            for r, name in zip(rounds, (STREAM, BARE_STREAM), strict=True):
                r.new_leader, r.election_s = leaders[name]
            # The relays also use the KV buckets the node led (not all on every push).
            slowest = max([STREAM, *(g for g in also if g != "meta")], key=lambda n: leaders[n][1])
            rounds[0].slowest_group, rounds[0].slowest_s = slowest, leaders[slowest][1]
            rounds[1].slowest_group, rounds[1].slowest_s = BARE_STREAM, leaders[BARE_STREAM][1]
        except TimeoutError:
            console.print("[red]no new stream leaders reported within 30 s[/]")
    # The killed node comes back on its own data and catches up.
    started = time.monotonic()
    for name in killed_nodes:
        await c.restart_nats(c.nats_node(name))
    await wait_current(monitor, len(c.nats))
    for r in rounds:
        r.catchup_s = time.monotonic() - started
        console.print(
            f"round {number}, {r.kind}: killed {r.leader} (also led {', '.join(r.also_led)}); "
            f"longest window without success {r.longest_gap_s:.2f} s; refusals {r.refusals}; "
            f"new leader {r.new_leader} after {r.election_s:.2f} s; "
            f"caught up in {r.catchup_s:.1f} s"
        )
    return rounds


async def leader_loss(args: argparse.Namespace, c: LocalCluster, result: LeaderLoss) -> None:
    creds = await create_devices(c, args.load_devices, "create load devices")
    pins = [p for p, _ in creds]
    result.devices = len(pins)
    monitor = await nats_connect(c, "bench-monitor")
    bare_nc = await nats_connect(c, "bench-bare")
    pusher = RelayPusher(c, args.workers, pins)
    try:
        js = bare_nc.jetstream(timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                await js.add_stream(
                    StreamConfig(
                        name=BARE_STREAM,
                        subjects=[f"{BARE_PREFIX}.>"],
                        storage=StorageType.FILE,
                        num_replicas=3,
                    )
                )
                break
            except (nats.errors.Error, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        bare = BarePublisher(js)
        for number in range(1, args.rounds + 1):
            pusher.load = Load(by_pin=pusher.load.by_pin)
            bare.load = Load()
            flows = [
                Flow(f"relay{number}", pusher.attempt, pusher.load),
                Flow(f"bare{number}", bare.attempt, bare.load),
            ]
            result.rounds += await leader_round(c, monitor, number, flows, args)
            result.bare_expected += len(bare.load.ok_times)
        # Nothing lost, nothing twice: each device holds what was accepted for it.
        headers = {"Authorization": f"Bearer {c.key}"}
        async with httpx.AsyncClient(base_url=c.url(c.relays[0]), headers=headers) as http:
            for pin in pins:
                body = (await http.get(f"/v1/devices/{pin}")).json()
                if body.get("backlog") == pusher.load.by_pin.get(pin, 0):
                    result.backlog_ok += 1
                else:
                    result.backlog_bad.append(
                        f"{pin}: backlog {body.get('backlog')}, accepted "
                        f"{pusher.load.by_pin.get(pin, 0)}"
                    )
        info = await js_api(monitor, f"STREAM.INFO.{BARE_STREAM}")
        result.bare_stored = int(((info or {}).get("state") or {}).get("messages", -1))
    finally:
        await pusher.close()
        for nc in (bare_nc, monitor):
            with contextlib.suppress(Exception):
                await nc.close()


# --- report ------------------------------------------------------------------------
def s(values: Sequence[float], p: float) -> str:
    return f"{percentile(values, p):.2f}" if values else "n/a"


def dist_row(label: str, values: Sequence[float]) -> list[str]:
    return [
        label,
        f"{len(values):,}",
        s(values, 50),
        s(values, 90),
        s(values, 99),
        f"{max(values):.2f}" if values else "n/a",
    ]


def report(args: argparse.Namespace, failovers: list[Failover], loss: LeaderLoss | None) -> None:
    m = machine()
    parts: list[str] = [
        f"Local cluster as `pinrelay cluster up` starts it, on {m['nproc']} CPUs shared by "
        f"everything: {args.nats} nats-server {nats_version()} nodes (JetStream, clustered "
        f"on 127.0.0.1, the `cluster up` config) and {args.relays} relays "
        "(`pinrelay serve --store nats://...`), all real processes on ports picked at run "
        "time. Kills are SIGKILL by pid. Other processes: CPU the rest of the machine used "
        "during the measurement (not the cluster, not the benchmark's own processes), in "
        "cores.",
        "",
    ]
    if failovers:
        f0 = failovers[0]
        headers = ["pushes", "seconds", "samples", "p50", "p90", "p99", "max"]
        rows = []
        facts = []
        round_headers = [
            "round",
            "pushes",
            "kill → relinked p99 s",
            "kill → push answered p99 s",
            "**kill → delivered p50 / p99 / max s**",
            "push all s (before the kill)",
            "missing / duplicates",
            "left /v1/info s",
            "other processes, cores",
        ]
        round_rows = []
        for f in failovers:
            round_rows.append(
                [
                    str(f.number),
                    f.mode,
                    s(f.relinked, 99),
                    s(f.answered, 99),
                    f"**{s(f.delivered, 50)} / {s(f.delivered, 99)} / {s(f.delivered, 100)}**",
                    f"{f.push_s:.2f} ({f.warm_push_s:.2f})",
                    f"{f.missing} / {f.app_duplicates + f.unexpected}",
                    fmt(f.info_gone_s, 1),
                    fmt(f.other_cores, 2),
                ]
            )
        for mode in args.push_modes:
            runs = [f for f in failovers if f.mode == mode]
            if not runs:
                continue

            def pooled(pick: Callable[[Failover], list[float]]) -> list[float]:
                return sorted(v for f in runs for v in pick(f))  # noqa: B023

            how = f"batch ({args.batch} a request)" if mode == "batch" else "single (1 a request)"
            delivered = pooled(lambda f: f.delivered)
            rows += [
                [
                    how,
                    *dist_row(
                        "kill → device linked to another relay", pooled(lambda f: f.relinked)
                    ),
                ],
                [how, *dist_row("kill → push answered", pooled(lambda f: f.answered))],
                [how, *dist_row("**kill → message in the device's callback**", delivered)],
                [
                    how,
                    *dist_row(
                        "push sent → message in the callback", pooled(lambda f: f.push_to_device)
                    ),
                ],
                [how, *dist_row("before the kill: push sent → callback", pooled(lambda f: f.warm))],
            ]
            p99s = [percentile(f.delivered, 99) for f in runs]
            median_p99 = statistics.median(p99s)
            verdict = "meets" if median_p99 <= 3.0 else "misses"
            moved: dict[str, int] = {}
            for f in runs:
                for n, k in f.moved_to.items():
                    moved[n] = moved.get(n, 0) + k
            on_victim = sum(f.on_victim for f in runs)
            missing = sum(f.missing for f in runs)
            facts += [
                f"- **{mode} pushes, kill → message in the callback, {len(runs)} kills of "
                f"{f0.devices:,} devices: p50 {s(delivered, 50)} s, p99 {s(delivered, 99)} s, "
                f"max {s(delivered, 100)} s; p99 per kill "
                f"{', '.join(f'{v:.2f}' for v in p99s)} s, median {median_p99:.2f} s** "
                f"({verdict} the target p99 ≤ 3 s).",
                f"  Devices on relay-1 at the kills: {on_victim:,}; linked again: "
                f"{sum(len(f.relinked) for f in runs):,} (to "
                f"{', '.join(f'{n}: {k:,}' for n, k in sorted(moved.items()))}); push "
                f"retries after the kills: {sum(f.push_retries for f in runs)}. Exactly once: "
                f"{on_victim - missing:,} of {on_victim:,} got both messages; {missing} "
                f"missing, {sum(f.app_duplicates for f in runs)} duplicates and "
                f"{sum(f.unexpected for f in runs)} unexpected messages reached the "
                f"application; the SDK dropped {sum(f.sdk_duplicates for f in runs)} "
                f"redelivered frames; {sum(f.refused_links for f in runs)} SDK runs ended "
                "refused. The killed relay left every live relay's `/v1/info` "
                f"{', '.join(fmt(f.info_gone_s, 1) for f in runs)} s after the kills; "
                "restarted (same node id and data), it was ready in "
                f"{', '.join(f'{f.restart_s:.1f}' for f in runs)} s.",
            ]
        print_table("Relay failover, per kill", round_headers, round_rows)
        print_table("Relay failover, all kills", headers, rows)
        parts += [
            "### Relay failover",
            "",
            f"{f0.devices:,} devices created (POST /v1/devices, {f0.create_s:.1f} s). Then, "
            f"{args.failover_rounds} times for each push mode: the devices linked with the "
            f"SDK's `Device` from {f0.device_procs} processes, each given relay-1's "
            f"`/v1/info` link_urls (all {f0.relays} relays, relay-1 first; SDK defaults: "
            "back-off 0.25 s with full jitter, the next URL on each attempt), so all on "
            "relay-1; one push each through relay-2 and relay-3 checked every link; then "
            "relay-1 was SIGKILLed and at once one message per device was pushed through "
            f"relay-2 and relay-3 ({args.push_connections} keep-alive connections; "
            f"Idempotency-Key; a refused or lost answer retried after {RETRY_DELAY_S:g} s), "
            f"either in batches (POST /v1/messages, {args.batch} a request) or one POST "
            "/v1/devices/{pin}/messages each; then relay-1 was restarted. Times are "
            "CLOCK_MONOTONIC, one clock for all processes. With single pushes, "
            "kill → delivered includes the wait for a push slot: pushing 1,000 messages "
            "one at a time is itself seconds of work for these relays on this machine "
            '(see "push all", before the kill and after it); the batch runs show the '
            "failover itself.",
            "",
            md_table(round_headers, round_rows),
            "",
            "All kills of a mode together:",
            "",
            md_table(headers, rows),
            "",
            *facts,
            "",
        ]
    if loss is not None and loss.rounds:
        kill_headers = ["round", "killed", "it also led", "clients on it", "caught up s"]
        kill_headers.append("other processes, cores")
        kill_rows = [
            [
                str(r.number),
                r.leader,
                ", ".join(r.also_led) or "-",
                ", ".join(r.clients_on_leader) or "-",
                fmt(r.catchup_s, 1),
                fmt(r.other_cores, 2),
            ]
            for r in loss.rounds
            if r.kind == "relay"
        ]
        headers = [
            "round",
            "publisher",
            "new leader after s",
            "slowest election of its groups s",
            "acked/s before",
            "acked/s after",
            "longest window without success s",
            "window starts after kill s",
            "refusals",
            "retried (max s)",
            "failed",
        ]
        rows = []
        for r in loss.rounds:
            refusals = ", ".join(f"{k}: {v}" for k, v in sorted(r.refusals.items())) or "0"
            rows.append(
                [
                    str(r.number),
                    "relays (HTTP push)" if r.kind == "relay" else "bare nats-py",
                    fmt(r.election_s, 2),
                    f"{fmt(r.slowest_s, 2)} ({r.slowest_group or '?'})",
                    f"{r.rate:,.0f}",
                    f"{r.rate_after:,.0f}",
                    f"**{fmt(r.longest_gap_s, 2)}**",
                    fmt(r.gap_from_kill_s, 2),
                    refusals,
                    f"{r.retried} ({fmt(r.retry_max_s, 2)})",
                    str(r.failed),
                ]
            )
        print_table("Store leader loss: the kills", kill_headers, kill_rows)
        print_table("Store leader loss", headers, rows)
        relay = [r.longest_gap_s for r in loss.rounds if r.kind == "relay"]
        bare = [r.longest_gap_s for r in loss.rounds if r.kind == "bare"]
        ratios = [a / b for a, b in zip(relay, bare, strict=True) if b > 0]
        ratio = statistics.median(relay) / statistics.median(bare) if relay and bare else 0.0
        relay_refused = sum(sum(r.refusals.values()) for r in loss.rounds if r.kind == "relay")
        relay_503 = sum(r.refusals.get("503", 0) for r in loss.rounds if r.kind == "relay")
        relay_retried = sum(r.retried for r in loss.rounds if r.kind == "relay")
        relay_failed = sum(r.failed for r in loss.rounds if r.kind == "relay")
        bare_retried = sum(r.retried for r in loss.rounds if r.kind == "bare")
        bare_failed = sum(r.failed for r in loss.rounds if r.kind == "bare")
        bare_dups = sum(r.duplicates for r in loss.rounds if r.kind == "bare")

        def beyond(kind: str) -> str:
            over = [
                r.longest_gap_s - r.slowest_s
                for r in loss.rounds
                if r.kind == kind and r.slowest_s == r.slowest_s
            ]
            return f"{statistics.median(over):+.2f} s" if over else "n/a"

        elections = [
            (r.election_s, b.election_s)
            for r, b in itertools.pairwise(loss.rounds)
            if r.kind == "relay" and b.kind == "bare" and r.number == b.number
        ]
        parts += [
            "### Store leader loss",
            "",
            "Two publishers at once, each with "
            f"{args.workers} workers paced to {args.rate:g}/s in total: (a) through the "
            f"relays, POST /v1/devices/{{pin}}/messages with an Idempotency-Key to "
            f"{loss.devices} devices, round-robin over the relays; (b) a bare nats-py "
            "publisher (one connection, connected as the relay's store connects; "
            f"`js.publish` with a `Nats-Msg-Id`, 2 s timeout) on its own R3 file stream "
            f"`{BARE_STREAM}`. Either retries a refused or unanswered attempt with the same "
            f"key (through the next relay) {RETRY_DELAY_S:g} s later, until it succeeds. "
            f"Before each round the leader of `{BARE_STREAM}` is moved (stepdown, preferred "
            f"placement) to the node leading the relays' stream `{STREAM}` "
            "(`$JS.API.STREAM.INFO` cluster.leader); after "
            f"{args.pre:g} s of load that node is SIGKILLed and the load runs {args.post:g} s "
            "more. So both publishers lose their stream leader in the same kill, with the "
            "same other leaderships lost and the same machine load: a fair comparison. Then "
            "the node is restarted on its data and every stream's replicas must be current "
            '("caught up") before the next round. "new leader after": when a live node\'s '
            "/jsz first named another leader for the stream (polled every 50 ms); "
            '"slowest election of its groups": the same, the latest among the groups the '
            "killed node led that the publisher uses (the relays: their stream and KV "
            "buckets, not all of which every push touches; the bare publisher: its "
            "stream). A window: "
            "the longest time between two consecutive successes (201, or a publish ack) "
            "while the load ran (a stall still on when it stopped counts up to then).",
            "",
            md_table(kill_headers, kill_rows),
            "",
            md_table(headers, rows),
            "",
            f"- **Longest window with no successful push, median of {len(relay)} rounds: "
            f"relays {statistics.median(relay):.2f} s, bare nats-py "
            f"{statistics.median(bare):.2f} s: ratio {ratio:.2f}** "
            f"(per round: relays {', '.join(f'{v:.2f}' for v in relay)} s; bare "
            f"{', '.join(f'{v:.2f}' for v in bare)} s; ratios "
            f"{', '.join(f'{v:.2f}' for v in ratios)}).",
            "- Against JetStream's own elections in the same kill: the relays' window minus "
            f"the slowest new leader among their groups, median {beyond('relay')}; the bare "
            f"publisher's window minus its stream's new leader, median {beyond('bare')}. "
            "New leader of the relays' stream vs the bare stream, per round (s): "
            + ", ".join(f"{a:.2f} vs {b:.2f}" for a, b in elections)
            + ". JetStream elects after a randomized timeout, so the two streams' elections "
            "differ from kill to kill.",
            f"- Relays: {relay_refused} refused or unanswered attempts ({relay_503} of them "
            f"503), {relay_retried} pushes needed a retry and all but {relay_failed} "
            f"succeeded (within {GIVE_UP_S:g} s); the slowest took "
            f"{max(r.retry_max_s for r in loss.rounds if r.kind == 'relay'):.2f} s from its "
            "first attempt to its 201 (bare nats-py: "
            f"{max(r.retry_max_s for r in loss.rounds if r.kind == 'bare'):.2f} s). "
            "Nothing lost, nothing twice: "
            f"{loss.backlog_ok} of {loss.devices} devices hold exactly the pushes accepted "
            "for them (GET /v1/devices/{pin} backlog)"
            + (f"; mismatches: {'; '.join(loss.backlog_bad[:5])}" if loss.backlog_bad else "")
            + ".",
            f"- Bare: {bare_retried} publishes needed a retry, {bare_failed} failed; the stream "
            f"holds {loss.bare_stored:,} messages for {loss.bare_expected:,} acknowledged "
            f"distinct publishes; {bare_dups} retries were acknowledged as duplicates (stored "
            "by an attempt whose ack was lost).",
            "",
        ]
    for line in parts:
        if line.startswith("- "):
            console.print(line)
    if args.no_results:
        return
    path = write_section(MODULE, "Cluster failover (bench.cluster_failover)", "\n".join(parts))
    console.print(f"[green]wrote[/] {path}")


def nats_version() -> str:
    try:
        out = subprocess.run(
            [cl.nats_server_binary(), "--version"], capture_output=True, timeout=10, check=False
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().split()[-1] if out.strip() else ""


# --- main --------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cluster_failover",
        description="Relay failover time and store leader loss on a local cluster.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="200 devices, one leader-loss round, shorter load"
    )
    parser.add_argument("--devices", type=int, default=None, help="default 1,000")
    parser.add_argument("--device-procs", type=int, default=2, help="SDK device processes")
    parser.add_argument("--push-connections", type=int, default=50)
    parser.add_argument(
        "--push-modes",
        default="batch,single",
        help="after the kill: batch (POST /v1/messages) and/or single pushes; one run each",
    )
    parser.add_argument("--batch", type=int, default=100, help="messages per batch push")
    parser.add_argument(
        "--failover-rounds", type=int, default=None, help="relay kills per push mode (default 3)"
    )
    parser.add_argument("--relays", type=int, default=3)
    parser.add_argument("--nats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=None, help="leader kills (default 5)")
    parser.add_argument("--workers", type=int, default=20, help="leader-loss load")
    parser.add_argument("--rate", type=float, default=None, help="pushes/s (default 200)")
    parser.add_argument("--pre", type=float, default=None, help="s of load before the kill")
    parser.add_argument("--post", type=float, default=None, help="s of load after the kill")
    parser.add_argument("--load-devices", type=int, default=100)
    parser.add_argument(
        "--only", choices=("failover", "leader"), default=None, help="run one part only"
    )
    parser.add_argument("--keep", action="store_true", help="keep the cluster's data folders")
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.devices is None:
        args.devices = 200 if args.quick else 1000
    if args.failover_rounds is None:
        args.failover_rounds = 1 if args.quick else 3
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    if args.rate is None:
        args.rate = 100.0 if args.quick else 200.0
    if args.pre is None:
        args.pre = 2.0 if args.quick else 3.0
    if args.post is None:
        args.post = 8.0 if args.quick else 12.0
    args.push_modes = [m for m in str(args.push_modes).split(",") if m]
    if not set(args.push_modes) <= {"batch", "single"}:
        parser.error("--push-modes: batch and/or single")
    if args.relays < 2:
        parser.error("--relays must be at least 2")
    return args


async def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logs = run_dir("cluster_failover")
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)
    console.print(
        f"[bold]{MODULE}[/]: {args.nats} NATS nodes, {args.relays} relays, "
        f"{args.devices} devices; logs in {logs}"
    )
    c = LocalCluster(logs / "cluster", args.relays, args.nats)
    failovers: list[Failover] = []
    loss: LeaderLoss | None = None
    try:
        await c.start()
        if args.only in (None, "failover"):
            await relay_failover(args, c, logs, failovers)
        if args.only in (None, "leader"):
            loss = LeaderLoss()
            await leader_loss(args, c, loss)
    finally:
        c.stop()
        if not args.keep:
            # The stores, not the logs (each NATS node's log is in its folder).
            for path in [*(Path(n.dir) / "js" for n in c.nats), *(Path(r.dir) for r in c.relays)]:
                shutil.rmtree(path, ignore_errors=True)
    report(args, failovers, loss)


def entry(argv: list[str]) -> None:
    if argv and argv[0] == "devices":
        asyncio.run(device_host(argv[1], json.loads(argv[2])))
    else:
        run_main(main(argv))


if __name__ == "__main__":
    entry(sys.argv[1:])
