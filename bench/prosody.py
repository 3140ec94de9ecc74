"""Prosody (Debian's package) as a benchmark peer, and a slixmpp chat driver for it.

- :class:`ProsodyProcess`: a Prosody of our own, never the system service: its own
  config file, data folder and pid file in a temporary folder, c2s on a free
  127.0.0.1 port without TLS, s2s off; users registered with ``prosodyctl
  register`` before it starts; started in its own session and stopped by its pid
  (SIGTERM, then SIGKILL), like every process the benchmarks start.
- :class:`SlixmppChat`: N sender/recipient pairs of slixmpp clients in this
  process.  A sender sends ``<message type='chat'>`` with ``<request
  xmlns='urn:xmpp:receipts'/>``; the recipient's handler (its "application")
  answers with ``<received xmlns='urn:xmpp:receipts' id='…'/>`` (XEP-0184: receipts
  are client to client, the server only routes them); the sender takes the round
  trip when the receipt arrives (:class:`ChatTally`).

Durability, read from Prosody 0.12's source (``/usr/lib/prosody``):

- **internal storage** (``util/datamanager.lua``, the default): offline messages are
  appended with ``pposix.atomic_append`` (a write, no fsync); whole stores are
  rewritten to a scratch file, closed and renamed, without fsync either.  Nothing
  is fsynced: a power loss may lose what it had "stored".
- **sql storage on SQLite** (``mod_storage_sql`` through LuaDBI, what we use): each
  store operation is one transaction, committed with SQLite's defaults (rollback
  journal, ``synchronous=FULL``; Prosody sets no PRAGMA but ``encoding``), so each
  offline message is fsynced (journal and database file) before Prosody goes on;
  the Lua thread blocks meanwhile (Prosody has one thread).  strace of Prosody
  while a sender wrote to an offline user: 4 fdatasyncs per message; on internal
  storage: writes and a rename, no fsync.
- Either way, a message to a recipient who is **online** is routed from memory
  and written nowhere: mod_offline stores only what it cannot deliver.  So in a
  round trip between online users Prosody does no disk write at all, where
  pinrelay stores (and fsyncs) every message and every receipt.  With
  ``archive=True`` mod_mam (XEP-0313) is loaded too: it archives every chat
  message and every receipt (``should_store``: "If it's important enough to ask for
  a receipt then it's important enough to archive and the same applies to the
  receipt") in the sender's and in the recipient's archive, each a committed SQLite
  transaction before the stanza is routed on (strace: 16 fdatasyncs per message and
  its receipt, none without mod_mam): that is Prosody with every message and receipt
  fsync-durable, the like-for-like peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slixmpp import ClientXMPP
from slixmpp.stanza import Message

from bench.common import cpu_seconds
from pinrelay.testing.ports import LOOPBACK, free_port
from pinrelay.testing.procs import spawn, terminate

#: The virtual host every benchmark user lives on (a name, never resolved).
XMPP_HOST = "bench.localhost"
#: What the benchmark reports about Prosody's durability (see the module docstring).
DURABILITY = (
    "Prosody 0.12 on SQLite (mod_storage_sql, LuaDBI): each stored item is one SQLite "
    "transaction with SQLite's defaults (rollback journal, synchronous=FULL), so an "
    "offline message is fsynced before Prosody goes on (strace: 4 fdatasyncs per offline "
    "message); its default internal storage writes without any fsync. A message to an "
    "online recipient, as in this round trip, is written nowhere (strace: no write, no "
    "fsync): mod_offline stores only what it cannot deliver."
)
DURABILITY_ARCHIVE = (
    "With mod_mam (XEP-0313) on SQLite, every chat message and every receipt is archived "
    "for the sender and for the recipient before it is routed on, each a committed SQLite "
    "transaction (strace: 16 fdatasyncs per message and its receipt)."
)


class ProsodyMissing(RuntimeError):
    """Prosody is not installed (``make bench`` installs it)."""


def _find(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else "")
    if not found:
        raise ProsodyMissing(
            f"{name} is not installed: apt-get install -y --no-install-recommends "
            "prosody lua-dbi-sqlite3 (make bench-peers does)"
        )
    return found


def prosody_version() -> str:
    """Debian's package version, e.g. ``0.12.3-1+deb12u1`` (``?`` if unknown)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "prosody"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.stdout.strip() or "?"


