"""monitors.py over a real SQLite store: an incident a monitor opens while the store
cannot be written is kept on the relay's board (its links hear of it at once,
``on_event``), and when it is written later, the relay whose write stored it hears
``on_written`` for each revision (webhooks are sent from there: PROTOCOL
"Incidents and status"), once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from pinrelay.core.incidents import Incident
from pinrelay.core.monitors import Thresholds
from pinrelay.incident_board import Event, IncidentBoard
from pinrelay.monitors import Monitors
from pinrelay.store.sqlite import SqliteStore
from pinrelay.testing.wait import wait_until_async

NOW = 1_800_000_000.0


def make(
    store: SqliteStore,
    board: IncidentBoard,
    clock: list[float] | None,
    *,
    connected: Callable[[], bool] = lambda: True,
    waits: Callable[[], tuple[tuple[int, ...], int]] = lambda: ((), 0),
    every_s: float = 1.0,
) -> Monitors:
    """Monitors on ``clock`` (None: the wall clock)."""
    return Monitors(
        store,
        board,
        time.time if clock is None else lambda: clock[0],
        node="n1",
        region="eu",
        data=None,
        links=lambda: 0,
        region_links=lambda: 0,
        shed=lambda: 0,
        expired=lambda: 0,
        waits=waits,
        connected=connected,
        alive=lambda: None,
        thresholds=Thresholds(),
        incident_after_s=2,
        resolve_after_s=2,
        every_s=every_s,
    )


async def test_revisions_written_late_are_told_to_on_written(tmp_path: Path) -> None:
    clock = [NOW]
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    board = IncidentBoard(store, lambda: clock[0])
    await board.refresh()
    told: list[tuple[str, Event, int]] = []
    written: list[tuple[str, Event, int]] = []

    async def on_event(event: Event, i: Incident) -> None:
        told.append((i.id, event, i.rev))

    async def on_written(event: Event, i: Incident) -> None:
        written.append((i.id, event, i.rev))

    board.on_event.append(on_event)
    board.on_written.append(on_written)
    red = [False]
    monitors = make(store, board, clock, connected=lambda: not red[0])  # "cluster" red at will
    await store.close()  # the store away: writes raise
    again = SqliteStore(tmp_path / "pinrelay.db")
    try:
        red[0] = True
        for _ in range(3):
            await monitors.tick()
            clock[0] += 1
        [iid] = monitors.unpublished
        assert told == [(iid, "opened", 1)] and written == []
        red[0] = False
        for _ in range(3):
            await monitors.tick()
            clock[0] += 1
        assert told == [(iid, "opened", 1), (iid, "resolved", 2)] and written == []
        await again.open()  # the store is back
        monitors.store = board.store = again
        await monitors.tick()
        assert monitors.unpublished == {}
        stored = await again.get_incident(iid)
        assert stored is not None and stored.state == "resolved" and stored.rev == 2
        assert written == [(iid, "opened", 1), (iid, "resolved", 2)]
        await board.refresh()
        assert told == [(iid, "opened", 1), (iid, "resolved", 2)]
    finally:
        await again.close()


async def test_late_deliveries_a_few_seconds_apart_open_a_delivery_incident(
    tmp_path: Path,
) -> None:
    """Each message to a linked device waits a minute, but one goes out every 4 s:
    the seconds between, with nothing delivered, say nothing of the lag (they do
    not break the red run)."""
    clock = [NOW]
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    try:
        board = IncidentBoard(store, lambda: clock[0])
        await board.refresh()
        tick = [0]

        def waits() -> tuple[tuple[int, ...], int]:
            tick[0] += 1
            return ((0,) * 12 + (1,), 60_000) if tick[0] % 4 == 1 else ((), 0)

        monitors = make(store, board, clock, waits=waits)
        for _ in range(8):
            await monitors.tick()
            clock[0] += 1
        [incident] = board.open_incidents()
        assert incident.component == "delivery" and incident.source == "auto"
        for _ in range(40):  # nothing late any more: resolved
            tick[0] = 2
            await monitors.tick()
            clock[0] += 1
        assert board.open_incidents() == []
    finally:
        await store.close()


async def test_a_write_that_timed_out_but_was_stored_is_not_lost(tmp_path: Path) -> None:
    """A revision kept because its write did not answer in time may be in the store
    all the same: publishing finds it there, counts it as this relay's, and goes on
    with the revisions after it (the incident is not left open in the store, nor
    told resolved twice)."""
    clock = [NOW]
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    board = IncidentBoard(store, lambda: clock[0])
    await board.refresh()
    told: list[tuple[Event, int]] = []
    written: list[tuple[Event, int]] = []

    async def on_event(event: Event, i: Incident) -> None:
        told.append((event, i.rev))

    async def on_written(event: Event, i: Incident) -> None:
        written.append((event, i.rev))

    board.on_event.append(on_event)
    board.on_written.append(on_written)
    red = [True]
    monitors = make(store, board, clock, connected=lambda: not red[0])
    await store.close()
    again = SqliteStore(tmp_path / "pinrelay.db")
    try:
        for _ in range(3):
            await monitors.tick()
            clock[0] += 1
        [(iid, [opened])] = monitors.unpublished.items()
        red[0] = False
        for _ in range(3):
            await monitors.tick()
            clock[0] += 1
        assert [i.state for i in monitors.unpublished[iid]] == ["open", "resolved"]
        await again.open()
        assert await again.put_incident(opened)  # the write that "timed out" landed
        monitors.store = board.store = again
        await monitors.tick()
        stored = await again.get_incident(iid)
        assert stored is not None and stored.state == "resolved" and stored.rev == 2
        assert written == [("opened", 1), ("resolved", 2)]
        for _ in range(5):
            await board.refresh()
            await monitors.tick()
            clock[0] += 1
        assert told == [("opened", 1), ("resolved", 2)]
    finally:
        await again.close()


async def test_what_the_store_holds_is_read_before_acting_on_a_kept_incident(
    tmp_path: Path,
) -> None:
    """Another relay wrote the incident of the same id first (it holds it).  When
    the store answers again, this relay learns that before it acts: it does not
    resolve its own copy and tell its devices "resolved" while the stored incident
    is open, held by the other relay."""
    clock = [NOW]
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    board = IncidentBoard(store, lambda: clock[0])
    await board.refresh()
    told: list[tuple[Event, int, str | None]] = []

    async def on_event(event: Event, i: Incident) -> None:
        told.append((event, i.rev, i.holder))

    board.on_event.append(on_event)
    red = [True]
    monitors = make(store, board, clock, connected=lambda: not red[0])
    await store.close()
    again = SqliteStore(tmp_path / "pinrelay.db")
    try:
        for _ in range(3):
            await monitors.tick()
            clock[0] += 1
        [(iid, [mine])] = monitors.unpublished.items()
        red[0] = False
        await monitors.tick()  # green from now; resolve_after is 2 s
        clock[0] += 2
        await again.open()
        theirs = msgspec.structs.replace(mine, holder="n2", updates=mine.updates[:1])
        theirs = msgspec.structs.replace(theirs, opened_ms=(mine.opened_ms or 0) - 500)
        assert await again.put_incident(theirs)
        monitors.store = board.store = again
        await monitors.tick()
        assert told == [("opened", 1, "n1")]
        assert board.get(iid) == theirs
        stored = await again.get_incident(iid)
        assert stored == theirs
    finally:
        await again.close()


async def test_readings_go_on_while_a_tick_waits_on_the_store(tmp_path: Path) -> None:
    """An incident write that hangs (a store coming back can take WRITE_TIMEOUT_S)
    holds the tick, not the readings: the figures of that time have no hole (a
    fresh-clone run once found 14 s without a reading after a quorum loss)."""
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    board = IncidentBoard(store, time.time)
    await board.refresh()
    asked: list[str] = []
    released = asyncio.Event()

    async def hanging_put(incident: Incident) -> bool:
        asked.append(incident.id)
        await released.wait()
        return False

    # Deliveries waiting 10,000 s: the delivery monitor red, an incident to open.
    monitors = make(store, board, None, waits=lambda: ((), 10**7), every_s=0.05)
    readings: list[int] = []
    monitors.on_reading.append(lambda r: readings.append(r.at_ms))
    setattr(store, "put_incident", hanging_put)  # noqa: B010 (this instance's method)
    monitors.start()
    try:
        await wait_until_async(lambda: bool(asked), 20, 0.01, "an incident's write under way")
        held = len(readings)
        await wait_until_async(lambda: len(readings) >= held + 10, 10, 0.01, "readings go on")
        assert len(asked) == 1  # one tick at a time: the write still hangs
    finally:
        released.set()
        await monitors.stop()
        await store.close()
