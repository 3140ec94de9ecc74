"""Channels, memberships and consent on the cluster (core/channels.py).

**Keys.**  One bucket, ``<bucket_prefix>_channels``, shared with :mod:`.broadcasts`
(one stream to create and replicate, not four: each costs a store's ``open`` about
0.1 s); its keys' first token says their kind.  Every record is JSON, every change a
compare-and-set (:mod:`.cas`), so relays racing are ordered by the key's revision:

- ``c.<channel id>``: the channel (:class:`~pinrelay.core.channels.Channel`), a
  tombstone once deleted (``deleted_ms``; never removed, so an id is never reused);
- ``t.<tenant>``: the ids of the tenant's live channels, sorted
  (:class:`ChannelList`, at most MAX_CHANNELS: 14 KB).  Its compare-and-set is what
  holds ``max_channels`` exactly with creates racing on several relays.
- ``d.<PIN>``: the channels the device joined, sorted (:class:`Memberships`, at most
  MAX_MEMBERSHIPS); its compare-and-set holds that quota;
- ``m.<channel id>.<PIN[:2]>``: a shard of the channel's members, sorted
  (:class:`Shard`; PINs are 8 hex digits, so up to 256 shards of about 400 PINs for
  a 100,000-member channel).  :meth:`Channels.members` lists the channel's shard
  keys (one request on the leader, at most 256 subjects) and reads shards from the
  one ``after`` is in until it has ``limit`` PINs, in waves read together (two, then
  as many as the first say are needed): a page of 500 costs a listing and about two
  round trips of reads whatever the channel's size, and a join rewrites one shard
  (4 KB at 100,000 members; NATS's 1 MB message holds a shard of a 20-million-member
  channel).  A shard its last member left stays, empty (removing it could not be
  a compare-and-set, and would race with a join);
- ``r.<PIN[:2]>.<PIN>``: the device's consent (:class:`Consent`): the classes it
  refuses, and its marketing count of the day with the last broadcast counted.  A
  device with neither has no key.

**Admission.**  A page of members is PIN-sorted, so its PINs share few prefixes
(a 10,000-member channel's page of 500 spans about 13 of the 256): :meth:`Channels.admit`
lists those prefixes' consent keys (a request each, on the leader) and reads only
the records there are.  A member with none is admitted with no read and, for a
service broadcast, no write; with a marketing cap its count is created (a
compare-and-set on "absent", so a record written meanwhile is read and honoured).
A page whose PINs spread over many prefixes (a small channel's) reads each PIN's key
instead, :data:`ADMIT_IN_FLIGHT` at once.  Counted members write their record by
compare-and-set, so relays admitting at once never pass the cap.

A new bucket needs no layout version (:mod:`.setup`, "Layout versions"): a relay
of this version creates it on a cluster an older one made, and an older relay
never reads it.

**Order of writes** (no write spans two keys atomically): a join writes the
device's list, then the shard; a leave the shard, then the list.  Repeating either
writes what is missing, so a call failing half-way is finished by its retry; in
between, ``channels_of`` may name a channel whose fan-out misses the device.  A
create adds the id to its tenant's list, then writes the record: a crash between
leaves an id with no record, which listings skip and which counts against the
quota (it errs on the side of refusing, as device counts do, :mod:`.tenants`).

**Deletions.**  A channel's deletion writes its tombstone, takes it out of its
tenant's list and purges its shards (one request however many members): the
members' own lists still name it, and are filtered when read (``channels_of`` reads
the records it names; a tombstone is remembered by each relay for ever, being
final) and pruned when a join finds the list full.  A device's deletion (or move to
another tenant) takes its PIN out of the shards its list names and removes the
list; a deletion removes its consent too, a move keeps it (the owner's wish).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from pinrelay.core.channels import MAX_MEMBERSHIPS, Channel, ChannelClass, is_channel_id
from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.tenants import TENANT_ID_RE
from pinrelay.store.base import StoreClosed
from pinrelay.store.jetstream.cas import Keyed
from pinrelay.store.jetstream.devices import Devices
from pinrelay.store.jetstream.kv import Kv
from pinrelay.store.jetstream.layout import Bucket
from pinrelay.store.jetstream.records import SAFE_TOKEN, json_enc
from pinrelay.store.jetstream.unread import IN_FLIGHT, bounded

#: Shards of a channel read at once for one page of members, at most.
MAX_WAVE = 64
#: Listing the consent keys of a page's PIN prefixes pays (rather than a read per
#: PIN) when it has at least this many PINs per prefix.
LIST_RATIO = 4
#: Consent reads (and marketing writes) in flight at once for one admission.
ADMIT_IN_FLIGHT = 64


class ChannelList(msgspec.Struct):
    """``t.<tenant>``: the tenant's live channels."""

    ids: list[str] = []