def _lua(value: str) -> str:
    """A Lua string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ProsodyProcess:
    """Prosody with its own config in a fresh temporary folder, on a free loopback port.

    ``storage``: ``"sql"`` (SQLite: fsynced, see the module docstring) or
    ``"internal"`` (flat files, never fsynced).  ``archive``: also load mod_mam, which
    stores every message and receipt.  Call :meth:`register` before :meth:`start`.
    """

    def __init__(
        self,
        logs: Path,
        *,
        storage: str = "sql",
        archive: bool = False,
        name: str = "prosody",
        host: str = XMPP_HOST,
    ) -> None:
        if storage not in ("sql", "internal"):
            raise ValueError(f"storage: sql or internal, not {storage!r}")
        self.logs = logs
        self.storage = storage
        self.archive = archive
        self.host = host
        self.dir = Path(tempfile.mkdtemp(prefix="pinrelay-bench-prosody-"))
        self.data = self.dir / "data"
        self.config_path = self.dir / "prosody.cfg.lua"
        self.log_path = logs / f"{name}.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.data.mkdir(mode=0o700)
        (self.dir / "certs").mkdir()
        self.config_path.write_text(self.config())

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def config(self) -> str:
        """The whole config file (Lua)."""
        modules = ["roster", "saslauth", "disco", "ping", "offline"]
        if self.archive:
            modules.append("mam")
        storage = (
            'storage = "sql"\nsql = { driver = "SQLite3", database = "prosody.sqlite" }\n'
            if self.storage == "sql"
            else 'storage = "internal"\n'
        )
        return (
            "-- Written by bench.prosody for one benchmark run; not the system's Prosody.\n"
            # As root Prosody would switch to user 'prosody', who cannot write here.
            "run_as_root = true\n"
            f"pidfile = {_lua(str(self.dir / 'prosody.pid'))}\n"
            f"data_path = {_lua(str(self.data))}\n"
            f"certificates = {_lua(str(self.dir / 'certs'))}\n"
            'log = { { levels = { min = "info" }, to = "console" } }\n'
            f"interfaces = {{ {_lua(LOOPBACK)} }}\n"
            f"c2s_ports = {{ {self.port} }}\n"
            "c2s_direct_tls_ports = { }\n"
            # Loopback only: no TLS, so plain SASL (SCRAM is offered and used) is allowed.
            "c2s_require_encryption = false\n"
            "allow_unencrypted_plain_auth = true\n"
            'authentication = "internal_hashed"\n'
            f"modules_enabled = {{ {', '.join(_lua(m) for m in modules)} }}\n"
            'modules_disabled = { "s2s", "s2s_auth_certs" }\n'
            + storage
            + (
                # Archive every message (XEP-0313's default policy "always"); keep it.
                'default_archive_policy = true\narchive_expires_after = "never"\n'
                if self.archive
                else ""
            )
            + f"VirtualHost {_lua(self.host)}\n"
        )

    def _ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_find("prosodyctl"), "--config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.dir,
        )

    def register(self, users: Sequence[tuple[str, str]]) -> None:
        """``prosodyctl register <user> <host> <password>`` for each (user, password),
        one after another (about 60 ms each), before the server starts."""
        for user, password in users:
            done = self._ctl("register", user, self.host, password)
            if done.returncode != 0:
                raise RuntimeError(
                    f"prosodyctl register {user}: exit {done.returncode}\n"
                    f"{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )

    def launch(self) -> subprocess.Popen[bytes]:
        """Start ``prosody -F`` (foreground) in its own session; no wait."""
        self.proc = spawn(
            [_find("prosody"), "-F", "--config", str(self.config_path)],
            self.log_path,
            cwd=self.dir,
            die_with_parent=True,
        )
        return self.proc

    async def start(self, timeout: float = 20.0) -> None:
        """Launch, and wait until its c2s port accepts connections."""
        proc = self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"prosody exited with {proc.returncode}:\n{self.output()}")
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        raise RuntimeError(f"prosody not listening after {timeout} s:\n{self.output()}")

    def output(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by pid (SIGKILL after ``timeout``); remove its folder."""
        if self.proc is not None:
            terminate(self.proc, timeout)
        shutil.rmtree(self.dir, ignore_errors=True)

    def cpu(self) -> float:
        """utime + stime of the Prosody process (one Lua thread), in seconds."""
        return cpu_seconds(self.pid)


