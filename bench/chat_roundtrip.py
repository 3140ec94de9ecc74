"""Chat round trip and CPU per chat message: pinrelay beside Prosody, interleaved.

A round trip: a sender sends a chat message that asks for a delivery receipt; the
server hands it to the recipient's application; the application's receipt comes
back to the sender.  Measured from just before the sender writes the message to
when the sender reads the receipt, in this process (same clock), at a steady rate.

- **Prosody** (Debian's package, :mod:`bench.prosody`): a Prosody of our own on a
  free loopback port, storage on SQLite, mod_offline on.  N pairs of slixmpp
  clients in this process (default 10): senders send ``<message type='chat'>`` with
  ``<request xmlns='urn:xmpp:receipts'/>`` to their recipient's bare JID; the
  recipient's handler answers ``<received xmlns='urn:xmpp:receipts' id='…'/>``
  (XEP-0184, client to client).  Two variants (``--systems``):

  - ``prosody``: as deployed with offline storage.  Recipients are online, so
    Prosody routes every message and receipt from memory and writes nothing
    (offline storage is fsynced, but only used for recipients who are offline);
  - ``prosody-mam``: mod_mam (XEP-0313) archives every message and receipt for
    both users on SQLite, each a committed (fsynced) transaction before the stanza
    is routed on: Prosody with every message and receipt durable.

- **pinrelay** (:func:`run_pinrelay_chat`): a relay (``pinrelay serve``), 2N devices
  made contacts over the API, each linked with a raw ``websockets`` client.  The
  sender sends ``{"type":"send","to":…,"text":…,"client_id":…}`` (answered by
  ``sent`` with the message id once it is stored); the recipient acks the ``msg``
  (kind ``chat``) as its application reads it; the ack makes the relay store a
  ``receipt`` (state ``delivered``) for the sender, who reads it (and acks it):
  the round trip ends there.  Every message and every receipt is fsynced (group
  commits) before it is delivered.

Each run: a fresh server process and data folder; users registered (Prosody) or
devices created and made contacts (pinrelay); all clients logged in; the server's
main thread pinned to the first CPU and this process (every client) to the others
(``--no-pin``: neither); 2,000 fdatasyncs of a 4 KiB overwrite in the server's data
folder, from the CPU the server's main thread is then pinned to (the disk's own
figure, as bench.latency measures it: a durable round trip cannot beat the disk),
then 500 more one every 1/(2 x rate) s, as far apart as a relay's durable commits
come (on this VM a sync after a quiet gap costs several times one back to back); a
warm-up (``--warmup`` s, not counted); then messages at ``--rate`` a second in total
for ``--seconds``, round-robin over the pairs, at fixed intervals (open loop: a late
receipt does not delay the next message).  After the last receipt (or
``--drain-timeout``), once the server has gone quiet, its CPU (utime+stime; pinrelay's
with its SQLite writer process) is divided by the round trips completed: CPU per chat
message, i.e. the message, its receipt and (pinrelay) the acks of both.

Runs alternate (``--rounds``: prosody, prosody-mam, pinrelay, then the next round
starting one further along); medians are compared.  ``--before COMMIT`` adds a
relay run from that commit's tree (``pinrelay@<commit>``), alternated with this
tree's (copied at the start, so an edit meanwhile changes neither), to compare two
versions of the relay in one run (RESULTS.md is then left alone).
Target (issue 13): pinrelay's p99 round trip below Prosody's, while every message
and receipt is fsync-durable.
Every figure also goes to ``results.json`` in the run's log folder; ``--json``
prints that document instead of the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.chat_stages import STAGES, LoopLag, StageRecorder, breakdown, sleeps
from bench.cluster_systems import before_tree, pin_source
from bench.common import (
    LOOPBACK,
    OtherLoad,
    RelayProcess,
    add_common_args,
    child_pids,
    console,
    cpu_seconds,
    create_devices,
    machine,
    md_table,
    percentile,
    print_table,
    run_dir,
    run_main,
    source_state,
    timed_phase,
    wait_machine_quiet,
    wait_quiet,
    write_section,
)
from bench.latency import disk_probe
from bench.prosody import (
    DURABILITY,
    DURABILITY_ARCHIVE,
    ChatTally,
    ProsodyMissing,
    ProsodyProcess,
    SlixmppChat,
    chosen_cpu,
    disk_irq_cpu,
    pin_cpus,
    prosody_version,
)

MODULE = "bench.chat_roundtrip"
PROSODY, PROSODY_MAM, PINRELAY = "prosody", "prosody-mam", "pinrelay"
SYSTEMS = (PROSODY, PROSODY_MAM, PINRELAY)


class ChatUnavailable(RuntimeError):
    """The relay under test has no device-to-device chat (yet): contacts or the
    ``send`` frame are refused."""


@dataclass
class Run:
    system: str
    round: int
    rate: float
    pairs: int
    seconds: float = 0.0
    sent: int = 0
    completed: int = 0
    unmatched: int = 0
    errors: int = 0
    late: int = 0
    max_lag_ms: float = 0.0
    #: From the first measured message to the last receipt, s (a server that falls
    #: behind the rate takes longer than ``seconds``).
    span_s: float = 0.0
    #: Round trips, ms: p50, p90, p99, p99.9, max.
    rtt_ms: dict[str, float] = field(default_factory=dict)
    #: pinrelay: send → ``sent`` (stored and fsynced), ms.
    accept_ms: dict[str, float] = field(default_factory=dict)
    #: fdatasync of a 4 KiB overwrite in the server's data folder just before, from
    #: the server's CPU (pinned runs), back to back, ms.
    disk_ms: dict[str, float] = field(default_factory=dict)
    #: The same, one sync every :func:`paced_gap` s (as a relay's durable commits
    #: come at the run's rate), ms.
    disk_paced_ms: dict[str, float] = field(default_factory=dict)
    #: pinrelay: its store's commits while measured (/metrics): "count", "seconds",
    #: "over_1ms" (commits), "inline" (of them, committed on the relay's loop).
    commits: dict[str, float] = field(default_factory=dict)
    server_cpu_s: float = 0.0
    #: Of server_cpu_s: pinrelay's SQLite writer process (0 for Prosody).
    writer_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    #: Voluntary context switches of the server's threads and child processes.
    server_sleeps: int = 0
    other_cores: float = float("nan")
    #: pinrelay: median ms of each stage (bench.chat_stages) over all round trips
    #: ("all") and over the slowest 1 % ("slowest"); "dominant": share of the slowest
    #: in which each stage was the largest.
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The clients' event loop: p99 lateness of a 1 ms timer, ms.
    client_lag_p99_ms: float = float("nan")
    pinned: str = ""
    #: Why the run has no figures (pinrelay's chat not there yet, say).
    skipped: str = ""

    @property
    def cpu_us(self) -> float:
        """Server CPU per completed round trip (message + receipt), µs."""
        return self.server_cpu_s / self.completed * 1e6 if self.completed else float("nan")

    @property
    def client_us(self) -> float:
        return self.client_cpu_s / self.completed * 1e6 if self.completed else float("nan")


def summary_ms(values: Sequence[float], missing: int = 0) -> dict[str, float]:
    """p50/p90/p99/p99.9/max of ``values`` (seconds), in ms; {} if empty.

    ``missing``: receipts that never came back, counted as infinitely late (a
    percentile they reach is ``inf``), so a server that loses or stalls them does not
    look faster for it.
    """
    if not values and not missing:
        return {}
    ordered = sorted(values) + [math.inf] * missing
    out = {f"p{p:g}": percentile(ordered, p) * 1000 for p in (50, 90, 99, 99.9)}
    out["max"] = ordered[-1] * 1000
    return out


# --- the common schedule ------------------------------------------------------------
@dataclass
class Pacing:
    seconds: float = 0.0
    sent: int = 0
    late: int = 0
    max_lag_ms: float = 0.0


async def paced(
    send: Callable[[int], None], rate: float, seconds: float, label: str, *, show: bool = True
) -> Pacing:
    """Call ``send(i)`` at ``start + i / rate`` for ``seconds`` (open loop)."""
    total = max(1, round(rate * seconds))
    out = Pacing()
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        update = stack.enter_context(timed_phase(label, seconds)) if show else None
        for i in range(total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = time.perf_counter() - target
            if lag > 0.005:
                out.late += 1
            out.max_lag_ms = max(out.max_lag_ms, lag * 1000)
            send(i)
            if update is not None and i % 64 == 0:
                update(time.perf_counter() - start)
    out.seconds = time.perf_counter() - start
    out.sent = total
    return out


async def wait_receipts(
    tally: ChatTally, timeout: float, failed: Callable[[], str] = lambda: ""
) -> None:
    """Until every message sent has its receipt (or ``timeout`` s, or a failure)."""
    deadline = time.monotonic() + timeout
    while tally.pending and time.monotonic() < deadline and not failed():
        await asyncio.sleep(0.02)


async def measure_chat(
    run: Run,
    args: argparse.Namespace,
    tally: ChatTally,
    send: Callable[[int], None],
    server_pid: int,
    server_cpu: Callable[[], float],
    failed: Callable[[], str] = lambda: "",
    read_commits: Callable[[], Awaitable[dict[str, float]]] | None = None,
) -> None:
    """Warm up, then the measured phase; fills ``run`` from ``tally`` and /proc
    (and ``run.commits`` from ``read_commits``, read around the measured phase)."""
    if args.warmup > 0:
        tally.measuring = False
        await paced(send, args.rate, args.warmup, "warm-up", show=False)
        await wait_receipts(tally, args.drain_timeout, failed)
        if failed():
            raise ChatUnavailable(failed())
        if tally.pending:
            console.print(f"[yellow]{run.system}: {len(tally.pending)} warm-up receipts missing[/]")
    await wait_quiet(server_pid, timeout=5.0)
    tally.reset()
    tally.pending.clear()
    tally.measuring = True
    commits0 = await read_commits() if read_commits is not None else {}
    other = OtherLoad([server_pid])
    cpu0, client0 = server_cpu(), cpu_seconds(os.getpid())
    sleeps0 = sleeps(server_pid)
    writer0 = cpu0 - cpu_seconds(server_pid)
    started = time.perf_counter()
    pacing = await paced(send, args.rate, args.seconds, f"{run.system} #{run.round}")
    await wait_receipts(tally, args.drain_timeout, failed)
    await wait_quiet(server_pid, timeout=10.0)
    cpu1 = server_cpu()
    run.server_sleeps = sleeps(server_pid) - sleeps0
    run.server_cpu_s = cpu1 - cpu0
    run.writer_cpu_s = cpu1 - cpu_seconds(server_pid) - writer0
    run.client_cpu_s = cpu_seconds(os.getpid()) - client0
    run.other_cores = other.cores()
    if read_commits is not None:
        run.commits = commits_between(commits0, await read_commits())
    run.seconds, run.late, run.max_lag_ms = pacing.seconds, pacing.late, pacing.max_lag_ms
    run.span_s = max(0.0, tally.last_done - started)
    run.sent, run.completed = tally.sent, tally.completed
    run.unmatched, run.errors = tally.unmatched, tally.errors
    run.rtt_ms = summary_ms(tally.rtts, max(0, tally.sent - tally.completed))
    run.accept_ms = summary_ms(tally.accepts)
    if failed():
        raise ChatUnavailable(failed())


@contextlib.contextmanager
def pinned(
    server_pid: int, enabled: bool, run: Run, server_cpu: int | None = None
) -> Iterator[None]:
    """Pin the server's main thread and this process (see :func:`pin_cpus`); restore
    this process's CPUs afterwards."""
    saved = os.sched_getaffinity(0)
    try:
        if enabled:
            run.pinned = pin_cpus(server_pid, server_cpu)
        yield
    finally:
        os.sched_setaffinity(0, saved)


