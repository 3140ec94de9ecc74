"""monitors.py over a real SQLite store: an incident a monitor opens while the store
cannot be written is kept on the relay's board (its links hear of it at once,
``on_event``), and when it is written later, the relay whose write stored it hears
``on_written`` for each revision (webhooks are sent from there: PROTOCOL
"Incidents and status"), once."""

from __future__ import annotations

from pathlib import Path

from pinrelay.core.incidents import Incident
from pinrelay.core.monitors import Thresholds
from pinrelay.incident_board import Event, IncidentBoard
from pinrelay.monitors import Monitors
from pinrelay.store.sqlite import SqliteStore

NOW = 1_800_000_000.0


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
    monitors = Monitors(
        store,
        board,
        lambda: clock[0],
        node="n1",
        region="eu",
        data=None,
        links=lambda: 0,
        region_links=lambda: 0,
        shed=lambda: 0,
        expired=lambda: 0,
        waits=lambda: ((), 0),
        connected=lambda: not red[0],  # the "cluster" monitor: red at will
        alive=lambda: None,
        thresholds=Thresholds(),
        incident_after_s=2,
        resolve_after_s=2,
    )
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