# --- the round-trip tally, shared with pinrelay's side ------------------------------
@dataclass
class ChatTally:
    """Send times by key, and round trips as the receipts come back.

    ``measuring`` off (warm-up): receipts are matched but not recorded.
    """

    measuring: bool = False
    sent: int = 0
    rtts: list[float] = field(default_factory=list)
    #: Receipts that matched no message in flight (duplicates, or a bug).
    unmatched: int = 0
    errors: int = 0
    #: Send → the server's durable acceptance (pinrelay's ``sent`` frame), if it has one.
    accepts: list[float] = field(default_factory=list)
    #: perf_counter of the last measured receipt.
    last_done: float = 0.0
    pending: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def start(self, key: str) -> None:
        """A message goes out now (take the time just before it is written)."""
        self.pending[key] = (time.perf_counter(), self.measuring)
        if self.measuring:
            self.sent += 1

    def done(self, key: str, at: float | None = None) -> None:
        """Its receipt arrived (at ``at``, perf_counter, or now)."""
        now = time.perf_counter() if at is None else at
        entry = self.pending.pop(key, None)
        if entry is None:
            self.unmatched += 1
            return
        started, measured = entry
        if measured:
            self.rtts.append(now - started)
            self.last_done = max(self.last_done, now)

    def accepted(self, key: str) -> None:
        """The server says it has stored the message (pinrelay's ``sent``)."""
        entry = self.pending.get(key)
        if entry is not None and entry[1]:
            self.accepts.append(time.perf_counter() - entry[0])

    @property
    def completed(self) -> int:
        return len(self.rtts)

    def reset(self) -> None:
        self.sent = 0
        self.rtts.clear()
        self.unmatched = 0
        self.errors = 0
        self.accepts.clear()
        self.last_done = 0.0


# --- slixmpp -------------------------------------------------------------------------
class _Client(ClientXMPP):
    """One slixmpp client: plain c2s to our loopback Prosody (no DNS, no TLS)."""

    def __init__(self, jid: str, password: str) -> None:
        # Loopback without TLS: slixmpp refuses SCRAM on a plain stream unless told.
        super().__init__(
            jid, password, plugin_config={"feature_mechanisms": {"unencrypted_scram": True}}
        )
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        self.use_ipv6 = False
        self.register_plugin("xep_0030")
        # Stanza classes only: our handlers send and read receipts themselves.
        self.register_plugin("xep_0184", {"auto_ack": False, "auto_request": False})
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.add_event_handler("session_start", self._session_start)
        self.add_event_handler("failed_all_auth", self._failed)
        self.add_event_handler("disconnected", self._failed)

    def _session_start(self, _event: Any) -> None:
        # Available presence: a message to the bare JID is routed to this resource
        # instead of offline storage.
        self.send_presence()
        if not self.ready.done():
            self.ready.set_result(None)

    def _failed(self, event: Any) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"{self.boundjid.bare}: {event!r}"))