def server_cpu(args: argparse.Namespace) -> int | None:
    """``--server-cpu``: a number, "first", or "disk" (the CPU that takes the block
    device's interrupts, where a server that fsyncs is woken when a sync is done)."""
    if args.server_cpu == "first":
        return None
    if args.server_cpu == "disk":
        return disk_irq_cpu()
    return int(args.server_cpu)


_COMMIT_FIGURES = {
    "pinrelay_store_commit_seconds_count": "count",
    "pinrelay_store_commit_seconds_sum": "seconds",
    'pinrelay_store_commit_seconds_bucket{le="0.001"}': "within_1ms",
    "pinrelay_store_inline_commits": "inline",
}


async def commit_figures(relay: RelayProcess) -> dict[str, float]:
    """The relay's store commits so far, from its /metrics (the admin key's)."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        got = await client.get(
            f"{relay.url}/metrics", headers={"Authorization": f"Bearer {relay.admin_key}"}
        )
    got.raise_for_status()
    out: dict[str, float] = {}
    for line in got.text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in _COMMIT_FIGURES:
            out[_COMMIT_FIGURES[name]] = float(value)
    return out


def commits_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in _COMMIT_FIGURES.values()}
    return {
        "count": d["count"],
        "seconds": d["seconds"],
        "over_1ms": d["count"] - d["within_1ms"],
        "inline": d["inline"],
    }


async def probe_disk(run: Run, args: argparse.Namespace, data: Path) -> None:
    """The disk's own fdatasync, from the CPU the server's main thread is about to be
    pinned to (unpinned: from wherever this thread runs)."""
    cpu = chosen_cpu(server_cpu(args)) if args.pin else None
    run.disk_ms = summary_ms(await asyncio.to_thread(disk_probe, data, args.disk_probes, cpu=cpu))
    paced = await asyncio.to_thread(
        disk_probe, data, max(1, args.disk_probes // 4), cpu=cpu, gap=paced_gap(args.rate)
    )
    run.disk_paced_ms = summary_ms(paced)


def paced_gap(rate: float) -> float:
    """Seconds between a relay's durable commits at ``rate`` chat messages a second:
    two each (the message, its receipt), evenly spread."""
    return 1.0 / (2.0 * rate)


def pin_writer(relay_pid: int, where: str, run: Run) -> None:
    """Pin the relay's SQLite writer process to the server's CPU or the clients'
    (``--writer-cpu``); "float" leaves it to the scheduler."""
    if where == "float" or not run.pinned:
        return
    cpus = sorted(os.sched_getaffinity(0))  # the clients' CPUs, once pinned
    server = sorted(set(range(os.cpu_count() or 1)) - set(cpus))
    target = set(server if where == "server" else cpus)
    for child in child_pids(relay_pid):
        os.sched_setaffinity(child, target)
    run.pinned += f" (writer with the {where})"


# --- Prosody ------------------------------------------------------------------------
async def run_prosody_chat(
    args: argparse.Namespace, logs: Path, round_no: int, *, archive: bool
) -> Run:
    """One Prosody run: fresh server, ``args.pairs`` slixmpp pairs, warm-up, measure."""
    system = PROSODY_MAM if archive else PROSODY
    run = Run(system, round_no, args.rate, args.pairs)
    server = ProsodyProcess(logs, archive=archive, name=f"{system}-{round_no}")
    chat: SlixmppChat | None = None
    try:
        server.register(SlixmppChat.users(args.pairs))
        await server.start()
        chat = SlixmppChat(server.port, args.pairs)
        await chat.connect()
        await probe_disk(run, args, server.data)
        with pinned(server.pid, args.pin, run, server_cpu(args)):
            await measure_chat(run, args, chat.tally, chat.send, server.pid, server.cpu)
    finally:
        if chat is not None:
            await chat.close()
        server.stop()
    return run


# --- pinrelay -----------------------------------------------------------------------
def send_frame(to: str, text: str, client_id: str) -> bytes:
    """The link's ``send`` frame (device → relay) for a chat message."""
    return msgspec.json.encode({"type": "send", "to": to, "text": text, "client_id": client_id})