class Memberships(msgspec.Struct):
    """``d.<PIN>``: the channels a device joined (a tombstone's id until pruned)."""

    channels: list[str] = []


class Shard(msgspec.Struct):
    """``m.<channel>.<PIN[:2]>``: the channel's members with that PIN prefix."""

    pins: list[str] = []


class Consent(msgspec.Struct, omit_defaults=True):
    """``r.<PIN[:2]>.<PIN>``: what a device refuses, and its marketing count of ``day``."""

    refuses: list[str] = []
    day: int = 0
    count: int = 0
    #: The last broadcast counted: asked again for it (a resumed fan-out), admitted
    #: without counting.
    last: str = ""


def _shard(pin: str) -> str:
    """The shard token of ``pin``: shards in order hold PINs in order."""
    return pin[:2]


def shard_key(channel_id: str, pin: str) -> str:
    return f"m.{channel_id}.{_shard(pin)}"


def consent_key(pin: str) -> str:
    return f"r.{_shard(pin)}.{pin}"


def _added(items: list[str], item: str) -> list[str] | None:
    """``items`` (sorted) with ``item``; None if it is there."""
    return None if item in items else sorted([*items, item])


def _dropped(items: list[str], item: str) -> list[str] | None:
    """``items`` without ``item``; None if it is not there."""
    return [i for i in items if i != item] if item in items else None


