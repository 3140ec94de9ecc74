"""Where a pinrelay chat round trip spends its time, seen from the clients.

Every timestamp is this process's ``perf_counter``, taken where the bench's links
read or write (:class:`bench.chat_roundtrip.PinrelayChat`):

- ``sent``: send written → the sender reads ``sent`` (stored and fsynced);
- ``msg``: send written → the recipient reads the ``msg`` (stored, then handed to
  its link);
- ``turn``: the recipient reads the ``msg`` → its ack is written (the client);
- ``back``: the ack is written → the sender reads the delivered receipt (the relay
  handles the ack, stores the receipt with fsync, hands it to the sender's link).

``msg + turn + back`` is the round trip.  For the slowest 1 % of round trips the
stages' medians say which part made them slow; :class:`LoopLag` says whether the
clients' own event loop was late at those moments (it shares one CPU with every
link's reads and writes).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import child_pids

STAGES = ("sent", "msg", "turn", "back")
#: Index of each timestamp in a record.
_START, _SENT, _MSG, _ACK, _RECEIPT = range(5)


@dataclass
class StageRecorder:
    """Five timestamps per chat message (NaN until seen), keyed by client_id."""

    stamps: dict[str, list[float]] = field(default_factory=dict)

    def _mark(self, key: str, slot: int, at: float | None = None) -> None:
        record = self.stamps.get(key)
        if record is not None:
            record[slot] = time.perf_counter() if at is None else at

    def start(self, key: str) -> None:
        self.stamps[key] = [time.perf_counter(), *([float("nan")] * 4)]

    def sent(self, key: str, at: float) -> None:
        self._mark(key, _SENT, at)

    def msg(self, key: str, at: float) -> None:
        self._mark(key, _MSG, at)

    def acked(self, key: str) -> None:
        self._mark(key, _ACK)

    def receipt(self, key: str, at: float) -> None:
        self._mark(key, _RECEIPT, at)

    def clear(self) -> None:
        self.stamps.clear()

    def rows(self) -> list[tuple[float, dict[str, float]]]:
        """(round trip, {stage: seconds, "start", "end"}) for every complete record."""
        out = []
        for s in self.stamps.values():
            if any(v != v for v in s):  # a NaN: not complete
                continue
            stages = {
                "sent": s[_SENT] - s[_START],
                "msg": s[_MSG] - s[_START],
                "turn": s[_ACK] - s[_MSG],
                "back": s[_RECEIPT] - s[_ACK],
                "start": s[_START],
                "end": s[_RECEIPT],
            }
            out.append((s[_RECEIPT] - s[_START], stages))
        return out


def breakdown(
    recorder: StageRecorder, lag: LoopLag | None = None, tail: float = 0.01
) -> dict[str, dict[str, float]]:
    """Median of each stage (ms) over all round trips and over the slowest ``tail``;
    with ``lag``, the median of the clients' worst loop lag during each (ms)."""
    rows = sorted(recorder.rows(), key=lambda r: r[0])
    if not rows:
        return {}
    slow = rows[max(0, len(rows) - max(1, round(len(rows) * tail))) :]

    def medians(part: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
        out = {"rtt": statistics.median(r for r, _ in part) * 1000, "n": float(len(part))}
        for stage in STAGES:
            out[stage] = statistics.median(st[stage] for _, st in part) * 1000
        if lag is not None:
            out["client_lag"] = (
                statistics.median(lag.worst_between(st["start"], st["end"]) for _, st in part)
                * 1000
            )
        return out

    # Which stage was the largest share of each slow round trip.
    dominant: dict[str, float] = dict.fromkeys(("msg", "turn", "back"), 0.0)
    for _, st in slow:
        dominant[max(("msg", "turn", "back"), key=lambda k: st[k])] += 1
    return {
        "all": medians(rows),
        "slowest": medians(slow),
        "dominant": {k: v / len(slow) for k, v in dominant.items()},
    }


class LoopLag:
    """How late this process's event loop wakes a 1 ms timer, sampled all along."""

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.period)
            after = time.perf_counter()
            self.samples.append((after, after - before - self.period))

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def worst_between(self, start: float, end: float) -> float:
        """The largest lag (s) of a wake-up in [start, end]."""
        lo = bisect.bisect_left(self.samples, (start, -1.0))
        hi = bisect.bisect_right(self.samples, (end, float("inf")))
        return max((lag for _, lag in self.samples[lo:hi]), default=0.0)

    def p99(self) -> float:
        lags = sorted(lag for _, lag in self.samples)
        return lags[int(0.99 * (len(lags) - 1))] if lags else 0.0


def sleeps(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` and of its children:
    how often the server went to sleep waiting (each one a wake-up later).  On this
    VM a wake-up of an idle vCPU costs 0.1-0.8 ms, and up to several ms at p99
    (bench/RESULTS.md, "Chat p99 and wake-ups")."""
    total = 0
    for proc in [pid, *child_pids(pid)]:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{proc}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    for line in (task / "status").read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
    return total
