"""The incident board (incident_board.py) over a real SQLite store: the first read
only learns, later reads announce each new revision once, in order, and the writer
hears ``on_written`` first; a store that fails leaves the board as it was, stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from pinrelay.core.incidents import Incident, add_update, open_incident, resolve
from pinrelay.incident_board import Event, IncidentBoard
from pinrelay.store.sqlite import SqliteStore

NOW = 1_800_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = NOW / 1000

    def __call__(self) -> float:
        return self.t


async def test_events_are_announced_once_per_revision(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    try:
        clock = Clock()
        board = IncidentBoard(store, clock)
        heard: list[tuple[str, Event, int]] = []
        written: list[tuple[str, Event]] = []

        async def listen(event: Event, i: Incident) -> None:
            heard.append((i.id, event, i.rev))

        async def wrote(event: Event, i: Incident) -> None:
            written.append((i.id, event))
            assert not [h for h in heard if h[2] == i.rev and h[0] == i.id]  # before on_event

        board.on_event.append(listen)
        board.on_written.append(wrote)
        old = open_incident("I000000000001", "store", "major", "Slow", NOW - 5000)
        assert await store.put_incident(old)
        await board.refresh()
        assert heard == [] and [i.id for i in board.open_incidents()] == [old.id]

        new = open_incident("I000000000002", "links", "minor", "Links dropped", NOW)
        assert await store.put_incident(new)
        await board.written(new)
        assert heard == [(new.id, "opened", 1)] and written == [(new.id, "opened")]
        await board.refresh()  # read back: not announced again
        assert heard == [(new.id, "opened", 1)]

        upd = add_update(old, "Found it", NOW + 1)
        assert await store.put_incident(upd)
        done = resolve(upd, "Fixed", NOW + 2)
        assert await store.put_incident(done)
        await board.refresh()  # another relay's two changes: the newest only
        assert heard[1:] == [(old.id, "resolved", 3)]
        assert [i.id for i in board.open_incidents()] == [new.id]
        assert written == [(new.id, "opened")]

        await store.close()
        with pytest.raises(Exception):  # noqa: B017 - whatever a closed store raises
            await board.refresh()
        assert board.get(old.id) == done
    finally:
        await store.close()


async def test_the_board_holds_90_days_and_lists_14(tmp_path: Path) -> None:
    """``incidents()`` (the status page's list) goes back 14 days, ``history()`` (its
    uptime) 90; older ones are read no more."""
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    try:
        clock = Clock()
        board = IncidentBoard(store, clock)
        day = 86_400_000
        made = {}
        for n, ago in ((1, 1), (2, 20), (3, 100)):
            i = open_incident(f"I00000000000{n}", "store", "major", "x", NOW - (ago + 1) * day)
            made[ago] = resolve(i, None, NOW - ago * day)
            assert await store.put_incident(i) and await store.put_incident(made[ago])
        still = open_incident("I000000000009", "links", "minor", "Open long", NOW - 200 * day)
        assert await store.put_incident(still)
        await board.refresh()
        assert [i.id for i in board.incidents()] == [made[1].id, still.id]
        assert [i.id for i in board.history()] == [made[1].id, made[20].id, still.id]
        clock.t += 15 * 86_400  # the one resolved a day ago is 16 days old now
        await board.refresh()
        assert [i.id for i in board.incidents()] == [still.id]
        clock.t += 80 * 86_400  # past 90 days: forgotten
        await board.refresh()
        assert [i.id for i in board.history()] == [still.id]
    finally:
        await store.close()


async def test_an_incident_kept_on_the_relay_is_not_forgotten_nor_told_twice(
    tmp_path: Path,
) -> None:
    """A monitor that cannot write keeps its incident on the board (monitors.py):
    the board's reads of the store, which does not hold it yet, must not drop it
    (the first read included), and once it is written, reading it back is no news."""
    store = SqliteStore(tmp_path / "pinrelay.db")
    await store.open()
    try:
        board = IncidentBoard(store, Clock())
        heard: list[tuple[str, Event, int]] = []

        async def listen(event: Event, i: Incident) -> None:
            heard.append((i.id, event, i.rev))

        board.on_event.append(listen)
        kept = open_incident("I000000000003", "store", "critical", "Down", NOW, source="auto")
        await board.seen(kept)  # before the board's first read
        await board.refresh()
        assert [i.id for i in board.open_incidents()] == [kept.id]
        done = resolve(kept, "Back", NOW + 1)
        await board.seen(done)  # resolved here, still not written
        await board.refresh()
        assert board.get(kept.id) == done
        assert heard == [(kept.id, "opened", 1), (kept.id, "resolved", 2)]
        assert await store.put_incident(kept) and await store.put_incident(done)
        await board.refresh()
        assert heard == [(kept.id, "opened", 1), (kept.id, "resolved", 2)]
    finally:
        await store.close()
