"""What every benchmark shares: the machine, /proc figures, processes, RESULTS.md.

Nothing here measures; it starts and stops what the benchmarks measure:

- :class:`RelayProcess`: ``pinrelay serve`` as a subprocess on free loopback ports,
  with its own data folder and ``PINRELAY_ADMIN_KEY``;
- :class:`Child`: a load generator process that talks JSON lines on stdin/stdout
  (bench/linkgen.py, bench/mqttgen.py);
- :func:`cpu_seconds` and :func:`rss_kb`: utime+stime and VmRSS from /proc;
- :func:`write_section`: rewrites one benchmark's section of bench/RESULTS.md.

Every process started here is stopped by its pid (SIGTERM, then SIGKILL after a
timeout); nothing is ever killed by name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from pinrelay.testing.ports import free_port
from pinrelay.testing.procs import spawn, terminate
from pinrelay.testing.relayproc import RelayProc

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS = BENCH_DIR / "RESULTS.md"
#: Logs of the last runs (git-ignored).
OUT_DIR = BENCH_DIR / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"

#: Wide enough for the result tables when stdout is not a terminal (rich would use 80).
console = Console(highlight=False, width=shutil.get_terminal_size((150, 40)).columns)

RESULTS_HEADER = """# Benchmark results

Measured figures only: each section is rewritten by the benchmark named in its
heading (`python -m bench.<name>`; `make bench` runs them all with their defaults,
`python -m bench.run_all --quick` the smaller runs). Each section says when, on what
machine, with which command and on which source (commit, plus a hash of uncommitted
changes in src/) it was measured.

