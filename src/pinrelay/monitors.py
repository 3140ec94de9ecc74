"""The monitors inside every relay, and the automatic incidents they open.

Each ``probe_s`` the relay writes one small durable record (Store.probe) and times
it; each ``every_s`` it takes its readings (core/readings.py), judges them
(core/monitors.py ``judge``) and applies what the rules say (``AutoIncidents``):
open, update, resolve or take over an automatic incident, each a compare-and-set
through the store, then told to the incident board (incident_board.py), whose
listeners tell links and webhooks.

A relay that cannot reach its store still opens the incident: on its board only
(its links, its status pages, its webhooks' memory), under the id every relay of
the region derives alike (core/monitors.py rule 2), and writes its revisions in
order once the store answers again.  Store calls made here wait at most
``WRITE_TIMEOUT_S``: the loop keeps judging while the store hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, cast

import msgspec

from pinrelay.core.incidents import (
    COMPONENTS,
    Component,
    Incident,
    add_update,
    open_incident,
    resolve,
    take_over,
)
from pinrelay.core.monitors import (
    Action,
    AutoIncidents,
    Finding,
    Open,
    Peak,
    Resolve,
    TakeOver,
    Thresholds,
    Update,
    auto_incident_id,
    judge,
)
from pinrelay.core.readings import Readings
from pinrelay.incident_board import IncidentBoard
from pinrelay.store.base import Store

log = logging.getLogger("pinrelay.monitors")


class FeedLag(Protocol):
    """A cluster store's feed of new messages, as the monitors judge it
    (store/jetstream/feed.py)."""

    async def check(self, now_ms: int) -> None:
        """Compare what the feed handed on with what its streams hold."""

    def lag_ms(self, now_ms: int) -> int:
        """How long it has been behind without catching up (0: it is not)."""

    async def restart(self, behind_ms: int, now_ms: int) -> list[str]:
        """Restart what has been behind ``behind_ms`` or more; the streams restarted."""


#: How long one store call of the monitors may take before it counts as failed.
WRITE_TIMEOUT_S = 2.0
#: The most wall-clock time one tick counts towards --incident-after and the like
#: (core/monitors.py ``max_step_ms``): a tick waits for a few store calls at most.
MAX_STEP_MS = 15_000
#: How long a late delivery keeps the delivery monitor red (Monitors.lag).
LAG_HOLD_MS = 10_000
#: Seconds between two counts of the backlog (Readings.backlog).
BACKLOG_EVERY_S = 10.0
#: Ids tried in one slot (core/monitors.py rule 2) before giving up until next tick.
MAX_IDS = 8


class Monitors:
    def __init__(
        self,
        store: Store,
        board: IncidentBoard,
        clock: Callable[[], float],
        *,
        node: str,
        region: str,
        data: Path | None,
        links: Callable[[], int],
        region_links: Callable[[], int],
        shed: Callable[[], int],
        expired: Callable[[], int],
        waits: Callable[[], tuple[tuple[int, ...], int]],
        connected: Callable[[], bool],
        alive: Callable[[], frozenset[str] | None],
        thresholds: Thresholds,
        incident_after_s: float,
        resolve_after_s: float,
        every_s: float = 1.0,
        probe_s: float = 1.0,
        report_red: Callable[[frozenset[str]], None] = lambda _: None,
        red_elsewhere: Callable[[], frozenset[str]] = frozenset,
        tenant_waits: Callable[[], dict[str, tuple[int, ...]]] = dict,
        owed: Callable[[], int | None] = lambda: None,
        feed: FeedLag | None = None,
    ) -> None:
        """``report_red`` is told the components judged red each tick (a cluster's
        heartbeats carry them); ``red_elsewhere`` gives those the region's other
        live relays judge red (core/monitors.py rule 3); ``owed``, since when the
        longest waiting linked device has been owed a message (Metrics.owed);
        ``feed``, a cluster store's feed of new messages (DECISIONS 63)."""
        self.store = store
        self.board = board
        self.clock = clock
        self.node = node
        self.region = region
        self.data = data
        self._links = links
        self._region_links = region_links
        self._shed = shed
        self._expired = expired
        self._waits = waits
        self._tenant_waits = tenant_waits
        self._connected = connected
        self._alive = alive
        self._report_red = report_red
        self._red_elsewhere = red_elsewhere
        self._owed = owed
        self.feed = feed
        #: How long the feed has been behind the streams, as last checked (ms).
        self.feed_lag_ms = 0
        self.thresholds = thresholds
        self.every_s = every_s
        self.probe_s = probe_s
        self.auto = AutoIncidents(
            node,
            region,
            incident_after_ms=int(incident_after_s * 1000),
            resolve_after_ms=int(resolve_after_s * 1000),
            max_step_ms=MAX_STEP_MS,
        )
        self.peak = Peak()
        #: The delivery lag judged: the longest of the last LAG_HOLD_MS (a second in
        #: which nothing was delivered says nothing of the lag).
        self.lag = Peak(window_ms=LAG_HOLD_MS)
        #: The last probe's time in ms (None: it failed).
        self.store_ms: int | None = 0
        self._probe_since: float | None = None  # monotonic start of the probe in flight
        self._shed_seen = shed()
        self._expired_seen = expired()
        #: Revisions opened or changed while the store was away, in order, per incident.
        self.unpublished: dict[str, list[Incident]] = {}
        self.last: Readings | None = None
        #: Messages stored, as last counted (None: not yet).
        self.backlog: int | None = None
        #: Told of each reading (the figures recorder folds them, figures.py).
        self.on_reading: list[Callable[[Readings], None]] = []
        #: The last tick's findings (GET /v1/monitors).
        self.findings: list[Finding] = []
        self._tasks: list[asyncio.Task[None]] = []

    # --- readings -------------------------------------------------------------
    def probe_age_ms(self) -> int:
        since = self._probe_since
        return 0 if since is None else int((time.monotonic() - since) * 1000)

    def read(self) -> Readings:
        now_ms = int(self.clock() * 1000)
        shed = self._shed()
        shed_delta, self._shed_seen = max(0, shed - self._shed_seen), shed
        expired = self._expired()
        expired_delta, self._expired_seen = max(0, expired - self._expired_seen), expired
        counts, longest = self._waits()
        # A delivery that stopped delivers nothing to measure: what is owed and not
        # sent (delivery.py), and the feed that brings new messages (cluster), count
        # by how long they have waited so far.
        owed_since = self._owed()
        if owed_since is not None:
            longest = max(longest, now_ms - owed_since)
        longest = max(longest, self.feed_lag_ms)
        free: int | None = None
        if self.data is not None:
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(self.data).free
        self.last = Readings(
            at_ms=now_ms,
            node=self.node,
            region=self.region,
            links=self._links(),
            lag_ms=longest,
            delivered=sum(counts),
            delay_counts=counts,
            tenant_delays=self._tenant_waits(),
            expired=expired_delta,
            shed=shed_delta,
            store_ms=self.store_ms,
            backlog=self.backlog,
            disk_free=free,
        )
        for listener in self.on_reading:
            listener(self.last)
        return self.last

    # --- the loops ----------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._probe_forever()),
            loop.create_task(self._forever()),
            loop.create_task(self._count_forever()),
        ]
        if self.feed is not None:  # its own loop: a store away stalls no tick
            self._tasks.append(loop.create_task(self._feed_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _count_forever(self) -> None:
        """The backlog (Store.stats: messages stored) every BACKLOG_EVERY_S: a count
        of the whole store, too dear for each second; the last count stands while the
        store cannot answer."""
        while True:
            try:
                stats = await asyncio.wait_for(self.store.stats(), WRITE_TIMEOUT_S)
                self.backlog = stats.messages
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("backlog count failed: %r", exc)
            await asyncio.sleep(max(BACKLOG_EVERY_S, self.every_s))

    async def _probe_forever(self) -> None:
        fail_s = self.thresholds.store_fail_ms / 1000
        while True:
            started = time.monotonic()
            self._probe_since = started
            try:
                # Longer than store_fail_ms: judge() sees the wait grow meanwhile.
                await asyncio.wait_for(
                    self.store.probe(self.node, int(self.clock() * 1000)), fail_s * 4
                )
                self.store_ms = int((time.monotonic() - started) * 1000)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.store_ms is not None:
                    log.warning("store probe failed: %r", exc)
                self.store_ms = None
            finally:
                self._probe_since = None
            await asyncio.sleep(max(0.0, self.probe_s - (time.monotonic() - started)))

    async def _forever(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            tick = asyncio.get_running_loop().create_task(self._tick_logged())
            try:
                while not (await asyncio.wait([tick], timeout=self.every_s))[0]:
                    # The tick still waits on the store (an incident written, a
                    # revision published, up to WRITE_TIMEOUT_S each, as a store coming
                    # back can take): readings go on all the same, so that the figures
                    # of that time have no hole; the next tick judges.
                    self._read_logged()
            finally:
                if not tick.done():
                    tick.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await tick

    async def _tick_logged(self) -> None:
        try:
            await self.tick()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("monitors failed")

    def _read_logged(self) -> None:
        try:
            self.read()
        except Exception:
            log.exception("monitors: a reading failed")

    async def tick(self) -> None:
        """Unpublished revisions written, then one reading judged and its actions
        applied (on what the store holds: another relay may have written first)."""
        if self.unpublished and self._store_ok():
            await self._publish()
        r = self.read()
        self.findings = findings = judge(
            msgspec.structs.replace(r, lag_ms=self.lag.add(r.at_ms, r.lag_ms)),
            self.thresholds,
            peak_links=self.peak.add(r.at_ms, r.links),
            connected=self._connected(),
            probe_age_ms=self.probe_age_ms(),
            interval_s=self.every_s,
        )
        open_auto = [
            i
            for i in self.board.open_incidents()
            if i.source == "auto" and (i.region or self.region) == self.region
        ]
        n = self._region_links()
        figures = f"Every tenant; {n} device{'' if n == 1 else 's'} linked in {self.region}"
        self._report_red(frozenset(f.component for f in findings))
        elsewhere = cast("frozenset[Component]", self._red_elsewhere().intersection(COMPONENTS))
        actions = self.auto.step(
            r.at_ms,
            findings,
            open_auto,
            self._alive(),
            figures,
            store_ok=self._store_ok(),
            red_elsewhere=elsewhere,
        )
        for action in actions:
            try:
                await self._apply(action, r.at_ms)
            except asyncio.CancelledError:
                raise
            except Exception:  # one incident's failure does not stop the others
                log.exception("monitors: %s failed", type(action).__name__)

    async def _feed_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self._check_feed()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("checking the feed failed")
            await asyncio.sleep(max(0.0, self.every_s - (time.monotonic() - started)))

    async def _check_feed(self) -> None:
        """The feed's lag (Feed.check: one request per stream); a feed red for it is
        restarted from the last message it handed on (no message skipped or handed
        twice), at most once per ``lag_ms`` for each stream."""
        feed = self.feed
        assert feed is not None
        now_ms = int(self.clock() * 1000)
        try:
            await asyncio.wait_for(feed.check(now_ms), WRITE_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store away: the probe says so; the lag stands
            log.debug("checking the feed failed: %r", exc)
        self.feed_lag_ms = feed.lag_ms(now_ms)
        if self.feed_lag_ms < self.thresholds.lag_ms:
            return
        try:
            restarted = await asyncio.wait_for(
                feed.restart(self.thresholds.lag_ms, now_ms), WRITE_TIMEOUT_S
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("restarting the feed failed: %r", exc)
            return
        if restarted:
            log.warning(
                "the feed of new messages was %d ms behind: restarted it on %s",
                self.feed_lag_ms,
                ", ".join(restarted),
            )

    # --- acting -------------------------------------------------------------
    async def _apply(self, action: Action, now_ms: int) -> None:
        if isinstance(action, Open):
            await self._open(action, now_ms)
            return
        if isinstance(action, Update):
            changed = add_update(action.incident, action.text, now_ms, severity=action.severity)
        elif isinstance(action, Resolve):
            changed = resolve(action.incident, action.text, now_ms)
            log.warning("incident %s resolved", changed.id)
        elif isinstance(action, TakeOver):
            if not self._store_ok():
                return  # the store away: the holder's heartbeat may be all that failed
            changed = take_over(action.incident, self.node)
            log.warning("incident %s taken over from %s", changed.id, action.incident.holder)
            await self._write(changed, keep=False)
            return
        await self._write(changed)

    async def _open(self, action: Open, now_ms: int) -> None:
        """Rule 2: the slot's first id no resolved incident took; another relay's
        open one of the same id is adopted."""
        f = action.finding
        for n in range(MAX_IDS):
            iid = auto_incident_id(f.component, self.region, action.started_ms, n)
            known = self.board.get(iid)
            if known is not None and known.state == "resolved":
                continue
            incident = open_incident(
                iid,
                f.component,
                f.severity,
                action.text,
                action.started_ms,
                region=self.region,
                source="auto",
                opened_ms=now_ms,
                holder=self.node,
            )
            log.warning("incident %s opened: %s", iid, f.text)
            found = await self._write(incident)
            if found is None or found.state == "open":
                return

    async def _write(self, changed: Incident, keep: bool = True) -> Incident | None:
        """Store ``changed`` and tell the board; kept here if the store is away
        (unless not ``keep``: a take-over is tried again next tick, or never).
        What is stored instead, if another relay's write won (None: ours stands)."""
        if changed.id in self.unpublished or not self._store_ok():
            if not keep:
                return None
            self.unpublished.setdefault(changed.id, []).append(changed)
            await self.board.seen(changed)
            return None
        try:
            stored = await asyncio.wait_for(self.store.put_incident(changed), WRITE_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not keep:
                log.warning("incident %s not written: %r", changed.id, exc)
                return None
            log.warning("incident %s kept here until the store answers: %r", changed.id, exc)
            self.unpublished[changed.id] = [changed]
            await self.board.seen(changed)
            return None
        if stored:
            await self.board.written(changed)
            return None
        return await self._adopt(changed.id)

    def _store_ok(self) -> bool:
        """The probe says the store takes writes (else a write would only wait)."""
        return self.store_ms is not None and self.probe_age_ms() < self.thresholds.store_fail_ms

    async def _adopt(self, incident_id: str) -> Incident | None:
        """What the store holds under ``incident_id``, told to the board."""
        with contextlib.suppress(Exception):
            found = await asyncio.wait_for(self.store.get_incident(incident_id), WRITE_TIMEOUT_S)
            if found is not None:
                await self.board.seen(found)  # told, if new to this relay
                self.board.replace(found)  # and known as stored, if not
            return found
        return None

    async def _publish(self) -> None:
        """Write the revisions kept while the store was away, oldest first."""
        for incident_id, revisions in list(self.unpublished.items()):
            while revisions:
                try:
                    stored = await asyncio.wait_for(
                        self.store.put_incident(revisions[0]), WRITE_TIMEOUT_S
                    )
                except asyncio.CancelledError:
                    raise
                except Exception:
                    return  # still away: next tick
                if not stored:  # another relay wrote this incident meanwhile
                    revisions.clear()
                    await self._adopt(incident_id)
                    break
                log.warning("incident %s rev %d written", incident_id, revisions[0].rev)
                await self.board.published(revisions.pop(0))
            del self.unpublished[incident_id]
