"""The per-relay record cache's rules (store/jetstream/watch.py), without a server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from pinrelay.store.jetstream.watch import Cached, RecordCache


def cache() -> RecordCache[bytes]:
    c: RecordCache[bytes] = RecordCache(lambda raw: raw, size=3)
    c.live = True
    return c


def test_a_read_during_which_the_key_changed_is_not_cached() -> None:
    c = cache()
    token = c.begin("k")
    assert token is not None
    c.changed("k", b"new", 7)
    c.fill("k", b"old", 5, token)
    assert c.get("k") is None


def test_two_reads_in_flight_and_a_removal_cache_neither() -> None:
    c = cache()
    first, second = c.begin("k"), c.begin("k")
    assert first is not None and second is not None
    c.forget("k")  # removed while both read
    c.fill("k", None, 0, first)
    c.fill("k", b"old", 5, second)  # answered late, from before the removal
    assert c.get("k") is None


def test_a_change_updates_a_cached_entry_and_an_older_one_is_ignored() -> None:
    c = cache()
    c.put("k", b"v1", 5)
    c.changed("k", b"v0", 4)
    got = c.get("k")
    assert got is not None and got.value == b"v1"
    c.changed("k", b"v2", 6)
    got = c.get("k")
    assert got is not None and (got.value, got.revision) == (b"v2", 6)
    c.changed("k", None, 7)
    assert c.get("k") is None


def test_clear_drops_entries_and_reads_begun_before_it() -> None:
    c = cache()
    token = c.begin("k")
    assert token is not None
    c.clear()
    c.fill("k", b"v", 5, token)
    assert c.get("k") is None


def test_bounded_least_recently_used_first_out() -> None:
    c = cache()
    for i, key in enumerate("abc"):
        c.put(key, key.encode(), i + 1)
    assert c.get("a") is not None  # a is now the most recent
    c.put("d", b"d", 9)
    assert c.get("b") is None
    assert len(c) == 3


def test_nothing_is_used_while_the_watch_is_not_live() -> None:
    c = cache()
    c.put("k", b"v", 1)
    c.live = False
    assert c.get("k") is None
    assert c.begin("k") is None


def test_weighed_entries_are_bounded_by_their_weight() -> None:
    c: RecordCache[bytes] = RecordCache(lambda raw: raw, size=10, weigh=len)
    c.live = True
    c.put("a", b"xxxx", 1)
    c.put("b", b"xxxx", 2)
    assert c.weight == 8
    c.put("c", b"xxxx", 3)  # 12 > 10: the least recently used goes
    assert c.get("a") is None and len(c) == 2 and c.weight == 8
    assert c.get("b") is not None  # b is now the most recent
    c.changed("b", b"xxxxxxxx", 4)  # grew: b (4 → 8) and c (4) weigh 12, c is older
    assert c.get("c") is None
    got = c.get("b")
    assert got is not None and got.value == b"xxxxxxxx" and c.weight == 8
    c.put("huge", b"x" * 11, 5)  # heavier than the whole cache: not kept
    assert len(c) == 0 and c.weight == 0
    c.put("d", b"xx", 6)
    c.forget("d")
    assert c.weight == 0


async def test_absent_keys_are_answered_from_memory_until_a_write_of_them() -> None:
    c: RecordCache[bytes] = RecordCache(lambda raw: raw, size=3, absent_size=2)
    c.live = True
    loads: list[str] = []

    def loader(key: str, value: bytes | None) -> Callable[[], Awaitable[Cached[bytes] | None]]:
        async def load() -> Cached[bytes] | None:
            loads.append(key)
            return None if value is None else Cached(value, 9)

        return load

    assert await c.through("k", loader("k", None)) is None
    assert await c.through("k", loader("k", None)) is None
    assert loads == ["k"]  # the second from memory
    c.changed("k", b"made", 10)  # another relay created it: the absence is forgotten
    assert await c.through("k", loader("k", b"made")) == Cached(b"made", 9)
    assert loads == ["k", "k"]
    # Bounded: the least recently asked absent key goes first.
    for key in ("a", "b", "c"):
        assert await c.through(key, loader(key, None)) is None
    assert await c.through("a", loader("a", None)) is None
    assert loads[-1] == "a" and loads.count("a") == 2
    # A read during which the key was written caches no absence.
    token = c.begin("z")
    assert token is not None
    c.changed("z", b"new", 3)
    c.fill("z", None, 0, token)
    assert await c.through("z", loader("z", b"new")) == Cached(b"new", 9)
    # Nothing remembered once the watch stops.
    c.clear()
    assert await c.through("b", loader("b", None)) is None
    assert loads[-1] == "b"