CPU figures are the measured process's own utime+stime from /proc, so other load on
the machine does not add to them, but it does slow wall times and latencies: each
run reports the CPU that processes other than the benchmark's used meanwhile
("other processes, cores"), and waits up to `--wait-quiet` seconds for an idle
machine before it starts.
"""


# --- the machine and /proc -------------------------------------------------------
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ram_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def machine() -> dict[str, str]:
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "RAM": f"{ram_gib():.1f} GiB",
        "kernel": os.uname().release,
        "python": platform.python_version(),
        "CPU": cpu_model(),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields 14 and 15 of proc(5); fields[0] here is field 3 (state).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (a relay's store writer, say)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out.extend(int(x) for x in (task / "children").read_text().split())
    return out


def tree_cpu_seconds(pid: int) -> float:
    """:func:`cpu_seconds` of a process and of its children still running."""
    total = cpu_seconds(pid)
    for child in child_pids(pid):
        with contextlib.suppress(OSError, ValueError):
            total += cpu_seconds(child)
    return total


def system_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class OtherLoad:
    """How much CPU processes other than ours used during a measurement (in cores).

    The machine may be shared (other test runs): their load shows up here.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = [*pids, *(c for p in pids for c in child_pids(p)), os.getpid()]
        self._t0 = time.monotonic()
        self._busy0 = system_busy_seconds()
        self._ours0 = self._ours()

    def _ours(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total

    def cores(self) -> float:
        wall = time.monotonic() - self._t0
        busy = system_busy_seconds() - self._busy0
        ours = self._ours() - self._ours0
        return max(0.0, busy - ours) / wall if wall > 0 else float("nan")


async def wait_machine_quiet(max_wait: float, below: float = 0.25, span: float = 5.0) -> float:
    """Wait (up to ``max_wait`` s) until the machine as a whole uses < ``below`` cores
    for ``span`` seconds; returns the load (cores) seen last.  Benchmarks on a shared
    machine measure its other tenants too: each run reports that load."""
    deadline = time.monotonic() + max_wait
    load = float("nan")
    while True:
        t0, busy0 = time.monotonic(), system_busy_seconds()
        await asyncio.sleep(span)
        load = (system_busy_seconds() - busy0) / (time.monotonic() - t0)
        if load < below or time.monotonic() >= deadline:
            break
        console.print(f"[yellow]machine busy ({load:.2f} cores used by others); waiting[/]")
    if load >= below:
        console.print(f"[yellow]measuring on a busy machine ({load:.2f} cores in use)[/]")
    return load


def thread_cpu(pid: int) -> dict[int, float]:
    """utime + stime per thread id of a process, in seconds (the main thread's id is pid)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def rss_kb(pid: int) -> int:
    """Resident set size (VmRSS) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def wait_quiet(
    pid: int, *, interval: float = 0.2, busy_below: float = 0.03, timeout: float = 10.0
) -> float:
    """Wait until ``pid`` uses less than ``busy_below`` of a core over ``interval``.

    Returns its CPU seconds then: work queued behind the last message (acks,
    group commits) is counted, the idle time after it hardly.
    """
    deadline = time.monotonic() + timeout
    last = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(interval)
        now = tree_cpu_seconds(pid)
        if now - last < busy_below * interval:
            return now
        last = now
    return last


def source_addresses(count: int, first: int = 2) -> list[str]:
    """127.0.0.2, 127.0.0.3, ...: the whole 127.0.0.0/8 is loopback."""
    return [f"127.0.{(first + i) // 256}.{(first + i) % 256}" for i in range(count)]


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (p in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# --- processes -------------------------------------------------------------------
def stop_popen(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process (by pid), then SIGKILL if it has not exited in ``timeout``."""
    terminate(proc, timeout)


def run_dir(name: str) -> Path:
    """A fresh folder for one run's logs: bench/out/<name>-<UTC time>."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_DIR / f"{name}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def pinrelay_command() -> list[str]:
    exe = Path(sys.executable).with_name("pinrelay")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("pinrelay")
    if found:
        return [found]
    return [sys.executable, "-m", "pinrelay.cli"]


@contextlib.contextmanager
def pythonpath(src: Path | None) -> Iterator[None]:
    """PYTHONPATH is ``src`` meanwhile (for the processes started then), if given."""
    if src is None:
        yield
        return
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(src)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


class RelayProcess:
    """``pinrelay serve`` on free loopback ports, in a fresh (or given) data folder:
    a :class:`pinrelay.testing.relayproc.RelayProc` started by :meth:`launch`."""

    def __init__(
        self,
        logs: Path,
        *,
        heartbeat: float = 30.0,
        max_links: int = 0,
        data: Path | None = None,
        name: str = "relay",
        extra: Sequence[str] = (),
    ) -> None:
        self.logs = logs
        #: More ``serve`` options.
        self.extra = list(extra)
        self.heartbeat = heartbeat
        self.max_links = max_links
        self._own_data = data is None
        self.data = data or Path(tempfile.mkdtemp(prefix="pinrelay-bench-"))
        self.name = name
        self.admin_key = "pra_bench_" + secrets.token_urlsafe(24)
        self.port = 0
        self.link_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.relay: RelayProc | None = None
        self.log_path = logs / f"{name}.log"
        #: Where the relay imports ``pinrelay`` from (its PYTHONPATH), if not from ours.
        self.src: Path | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def options(self) -> list[str]:
        """``serve`` options beyond the data folder, ports and log level."""
        options = ["--host", LOOPBACK, "--heartbeat", f"{self.heartbeat:g}"]
        if self.max_links:
            options += ["--max-links", str(self.max_links)]
        return options + self.extra

    def launch(self) -> subprocess.Popen[bytes]:
        """Start it on new free ports (in its own session); no wait."""
        self.relay = RelayProc(
            self.data,
            admin_key=self.admin_key,
            extra=self.options,
            log=self.log_path,
            command=pinrelay_command(),
        )
        self.port, self.link_port = self.relay.port, self.relay.link_port
        with pythonpath(self.src):
            self.proc = self.relay.launch()
        return self.proc

    async def start(self, timeout: float = 30.0) -> None:
        """Launch, and wait until GET /readyz answers 200."""
        self.launch()
        assert self.relay is not None
        await self.relay.wait_ready_async(timeout)

    def stop(self, timeout: float = 20.0) -> None:
        if self.relay is not None:
            self.relay.stop(timeout)

    def remove_data(self) -> None:
        if self._own_data:
            shutil.rmtree(self.data, ignore_errors=True)

    def cpu(self) -> float:
        """CPU seconds of the relay and of its children (the SQLite store's writer)."""
        return tree_cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_kb(self.pid)


class MosquittoProcess:
    """Mosquitto 2 with its own config file: loopback listener, persistence in a tmp dir."""

    def __init__(self, logs: Path, *, max_inflight: int = 20, max_queued: int = 1000) -> None:
        self.logs = logs
        self.dir = Path(tempfile.mkdtemp(prefix="pinrelay-bench-mosquitto-"))
        self.port = 0
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = logs / "mosquitto.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @staticmethod
    def executable() -> str:
        found = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
        )
        if found is None:
            raise RuntimeError(
                "mosquitto is not installed: apt-get install -y mosquitto (make bench-peers does)"
            )
        return found

    def config(self) -> str:
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        return (
            f"listener {self.port} {LOOPBACK}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            f"max_inflight_messages {self.max_inflight}\n"
            f"max_queued_messages {self.max_queued}\n"
            # As root mosquitto would switch to user 'mosquitto', who cannot write here.
            f"user {user}\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )

    def launch(self) -> subprocess.Popen[bytes]:
        self.port = free_port()
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.config())
        self.proc = spawn([self.executable(), "-c", str(conf)], self.log_path)
        return self.proc

    async def start(self, timeout: float = 15.0) -> None:
        """Launch, and wait until its port accepts connections."""
        self.proc = self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited:\n{tail(self.log_path)}")
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, self.port), 1):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"mosquitto not listening after {timeout} s")

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None:
            stop_popen(self.proc, timeout)
        shutil.rmtree(self.dir, ignore_errors=True)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)