def ack_frame(cursor: int) -> bytes:
    return b'{"type":"ack","cursor":%d}' % cursor


class _Frame(msgspec.Struct):
    """Relay → device frames, decoded just enough (other fields are ignored)."""

    type: str
    cursor: int = 0
    kind: str = ""
    data: Any = None
    client_id: str = ""
    id: str = ""
    code: str = ""
    message: str = ""


_decode = msgspec.json.Decoder(_Frame).decode


async def make_contacts(url: str, sender: tuple[str, str], recipient: tuple[str, str]) -> None:
    """``sender`` asks ``recipient`` to be a contact; ``recipient`` accepts.

    A 404 on the request is the relay without contacts (pinrelay's chat not landed):
    :class:`ChatUnavailable`.
    """
    (spin, stoken), (rpin, rtoken) = sender, recipient
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        asked = await http.post(
            f"/v1/devices/{spin}/contacts",
            json={"pin": rpin},
            headers={"Authorization": f"Bearer {stoken}"},
        )
        if asked.status_code == 404:
            raise ChatUnavailable(
                f"POST /v1/devices/{{pin}}/contacts answered 404 ({asked.text[:200]}): this "
                "relay has no contacts API, so pinrelay's chat has not landed yet"
            )
        if asked.status_code != 202:
            raise RuntimeError(f"contact request: {asked.status_code} {asked.text[:300]}")
        accepted = await http.post(
            f"/v1/devices/{rpin}/contacts/{spin}/accept",
            headers={"Authorization": f"Bearer {rtoken}"},
        )
        if accepted.status_code == 404:
            raise ChatUnavailable(
                f"POST /v1/devices/{{pin}}/contacts/{{other}}/accept answered 404 "
                f"({accepted.text[:200]}): pinrelay's chat is not complete yet"
            )
        if accepted.status_code != 200:
            raise RuntimeError(f"contact accept: {accepted.status_code} {accepted.text[:300]}")