class Channels:
    """Channels, memberships, refusals and admission (module doc)."""

    def __init__(self, kv: Kv, bucket: Bucket, devices: Devices) -> None:
        self.kv = kv
        self.api = kv.api
        self.devices = devices
        self.bucket = bucket
        self.records = Keyed(kv, bucket, Channel)
        self.lists = Keyed(kv, bucket, ChannelList)
        self.memberships = Keyed(kv, bucket, Memberships)
        self.shards = Keyed(kv, bucket, Shard)
        self.consents = Keyed(kv, bucket, Consent)
        #: Channels known deleted: a tombstone is final, so remembered for ever.
        self._dead: set[str] = set()

    # --- channels ------------------------------------------------------------------
    async def create(self, channel: Channel, max_channels: int) -> None:
        """Store a new channel; CONFLICT if its id is taken or its tenant is full."""
        self.api.check_open()
        if not is_channel_id(channel.id) or not TENANT_ID_RE.match(channel.tenant):
            raise PinrelayError(f"channel id {channel.id!r}", ErrorCode.INVALID)
        mine = msgspec.structs.replace(channel, deleted_ms=None)
        if await self.records.get(f"c.{channel.id}") is not None:
            raise PinrelayError(f"channel {channel.id} exists", ErrorCode.CONFLICT)
        listed = False

        def add(old: ChannelList | None) -> ChannelList | None:
            nonlocal listed
            ids = [] if old is None else old.ids
            listed = channel.id in ids
            if listed:
                return None
            if len(ids) >= max_channels:
                raise PinrelayError(
                    f"tenant {channel.tenant} holds {max_channels} channels", ErrorCode.CONFLICT
                )
            return ChannelList(sorted([*ids, channel.id]))

        await self.lists.change(f"t.{channel.tenant}", add)
        raw = json_enc.encode(mine)
        if await self.kv.create(self.bucket, f"c.{channel.id}", raw) is not None:
            return
        found = await self.records.get(f"c.{channel.id}")
        if found == mine:
            return  # ours: written by an attempt whose answer was lost (.api retries)
        if not listed:  # the id was taken meanwhile: give the place back
            await self._unlist(channel.tenant, channel.id)
        if found is None:  # refused as present, none read: uncommitted (DECISIONS 62)
            raise StoreClosed(f"channel {channel.id} not committed yet")
        raise PinrelayError(f"channel {channel.id} exists", ErrorCode.CONFLICT)

    async def _unlist(self, tenant: str, channel_id: str) -> None:
        def drop(old: ChannelList | None) -> ChannelList | None:
            ids = None if old is None else _dropped(old.ids, channel_id)
            return None if ids is None else ChannelList(ids)

        await self.lists.change(f"t.{tenant}", drop)

    async def get(self, channel_id: str) -> Channel | None:
        self.api.check_open()
        if not is_channel_id(channel_id):
            return None
        found = await self.records.get(f"c.{channel_id}")
        if found is not None and not found.live:
            self._dead.add(channel_id)
        return found

    async def listing(self, tenant: str | None) -> list[Channel]:
        """The live channels of ``tenant`` (None: every tenant's), by id."""
        self.api.check_open()
        if tenant is None:
            keys = await self.kv.keys(self.bucket, "t.*")
        elif TENANT_ID_RE.match(tenant):
            keys = [f"t.{tenant}"]
        else:
            return []
        lists = await self.lists.many(keys)
        ids = sorted({i for found in lists if found is not None for i in found.ids})
        found = await self.records.many([f"c.{i}" for i in ids])
        return [c for c in found if c is not None and c.live]

    async def delete(self, channel_id: str, now_ms: int) -> bool:
        """Tombstone a live channel, unlist it and forget its members."""
        self.api.check_open()
        if not is_channel_id(channel_id):
            return False

        def bury(old: Channel | None) -> Channel | None:
            if old is None or not old.live:
                return None
            return msgspec.structs.replace(old, deleted_ms=now_ms)

        rec, wrote = await self.records.change(f"c.{channel_id}", bury)
        if rec is None:
            return False
        # Also for a tombstone found: finishes a deletion that failed half-way.
        self._dead.add(channel_id)
        await self._unlist(rec.tenant, channel_id)
        await self.kv.remove(self.bucket, f"m.{channel_id}.>")
        return wrote

    async def _live(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` that name a live channel (a read per id not known dead)."""
        unknown = [i for i in ids if i not in self._dead]
        found = await self.records.many([f"c.{i}" for i in unknown])
        live: set[str] = set()
        for cid, rec in zip(unknown, found, strict=True):
            if rec is not None and rec.live:
                live.add(cid)
            elif rec is not None:
                self._dead.add(cid)
        return [i for i in ids if i in live]

    # --- memberships ---------------------------------------------------------------
    async def join(self, pin: str, channel_id: str, joined: bool) -> bool:
        """Join or leave (module doc, "Order of writes"); False if no such device."""
        self.api.check_open()
        if await self.devices.get(pin) is None:
            return False
        if not is_channel_id(channel_id):
            return True  # never a channel: nothing to join or leave
        if joined:
            await self._join(pin, channel_id)
        else:
            await self._shard_change(channel_id, pin, False)
            await self.memberships.change(f"d.{pin}", self._leaving(channel_id))
        return True

    async def _join(self, pin: str, channel_id: str) -> None:
        # Pruned of tombstones only when full: the common join reads one key.
        pruned: list[str] | None = None
        for _ in range(2):
            full = False

            def add(
                old: Memberships | None, pruned: list[str] | None = pruned
            ) -> Memberships | None:
                nonlocal full
                have = [] if old is None else old.channels
                if pruned is not None:
                    have = [c for c in have if c in pruned or c not in self._dead]
                if channel_id in have:
                    return None if pruned is None else Memberships(have)
                full = len(have) >= MAX_MEMBERSHIPS
                return None if full else Memberships(sorted([*have, channel_id]))

            rec, _ = await self.memberships.change(f"d.{pin}", add)
            if not full:
                await self._shard_change(channel_id, pin, True)
                return
            if pruned is not None or rec is None:
                break
            pruned = await self._live(rec.channels)
            if len(pruned) == len(rec.channels):
                break
        raise PinrelayError(
            f"a device is a member of at most {MAX_MEMBERSHIPS} channels", ErrorCode.CONFLICT
        )

    @staticmethod
    def _leaving(channel_id: str) -> Callable[[Memberships | None], Memberships | None]:
        def drop(old: Memberships | None) -> Memberships | None:
            left = None if old is None else _dropped(old.channels, channel_id)
            return None if left is None else Memberships(left)

        return drop

    async def _shard_change(self, channel_id: str, pin: str, member: bool) -> None:
        def change(old: Shard | None) -> Shard | None:
            pins = [] if old is None else old.pins
            new = _added(pins, pin) if member else _dropped(pins, pin)
            return None if new is None else Shard(new)

        await self.shards.change(shard_key(channel_id, pin), change)

    async def of(self, pin: str) -> list[str]:
        """The live channels ``pin`` joined, sorted."""
        self.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return []
        rec = await self.memberships.get(f"d.{pin}")
        return [] if rec is None else await self._live(rec.channels)

    async def members(self, channel_id: str, after: str, limit: int) -> list[str]:
        """Up to ``limit`` members above ``after``, in PIN order (module doc, "Keys")."""
        self.api.check_open()
        if not is_channel_id(channel_id) or limit <= 0:
            return []
        keys = await self.kv.keys(self.bucket, f"m.{channel_id}.*")
        first = _shard(after)
        todo = sorted(k for k in keys if k.rpartition(".")[2] >= first)
        found: list[str] = []
        read = seen = width = 0
        while todo and len(found) < limit:
            # Shards in waves read together: two first, then as many as the shards
            # read so far say are needed (module doc, "Keys").
            wave, todo = todo[: width or 2], todo[width or 2 :]
            for shard in await self.shards.many(wave):
                pins = [] if shard is None else shard.pins
                found += [p for p in pins if p > after]
                seen += len(pins)
            read += len(wave)
            per_shard = max(1, seen // read)
            width = min(MAX_WAVE, -(-(limit - len(found)) // per_shard) + 1)
        return found[:limit]

    async def leave_all(self, pin: str) -> None:
        """Take ``pin`` out of every channel it joined and drop its list (a deleted or
        moved device: its shards first, so a failure is finished by a retry)."""
        if not SAFE_TOKEN.match(pin):
            return
        rec = await self.memberships.get(f"d.{pin}")
        if rec is None:
            return

        def leave(cid: str) -> Callable[[], Awaitable[None]]:
            return lambda: self._shard_change(cid, pin, False)

        await bounded([leave(c) for c in rec.channels if c not in self._dead], IN_FLIGHT)
        await self.kv.remove(self.bucket, f"d.{pin}")

    async def forget(self, pin: str) -> None:
        """Forget everything of a deleted device: memberships and consent."""
        await self.leave_all(pin)
        if SAFE_TOKEN.match(pin):
            await self.kv.remove(self.bucket, consent_key(pin))

    # --- consent -------------------------------------------------------------------
    async def set_refusal(self, pin: str, klass: ChannelClass, refused: bool) -> bool:
        self.api.check_open()
        if await self.devices.get(pin) is None:
            return False

        def change(old: Consent | None) -> Consent | None:
            rec = old or Consent()
            new = _added(rec.refuses, klass) if refused else _dropped(rec.refuses, klass)
            return None if new is None else msgspec.structs.replace(rec, refuses=new)

        await self.consents.change(consent_key(pin), change)
        return True

    async def refusals_of(self, pin: str) -> list[ChannelClass]:
        self.api.check_open()
        if not SAFE_TOKEN.match(pin):
            return []
        rec = await self.consents.get(consent_key(pin))
        found: list[ChannelClass] = ["marketing", "service"]
        return [] if rec is None else [k for k in found if k in rec.refuses]

    async def admit(
        self, pins: Sequence[str], klass: ChannelClass, broadcast_id: str, day: int, cap: int | None
    ) -> list[str]:
        """Those of ``pins`` that take the broadcast (the Store's docstring; module
        doc, "Admission")."""
        self.api.check_open()
        safe = [p for p in pins if SAFE_TOKEN.match(p)]
        listed = await self._with_consent(safe)

        def one(pin: str) -> Callable[[], Awaitable[bool]]:
            known = None if listed is None else pin in listed
            return lambda: self._admit_one(pin, klass, broadcast_id, day, cap, known)

        verdicts = await bounded([one(p) for p in safe], ADMIT_IN_FLIGHT)
        return [p for p, ok in zip(safe, verdicts, strict=True) if ok]

    async def _with_consent(self, pins: list[str]) -> set[str] | None:
        """Those of ``pins`` that have a consent key, by listing their prefixes' keys;
        None (read each) when they share too few prefixes for listing to pay."""
        prefixes = sorted({_shard(p) for p in pins})
        if not prefixes or len(pins) < LIST_RATIO * len(prefixes):
            return None

        def listing(prefix: str) -> Callable[[], Awaitable[list[str]]]:
            return lambda: self.kv.keys(self.bucket, f"r.{prefix}.*")

        found = await bounded([listing(p) for p in prefixes], IN_FLIGHT)
        return {k.rpartition(".")[2] for keys in found for k in keys}

    async def _admit_one(
        self,
        pin: str,
        klass: ChannelClass,
        broadcast_id: str,
        day: int,
        cap: int | None,
        listed: bool | None,
    ) -> bool:
        key = consent_key(pin)
        got = None if listed is False else await self.kv.get(self.bucket, key)
        rec = None if got is None else self.consents.dec.decode(got.value)
        if rec is not None and klass in rec.refuses:
            return False
        if cap is None:
            return True
        admitted = False

        def count(old: Consent | None) -> Consent | None:
            nonlocal admitted
            c = old or Consent()
            if klass in c.refuses:
                admitted = False
                return None
            if c.last == broadcast_id:
                admitted = True
                return None
            used = c.count if c.day == day else 0
            admitted = used < cap
            if not admitted:
                return None
            return msgspec.structs.replace(c, day=day, count=used + 1, last=broadcast_id)

        # The first attempt names the revision just read; a conflict reads again.
        new = count(rec)
        if new is None:
            return admitted
        revision = 0 if got is None else got.revision
        if await self.kv.put(self.bucket, key, json_enc.encode(new), revision) is not None:
            return True
        await asyncio.sleep(0)
        await self.consents.change(key, count)
        return admitted