async def create_devices(
    relay: RelayProcess, count: int, *, concurrency: int = 50, progress: Progress | None = None
) -> list[tuple[str, str]]:
    """Create ``count`` devices with POST /v1/devices; returns (pin, token) pairs.

    ``concurrency`` workers, each with its own httpx.AsyncClient and keep-alive
    connection: one shared pool of 50 connections cost httpx ~5 ms of client CPU
    per request here (~2 ms this way), ten times what the relay spends on it.
    """
    created: list[tuple[str, str]] = []
    task = progress.add_task("create devices", total=count) if progress else None
    next_index = 0
    headers = {"Authorization": f"Bearer {relay.admin_key}"}

    async def worker() -> None:
        nonlocal next_index
        async with httpx.AsyncClient(base_url=relay.url, headers=headers, timeout=30.0) as http:
            while next_index < count:
                next_index += 1
                for attempt in range(3):
                    response = await http.post("/v1/devices", json={})
                    if response.status_code == 201:
                        break
                    if attempt == 2:
                        raise RuntimeError(f"creating a device: {response.status_code}")
                body = response.json()
                created.append((body["pin"], body["token"]))
                if progress is not None and task is not None:
                    progress.advance(task)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return created


class ChildExited(RuntimeError):
    pass


class Child:
    """A load generator process speaking JSON lines (events out, commands in)."""

    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = logs / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.latest: dict[str, dict[str, Any]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._eof = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._log: IO[bytes] | None = None
        self.on_event: Callable[[Child, dict[str, Any]], None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            cwd=str(ROOT),
            limit=16 * 1024 * 1024,
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    event: dict[str, Any] = json.loads(line)
                except ValueError:
                    continue
                name = str(event.get("ev"))
                self.latest[name] = event
                self._event(name).set()
                if self.on_event is not None:
                    self.on_event(self, event)
        finally:
            self._eof.set()

    def _event(self, name: str) -> asyncio.Event:
        event = self._events.get(name)
        if event is None:
            event = self._events[name] = asyncio.Event()
        return event

    def forget(self, name: str) -> None:
        self.latest.pop(name, None)
        self._event(name).clear()

    async def expect(self, name: str, timeout: float) -> dict[str, Any]:
        """Wait for the event ``name`` (or its latest occurrence if already seen)."""
        if name in self.latest:
            return self.latest[name]
        waiter = asyncio.ensure_future(self._event(name).wait())
        eof = asyncio.ensure_future(self._eof.wait())
        try:
            await asyncio.wait({waiter, eof}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            eof.cancel()
        if name in self.latest:
            return self.latest[name]
        if self._eof.is_set():
            raise ChildExited(f"{self.name} exited:\n{tail(self.log_path)}")
        raise TimeoutError(f"{self.name}: no '{name}' within {timeout:g} s")

    async def send(self, command: str) -> None:
        if self.proc is None or self.proc.stdin is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ConnectionError):
            self.proc.stdin.write(command.encode() + b"\n")
            await self.proc.stdin.drain()

    async def request(self, command: str, reply: str, timeout: float = 30.0) -> dict[str, Any]:
        self.forget(reply)
        await self.send(command)
        return await self.expect(reply, timeout)

    async def stop(self, timeout: float = 15.0) -> None:
        """Ask it to quit; SIGTERM by pid after ``timeout``, SIGKILL 5 s later."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            await self.send("quit")
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 5.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, 5.0)
        if self._log is not None:
            self._log.close()
            self._log = None


async def stop_all(children: Sequence[Child], timeout: float = 15.0) -> None:
    await asyncio.gather(*(c.stop(timeout) for c in children), return_exceptions=True)


T = TypeVar("T")


def run_main(main: Coroutine[Any, Any, T], *, fast_loop: bool = False) -> T:
    """asyncio.run, with SIGTERM cancelling the main task so every ``finally`` runs.

    ``fast_loop``: on uvloop, for a bench whose own process generates load (its CPU
    is taken from the relay being measured).
    """

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main

    if fast_loop:
        import uvloop

        return uvloop.run(guarded())
    return asyncio.run(guarded())


def write_credentials(path: Path, creds: Sequence[tuple[str, str]]) -> Path:
    path.write_text(json.dumps([list(c) for c in creds]))
    path.chmod(0o600)
    return path


def module_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def linkgen_argv(
    link_port: int,
    creds: Path,
    sources: str,
    mode: str,
    *extra: str,
    max_seconds: int = 3600,
) -> list[str]:
    """The command line of one bench.linkgen process (``extra``: its other options)."""
    return module_argv(
        "bench.linkgen",
        "--port",
        str(link_port),
        "--creds",
        str(creds),
        "--sources",
        sources,
        "--mode",
        mode,
        *extra,
        "--max-seconds",
        str(max_seconds),
    )


# --- progress and tables ---------------------------------------------------------
def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


@contextlib.contextmanager
def timed_phase(description: str, seconds: float) -> Iterator[Callable[[float], None]]:
    """A progress bar for a phase that lasts ``seconds``; call the yielded fn with elapsed."""
    with progress() as bar:
        task = bar.add_task(description, total=round(seconds))

        def update(elapsed: float) -> None:
            bar.update(task, completed=min(round(elapsed), round(seconds)))

        yield update
        bar.update(task, completed=round(seconds))


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    table = Table(title=title, title_justify="left")
    for h in headers:
        table.add_column(h, justify="right" if h != headers[0] else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(headers) - 1)
    return "\n".join([line(headers), line(align), *(line(r) for r in rows)])


# --- RESULTS.md ------------------------------------------------------------------
def source_state() -> str:
    """The commit measured, and a hash of any uncommitted change under src/."""

    def git(*args: str) -> bytes:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").decode().strip()
        if not git("status", "--porcelain", "--", "src"):
            return f"`{head}`"
        digest = hashlib.sha256(git("diff", "HEAD", "--", "src"))
        for name in sorted(git("ls-files", "--others", "--exclude-standard", "src").split()):
            digest.update(name + b"\0" + (ROOT / name.decode()).read_bytes())
        return f"`{head}` + uncommitted changes in src/ (sha256 {digest.hexdigest()[:12]})"
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout?)"


#: src/ as it was when the benchmark started (relays started later run what is there then).
SOURCE_AT_START = source_state()


def command_line(module: str) -> str:
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


def run_header(module: str) -> str:
    m = machine()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    source = source_state()
    if source != SOURCE_AT_START:
        source = f"{SOURCE_AT_START} at the start, {source} at the end (src/ changed meanwhile)"
    return (
        f"- Date: {now}\n"
        f"- Machine: {m['nproc']} CPUs ({m['CPU']}), {m['RAM']} RAM, "
        f"Linux {m['kernel']}, Python {m['python']}\n"
        f"- Command: `{command_line(module)}`\n"
        f"- Source: {source}\n"
    )


def write_section(module: str, title: str, body: str, key: str | None = None) -> Path:
    """Rewrite the section of bench/RESULTS.md that belongs to ``module`` (``key``:
    one of several sections of the same benchmark, e.g. one per store)."""
    begin = f"<!-- BEGIN {key or module} -->"
    end = f"<!-- END {key or module} -->"
    section = f"{begin}\n## {title}\n\n{run_header(module)}\n{body.strip()}\n{end}\n"
    text = RESULTS.read_text() if RESULTS.exists() else RESULTS_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
    return RESULTS


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: --wait-quiet and --no-results."""
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        help="first wait up to this many s for the machine to be idle (0: don't)",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")


async def wait_if_asked(args: argparse.Namespace) -> None:
    """Wait for an idle machine first if ``--wait-quiet`` asks to (:func:`add_common_args`)."""
    if args.wait_quiet > 0:
        await wait_machine_quiet(args.wait_quiet)


def publish(args: argparse.Namespace, module: str, title: str, body: str) -> None:
    """``body`` as ``module``'s section of RESULTS.md, unless ``--no-results``."""
    if not args.no_results:
        path = write_section(module, title, body)
        console.print(f"wrote {path}")