class SlixmppChat:
    """``pairs`` sender/recipient pairs on one Prosody, in this process's event loop.

    Users ``s<i>`` send to ``r<i>`` (both with password ``pw-<name>``):
    :meth:`users` lists them for :meth:`ProsodyProcess.register`.
    """

    def __init__(self, port: int, pairs: int, *, host: str = XMPP_HOST) -> None:
        self.port = port
        self.pairs = pairs
        self.host = host
        self.tally = ChatTally()
        self.senders: list[_Client] = []
        self.recipients: list[_Client] = []
        self._next_id = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @staticmethod
    def users(pairs: int) -> list[tuple[str, str]]:
        names = [f"{side}{i}" for i in range(pairs) for side in ("s", "r")]
        return [(name, f"pw-{name}") for name in names]

    async def connect(self, timeout: float = 30.0) -> None:
        """Log every client in (SCRAM over plain c2s) and send initial presence."""
        for i in range(self.pairs):
            sender = _Client(f"s{i}@{self.host}/bench", f"pw-s{i}")
            recipient = _Client(f"r{i}@{self.host}/bench", f"pw-r{i}")
            sender.add_event_handler("receipt_received", self._on_receipt)
            recipient.add_event_handler("message", self._make_application(recipient))
            self.senders.append(sender)
            self.recipients.append(recipient)
        clients = [*self.senders, *self.recipients]
        before = asyncio.all_tasks()
        for client in clients:
            client.connect(LOOPBACK, self.port)
        # Each client's connect() starts a task that runs its send queue for as long as
        # the client lives; close() ends them (else "Task was destroyed but it is pending").
        self._tasks = asyncio.all_tasks() - before
        _, waiting = await asyncio.wait([c.ready for c in clients], timeout=timeout)
        if waiting:
            raise TimeoutError(f"{len(waiting)} of {len(clients)} clients not logged in")
        for client in clients:
            client.ready.result()  # a failed login raises here

    def _make_application(self, client: _Client) -> Callable[[Message], None]:
        def application(msg: Message) -> None:
            """The recipient's application: it got the message, so it says so
            (XEP-0184 §5: a receipt only for a message that asked for one)."""
            if msg["type"] not in ("chat", "normal") or not msg["request_receipt"]:
                return
            receipt = client.make_message(mto=msg["from"], mtype="chat")
            receipt["id"] = "r" + str(msg["id"])
            receipt["receipt"] = msg["id"]
            receipt.send()

        return application

    def _on_receipt(self, msg: Message) -> None:
        self.tally.done(str(msg["receipt"]))

    def send(self, index: int) -> None:
        """Pair ``index % pairs`` sends one chat message asking for a receipt."""
        pair = index % self.pairs
        sender = self.senders[pair]
        self._next_id += 1
        key = f"m{self._next_id}"
        msg = sender.make_message(
            mto=f"r{pair}@{self.host}", mbody=f"chat message {self._next_id}", mtype="chat"
        )
        msg["id"] = key
        msg["request_receipt"] = True
        self.tally.start(key)
        msg.send()

    async def close(self, timeout: float = 5.0) -> None:
        clients = [*self.senders, *self.recipients]
        waits = [c.disconnect(wait=0.5) for c in clients]
        _, late = await asyncio.wait(waits, timeout=timeout)
        for c in clients:
            with contextlib.suppress(Exception):
                c.abort()
        for task in [*late, *self._tasks]:
            task.cancel()
        await asyncio.gather(*late, *self._tasks, return_exceptions=True)


def disk_irq_cpu() -> int | None:
    """The CPU that takes most of the block devices' interrupts (virtio ``req``
    queues, NVMe, SCSI), from /proc/interrupts; None if none is named."""
    with contextlib.suppress(OSError):
        lines = Path("/proc/interrupts").read_text().splitlines()
        ncpu = len(lines[0].split())
        counts = [0] * ncpu
        for line in lines[1:]:
            if not any(tag in line for tag in ("-req.", "nvme", "ahci", "virtio_blk")):
                continue
            fields = line.split()[1 : 1 + ncpu]
            for i, value in enumerate(fields):
                if value.isdigit():
                    counts[i] += int(value)
        if any(counts):
            return max(range(ncpu), key=counts.__getitem__)
    return None


def chosen_cpu(server_cpu: int | None = None) -> int | None:
    """The CPU :func:`pin_cpus` puts the server on (None: one CPU, no pinning)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return cpus[0] if server_cpu is None or server_cpu not in cpus else server_cpu


def pin_cpus(server_pid: int, server_cpu: int | None = None) -> str:
    """The server's main thread on one CPU (``server_cpu``, default the first), this
    process (the clients) on the others (as bench.latency pins the relay's loop and
    its load generators)."""
    cpus = sorted(os.sched_getaffinity(0))
    chosen = chosen_cpu(server_cpu)
    if chosen is None:
        return ""
    first, others = {chosen}, set(cpus) - {chosen}
    os.sched_setaffinity(server_pid, first)
    os.sched_setaffinity(0, others)
    rest = ",".join(map(str, sorted(others)))
    return f"CPU {chosen} / CPU{'s' if len(others) > 1 else ''} {rest}"