class PinrelayChat:
    """``pairs`` sender/recipient devices on one relay, each on a raw ``websockets``
    link in this process (the protocol of docs/PROTOCOL.md plus chat's ``send``,
    ``sent`` and ``receipt``)."""

    def __init__(self, link_url: str, devices: Sequence[tuple[str, str]], window: int) -> None:
        if len(devices) % 2:
            raise ValueError("devices come in (sender, recipient) pairs")
        self.link_url = link_url
        self.devices = list(devices)
        self.pairs = len(devices) // 2
        self.window = window
        self.tally = ChatTally()
        self.stages = StageRecorder()
        self.lag = LoopLag()
        self.links: list[ClientConnection | None] = []
        self._readers: list[asyncio.Task[None]] = []
        self._writes: set[asyncio.Task[None]] = set()
        #: The relay's message id → our client_id, from ``sent``.
        self._by_id: dict[str, str] = {}
        #: Receipts read before their ``sent`` (message id → perf_counter at arrival).
        self._early: dict[str, float] = {}
        self._next = 0
        self.failure = ""

    async def connect(self, timeout: float = 30.0) -> None:
        """Link every device (hello → welcome), readers started."""

        async def one(index: int, pin: str, token: str) -> None:
            ws = await connect(self.link_url, compression=None, ping_interval=None)
            self.links[index] = ws
            await ws.send(
                msgspec.json.encode(
                    {"type": "hello", "pin": pin, "token": token, "window": self.window}
                ).decode()
            )
            first = _decode(await ws.recv())
            if first.type != "welcome":
                raise RuntimeError(f"link {pin}: {first.type} {first.code} {first.message}")
            reader = self._sender if index % 2 == 0 else self._recipient
            self._readers.append(asyncio.get_running_loop().create_task(reader(ws)))

        self.links = [None] * len(self.devices)
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(one(i, pin, tok)) for i, (pin, tok) in enumerate(self.devices)]
        done, waiting = await asyncio.wait(tasks, timeout=timeout)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        if waiting:
            raise TimeoutError(f"{len(waiting)} of {len(tasks)} links not welcomed in {timeout} s")
        for task in done:
            task.result()  # a refused hello raises here

    def _fail(self, frame: _Frame) -> None:
        if not self.failure:
            self.failure = f"the relay answered {frame.type} {frame.code}: {frame.message}"
        self.tally.errors += 1

    async def _sender(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                at = time.perf_counter()
                frame = _decode(raw)
                if frame.type == "sent":
                    self.tally.accepted(frame.client_id)
                    self.stages.sent(frame.client_id, at)
                    if frame.id in self._early:
                        early = self._early.pop(frame.id)
                        self.tally.done(frame.client_id, early)
                        self.stages.receipt(frame.client_id, early)
                    else:
                        self._by_id[frame.id] = frame.client_id
                elif frame.type == "msg":
                    data = frame.data if isinstance(frame.data, dict) else {}
                    if frame.kind == "receipt" and data.get("state") == "delivered":
                        chat_id = str(data.get("id"))
                        client_id = self._by_id.pop(chat_id, None)
                        if client_id is None:
                            self._early[chat_id] = at
                        else:
                            self.tally.done(client_id, at)
                            self.stages.receipt(client_id, at)
                    await ws.send(ack_frame(frame.cursor), text=True)
                elif frame.type == "error":
                    self._fail(frame)

    async def _recipient(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                at = time.perf_counter()
                frame = _decode(raw)
                if frame.type == "msg":
                    # "chat message N" was sent with client_id "cN".
                    text = frame.data.get("text", "") if isinstance(frame.data, dict) else ""
                    key = "c" + text.rpartition(" ")[2]
                    self.stages.msg(key, at)
                    # The application has the message (kind "chat"): its ack is what
                    # makes the relay store the delivered receipt for the sender.
                    await ws.send(ack_frame(frame.cursor), text=True)
                    self.stages.acked(key)
                elif frame.type == "error":
                    self._fail(frame)

    def send(self, index: int) -> None:
        """Pair ``index % pairs`` sends one chat message."""
        pair = index % self.pairs
        self._next += 1
        client_id = f"c{self._next}"
        frame = send_frame(self.devices[2 * pair + 1][0], f"chat message {self._next}", client_id)
        self.tally.start(client_id)
        if self.tally.measuring:
            self.stages.start(client_id)
        link = self.links[2 * pair]
        assert link is not None
        task = asyncio.get_running_loop().create_task(link.send(frame, text=True))
        self._writes.add(task)
        task.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writes.discard(task)
        if not task.cancelled() and task.exception() is not None and not self.failure:
            # The relay closed the link (after an error frame, say).
            self.failure = f"a send failed: {task.exception()!r}"

    async def close(self) -> None:
        for ws in self.links:
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5.0)
        for task in [*self._readers, *self._writes]:
            task.cancel()
        await asyncio.gather(*self._readers, *self._writes, return_exceptions=True)


async def run_pinrelay_chat(
    args: argparse.Namespace, logs: Path, round_no: int, tree: Tree | None = None
) -> Run:
    """One pinrelay run: fresh relay, 2N devices made contacts, raw links, measure
    (``tree``: a relay run from that source tree, ``--before``).

    Raises :class:`ChatUnavailable` while the relay has no chat (contacts → 404, or
    the ``send`` frame refused).
    """
    system = PINRELAY if tree is None else f"{PINRELAY}@{tree[1]}"
    run = Run(system, round_no, args.rate, args.pairs)
    name = f"relay-{round_no}" + ("" if tree is None else f"-{tree[1]}")
    relay = RelayProcess(logs, name=name, max_links=2 * args.pairs + 100)
    if tree is not None:
        relay.src = tree[0]
    chat: PinrelayChat | None = None
    try:
        await relay.start()
        devices = await create_devices(relay, 2 * args.pairs)
        for i in range(args.pairs):
            await make_contacts(relay.url, devices[2 * i], devices[2 * i + 1])
        chat = PinrelayChat(
            f"ws://{LOOPBACK}:{relay.link_port}/v1/link", devices, window=args.window
        )
        await chat.connect()
        await probe_disk(run, args, relay.data)
        with pinned(relay.pid, args.pin, run, server_cpu(args)):
            pin_writer(relay.pid, args.writer_cpu, run)
            chat.lag.start()
            try:
                await measure_chat(
                    run,
                    args,
                    chat.tally,
                    chat.send,
                    relay.pid,
                    relay.cpu,
                    lambda: chat.failure if chat is not None else "",
                    lambda: commit_figures(relay),
                )
            finally:
                await chat.lag.stop()
        run.stages = breakdown(chat.stages, chat.lag)
        run.client_lag_p99_ms = chat.lag.p99() * 1000
    finally:
        if chat is not None:
            await chat.close()
        relay.stop()
        relay.remove_data()
    return run


# --- rounds and the report ----------------------------------------------------------
#: A relay's source tree for ``--before``: (its src folder, the short commit).
Tree = tuple[Path, str]


async def run_one(
    args: argparse.Namespace, logs: Path, system: str, round_no: int, before: Tree | None
) -> Run:
    if system == PINRELAY:
        return await run_pinrelay_chat(args, logs, round_no)
    if system.startswith(f"{PINRELAY}@") and before is not None:
        return await run_pinrelay_chat(args, logs, round_no, before)
    return await run_prosody_chat(args, logs, round_no, archive=system == PROSODY_MAM)


def rotated(systems: Sequence[str], round_no: int) -> list[str]:
    k = (round_no - 1) % len(systems)
    return [*systems[k:], *systems[:k]]


HEADERS = [
    "run",
    "sent",
    "round trips",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
    "server µs/chat msg",
    "of which writer",
    "clients µs/msg",
    "server sleeps/msg",
    "disk fdatasync p50/p99 ms",
    "paced fdatasync p50/p99 ms",
    "other cores",
]


def ms(values: dict[str, float], key: str) -> str:
    if key not in values:
        return "n/a"
    return "no receipt" if math.isinf(values[key]) else f"{values[key]:.2f}"


def finite(value: Any) -> Any:
    """``value`` with every inf/NaN float made ``None`` (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def row(run: Run) -> list[str]:
    if run.skipped:
        return [f"{run.system} #{run.round}", "-", "-", *(["n/a"] * (len(HEADERS) - 3))]
    return [
        f"{run.system} #{run.round}",
        f"{run.sent:,}",
        f"{run.completed:,}",
        *(ms(run.rtt_ms, k) for k in ("p50", "p90", "p99", "p99.9", "max")),
        f"{run.cpu_us:.0f}",
        f"{max(0.0, run.writer_cpu_s) / run.completed * 1e6:.0f}"
        if run.completed and run.system.startswith(PINRELAY)
        else "-",
        f"{run.client_us:.0f}",
        f"{run.server_sleeps / run.completed:.1f}" if run.completed else "n/a",
        f"{ms(run.disk_ms, 'p50')} / {ms(run.disk_ms, 'p99')}",
        f"{ms(run.disk_paced_ms, 'p50')} / {ms(run.disk_paced_ms, 'p99')}",
        f"{run.other_cores:.2f}",
    ]


def medians(runs: Sequence[Run]) -> dict[str, float]:
    done = [r for r in runs if not r.skipped and r.rtt_ms]
    if not done:
        return {}
    return {
        "p50_ms": statistics.median(r.rtt_ms["p50"] for r in done),
        "p99_ms": statistics.median(r.rtt_ms["p99"] for r in done),
        "cpu_us": statistics.median(r.cpu_us for r in done),
        "disk_p99_ms": statistics.median(r.disk_ms.get("p99", float("nan")) for r in done),
        "paced_p50_ms": statistics.median(r.disk_paced_ms.get("p50", float("nan")) for r in done),
        "paced_p99_ms": statistics.median(r.disk_paced_ms.get("p99", float("nan")) for r in done),
        "rounds": float(len(done)),
    }


def systems_of(runs: Sequence[Run]) -> list[str]:
    """The systems measured, in the order first run."""
    return list(dict.fromkeys(r.system for r in runs))


def findings(runs: Sequence[Run]) -> list[str]:
    lines: list[str] = []
    med = {s: medians([r for r in runs if r.system == s]) for s in systems_of(runs)}
    for system, m in med.items():
        if m:
            lines.append(
                f"- {system}, median over {m['rounds']:.0f} run(s): p50 {m['p50_ms']:.2f} ms, "
                f"**p99 {m['p99_ms']:.2f} ms**, {m['cpu_us']:.0f} µs of server CPU per chat "
                f"message; the disk's own fdatasync p99 {m['disk_p99_ms']:.2f} ms back to "
                f"back, p50 {m['paced_p50_ms']:.2f} / p99 {m['paced_p99_ms']:.2f} ms one "
                f"every {paced_gap(runs[0].rate) * 1000:.1f} ms."
            )
    for run in runs:
        if run.completed < run.sent and not run.skipped:
            lines.append(
                f"- {run.system} #{run.round}: {run.sent - run.completed:,} of {run.sent:,} "
                "receipts did not come back within the drain timeout."
            )
        if run.completed and run.span_s > run.seconds + 1.0:
            lines.append(
                f"- {run.system} #{run.round}: fell behind the rate: the last receipt came "
                f"{run.span_s - run.seconds:.1f} s after the last message "
                f"({run.completed / run.span_s:,.0f} round trips/s against {run.rate:g}/s asked), "
                "so its round trips are mostly queueing."
            )
        if run.accept_ms:
            lines.append(
                f"- {run.system} #{run.round}: send → `sent` (stored and fsynced) p50 "
                f"{run.accept_ms['p50']:.2f} ms, p99 {run.accept_ms['p99']:.2f} ms."
            )
        c = run.commits
        if c.get("count") and run.completed and run.span_s:
            lines.append(
                f"- {run.system} #{run.round}: store commits {c['count'] / run.completed:.2f} "
                f"per chat message ({c['inline'] / c['count']:.0%} on the relay's loop, which "
                f"waits for them), mean {c['seconds'] / c['count'] * 1000:.2f} ms, "
                f"{c['over_1ms'] / c['count']:.1%} over 1 ms; in all "
                f"{c['seconds'] / run.span_s:.0%} of the run's time."
            )
        if run.stages:
            every, slow, dom = run.stages["all"], run.stages["slowest"], run.stages["dominant"]
            parts = ", ".join(f"{k} {every[k]:.2f} / {slow[k]:.2f}" for k in STAGES)
            lines.append(
                f"- {run.system} #{run.round}: stages, median of all / of the slowest 1 % "
                f"({slow['n']:.0f}) ms: {parts} (bench.chat_stages); the slowest 1 % had "
                f"msg, turn, back largest in {dom['msg']:.0%}, {dom['turn']:.0%}, "
                f"{dom['back']:.0%}; the clients' loop lag p99 {run.client_lag_p99_ms:.2f} ms, "
                f"worst during a slow round trip (median) {slow.get('client_lag', 0):.2f} ms."
            )
        if run.late:
            lines.append(
                f"- {run.system} #{run.round}: {run.late:,} messages left more than 5 ms after "
                f"their slot (max lag {run.max_lag_ms:.1f} ms): the clients could not keep "
                "the rate."
            )
    ours = med.get(PINRELAY)
    for peer in (PROSODY, PROSODY_MAM):
        theirs = med.get(peer)
        if ours and theirs:
            verdict = "meets" if ours["p99_ms"] < theirs["p99_ms"] else "misses"
            lines.append(
                f"- **p99 round trip, pinrelay / {peer}: {ours['p99_ms']:.2f} / "
                f"{theirs['p99_ms']:.2f} ms** ({verdict} the target: below Prosody's, with "
                f"every message and receipt fsynced); CPU per chat message "
                f"{ours['cpu_us'] / theirs['cpu_us']:.2f}x {peer}'s."
            )
    for before in (s for s in med if s.startswith(f"{PINRELAY}@")):
        theirs = med[before]
        if ours and theirs:
            lines.append(
                f"- **pinrelay / {before}: p99 {ours['p99_ms']:.2f} / {theirs['p99_ms']:.2f} "
                f"ms, CPU per chat message {ours['cpu_us']:.0f} / {theirs['cpu_us']:.0f} µs** "
                f"({ours['cpu_us'] / theirs['cpu_us']:.2f}x)."
            )
    skipped = {(r.system, r.skipped): None for r in runs if r.skipped}
    lines.extend(f"- {system} not measured: {why}." for system, why in skipped)
    return lines


def report(args: argparse.Namespace, runs: list[Run], logs: Path) -> dict[str, Any]:
    document = {
        "args": {k: v for k, v in vars(args).items() if k != "systems"}
        | {"systems": list(args.systems)},
        "machine": machine(),
        "prosody": prosody_version(),
        "durability": {PROSODY: DURABILITY, PROSODY_MAM: DURABILITY_ARCHIVE},
        "runs": [dataclasses.asdict(r) | {"cpu_us": r.cpu_us} for r in runs],
        "medians": {s: medians([r for r in runs if r.system == s]) for s in systems_of(runs)},
        "findings": findings(runs),
    }
    text = json.dumps(finite(document), indent=1, default=str)
    (logs / "results.json").write_text(text)
    if args.json:
        print(text)
    lines = document["findings"]
    notes = [
        f"- Prosody {document['prosody']}: {DURABILITY}",
        f"- {DURABILITY_ARCHIVE}",
        "- pinrelay stores every chat message and every receipt with fsync (group "
        "commits) before it delivers it: round trip = send, store, deliver, ack, store "
        "the receipt, deliver it.",
        "- The clients differ: slixmpp (Python XMPP, XML parsing) for Prosody, raw "
        "`websockets` links (JSON) for pinrelay, all in this process: see clients µs/msg.",
    ]
    if not args.json:
        console.print()
        print_table("Chat round trip", HEADERS, [row(r) for r in runs])
        for line in [*lines, *notes]:
            console.print(line)
        console.print(f"figures in {logs / 'results.json'}")
    if args.no_results or args.before or not any(r.completed for r in runs):
        return document
    pinned_to = next((r.pinned for r in runs if r.pinned), "")
    body = "\n".join(
        [
            f"{args.pairs} sender/recipient pairs, chat messages at {args.rate:g}/s in total "
            f"for {args.seconds:g} s per run (round-robin over the pairs, open loop), after a "
            f"{args.warmup:g} s warm-up; {args.rounds} round(s) of "
            f"{', '.join(args.systems)}, alternating, each on a fresh server. Round trip: "
            "just before the sender writes the message → the sender reads the recipient's "
            "delivered receipt (same process, same clock). Server CPU: utime+stime from the "
            "first measured message until the server went quiet after the last receipt "
            "(pinrelay with its SQLite writer process), per round trip. Disk: 2,000 "
            "fdatasyncs of a 4 KiB overwrite in the server's data folder just before, from "
            "the CPU the server's main thread is pinned to. "
            f"{machine()['nproc']} CPUs shared by the server and the clients"
            + (
                f"; the server's main thread pinned to {pinned_to.split(' / ')[0]}, the "
                f"clients to {pinned_to.split(' / ')[1]}."
                if pinned_to
                else "."
            ),
            "",
            md_table(HEADERS, [row(r) for r in runs]),
            "",
            *lines,
            *notes,
        ]
    )
    path = write_section(MODULE, "Chat round trip (bench.chat_roundtrip)", body)
    if not args.json:
        console.print(f"[green]wrote[/] {path}")
    return document


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chat_roundtrip",
        description="Chat round trip and CPU per chat message: pinrelay beside Prosody.",
    )
    parser.add_argument("--quick", action="store_true", help="5 s per run, one round")
    parser.add_argument("--pairs", type=int, default=10, help="sender/recipient pairs")
    parser.add_argument("--rate", type=float, default=200.0, help="chat messages/s in total")
    parser.add_argument("--seconds", type=float, default=None, help="per run (default 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="s at the rate, not counted")
    parser.add_argument("--rounds", type=int, default=None, help="default 3 (--quick: 1)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated, of {', '.join(SYSTEMS)} (the order of the first round)",
    )
    parser.add_argument("--window", type=int, default=64, help="pinrelay links' window")
    parser.add_argument(
        "--drain-timeout", type=float, default=30.0, help="s to wait for the last receipts"
    )
    parser.add_argument(
        "--disk-probes", type=int, default=2000, help="fdatasyncs measured before each run"
    )
    parser.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="leave the server's main thread and the clients unpinned",
    )
    parser.add_argument(
        "--server-cpu",
        default="first",
        help='the CPU for the server\'s main thread: a number, "first", or "disk" (the '
        "one that takes the disk's interrupts)",
    )
    parser.add_argument(
        "--writer-cpu",
        choices=("float", "server", "clients"),
        default="float",
        help="pinrelay's SQLite writer process: left to the scheduler, or pinned with "
        "the server's main thread or with the clients",
    )
    parser.add_argument(
        "--before",
        help="a commit: a relay of that commit's tree, alternated with this tree's "
        "(results.json only, RESULTS.md left alone)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print every figure as JSON instead of tables"
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 5.0 if args.quick else 20.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    args.systems = [s for s in str(args.systems).split(",") if s]
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown or not args.systems:
        parser.error(f"--systems: unknown {', '.join(unknown) or '(none)'}")
    if args.before and PINRELAY not in args.systems:
        parser.error("--before compares relays: --systems must include pinrelay")
    if args.server_cpu not in ("first", "disk") and not str(args.server_cpu).isdigit():
        parser.error(f'--server-cpu: a CPU number, "first" or "disk", not {args.server_cpu!r}')
    if args.pairs < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--pairs, --rate and --seconds must be positive")
    return args


async def main(argv: list[str] | None = None) -> list[Run]:
    args = parse_args(argv)
    logs = run_dir("chat_roundtrip")
    if args.json:
        console.quiet = True
    console.print(
        f"[bold]bench.chat_roundtrip[/]: {args.pairs} pairs at {args.rate:g} msgs/s for "
        f"{args.seconds:g} s, {args.rounds} round(s) of {', '.join(args.systems)}; logs in {logs}"
    )
    with contextlib.ExitStack() as stack:
        before = None
        if args.before:
            source = source_state()  # before pin_source's copy is on PYTHONPATH
            stack.callback(shutil.rmtree, pin_source(), ignore_errors=True)
            before = stack.enter_context(before_tree(args.before))
            args.source, args.before_commit = source, before[1]
        runs = await all_runs(args, logs, before)
    report(args, runs, logs)
    return runs


async def all_runs(args: argparse.Namespace, logs: Path, before: Tree | None) -> list[Run]:
    """Every system in turn, round by round (``before``'s relay beside pinrelay)."""
    systems = list(args.systems)
    if before is not None:
        systems.insert(systems.index(PINRELAY) + 1, f"{PINRELAY}@{before[1]}")
    runs: list[Run] = []
    unavailable: set[str] = set()  # relays without chat: not tried again
    for round_no in range(1, args.rounds + 1):
        for system in rotated(systems, round_no):
            if system in unavailable:
                continue
            if args.wait_quiet > 0:
                await wait_machine_quiet(args.wait_quiet)
            try:
                run = await run_one(args, logs, system, round_no, before)
            except ChatUnavailable as exc:
                unavailable.add(system)
                console.print(f"[yellow]{system} #{round_no}: not measured: {exc}[/]")
                runs.append(Run(system, round_no, args.rate, args.pairs, skipped=str(exc)))
                continue
            except ProsodyMissing as exc:
                console.print(f"[red]{exc}[/]")
                raise SystemExit(2) from None
            runs.append(run)
            console.print(
                f"{system} #{round_no}: {run.completed:,}/{run.sent:,} round trips, p50 "
                f"{ms(run.rtt_ms, 'p50')} ms, p99 {ms(run.rtt_ms, 'p99')} ms, "
                f"{run.cpu_us:.0f} µs server CPU per chat message"
            )
    return runs


if __name__ == "__main__":
    # Ctrl-C or SIGTERM: every ``finally`` has stopped its server by then.
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        run_main(main())
