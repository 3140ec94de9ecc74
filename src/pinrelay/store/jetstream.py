"""Cluster engine: NATS JetStream (DESIGN, "Engines"; issue 5).

Layout (all names configurable, so several relays or tests can share a cluster):

- One file-storage stream (``stream``, ``replicas`` copies) on ``<prefix>.>``.  A
  message for device D is stored on ``<prefix>.D.m``, or ``<prefix>.D.t.<topic>``
  with ``Nats-Rollup: sub`` so the newest message of a topic replaces the stored one
  (and only that subject).  The payload carries every field, including
  ``expires_at_ms``; ``Nats-TTL`` (whole seconds, at least 1) only lets JetStream
  collect it: the reader decides expiry by ``expires_at_ms``.
- Partitions (opt-in, ``partitions`` K > 1): devices are spread over K streams
  ``<stream>_<p>`` on ``<prefix>.<p>.>``, p = crc32(PIN) mod K, so K stream leaders
  (spread over the NATS nodes) share the message traffic.  Each stream records K in
  its metadata, and a store opened with another K on the same subjects is refused: a
  cursor is a sequence of one stream, so changing K is a migration.  A push batch is
  atomic within each partition, not across them.
- A message's cursor is its stream sequence: strictly increasing per device across
  relays and failovers, with gaps (other devices' messages, collapsed topics), so
  not SQLite's per-device 1, 2, 3 (the contract promises only "increasing").  The
  device record's ``last_cursor`` is raised after the publish is acknowledged
  (compare-and-set, retried on conflict) and by any read that finds a higher one.
- ``Nats-Msg-Id`` is ``<nonce>.<index in the append>``, not the message id: one
  ``append`` retries its own publishes safely (JetStream answers a duplicate with the
  first sequence), an idempotent retry reuses the first attempt's nonce, and two
  separate appends of the same message are two messages, as the contract says.
- A device record carries a random ``gen``; each message carries its device's gen,
  and a read skips other gens, so a re-created PIN never sees its predecessor's
  messages, even one published while the old device was being deleted.
- KV buckets (file storage, same replicas, history 1, no direct gets):
  ``<bucket_prefix>_devices`` (PIN → device JSON, updated with revision-checked
  compare-and-set), ``<bucket_prefix>_keys`` (key id → API key JSON),
  ``<bucket_prefix>_keyhash`` (sha256(key_hash) → key id) and ``<bucket_prefix>_idem``
  (sha256(key) → idempotency record, max age 24 h, first caller wins with ``create``).

Headers sent with a publish are built here and only here: a caller's headers are never
forwarded (``Nats-Rollup: all`` from anyone would wipe the stream).

Read-your-write: Direct Get on an R3 stream is answered by followers and may lag an
acknowledged publish (issue 5).  By default every read goes to the stream leader
(``$JS.API.STREAM.MSG.GET`` with ``next_by_subj``, one message per request): correct,
at ~1 ms per message.  ``direct_reads=True`` uses batched Direct Get and trusts a
follower's "no more messages" only when it has reached the device's ``last_cursor``
(which an append raises before it returns); otherwise that read falls back to the
leader.  See :meth:`JetStreamStore._scan`.  KV reads always go to the bucket's leader
(``STREAM.MSG.GET`` with ``last_by_subj``), and key listings use the leader's stream
info, not a consumer (which may sit on a lagging follower).

Transient failures (leader election, reconnect: timeouts, no responders, 503) are
retried for ``retry_for`` seconds with the same message ids, then raise StoreClosed
(503, retry later); every other NATS error is StoreClosed at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import re
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from pinrelay.core.errors import ErrorCode, PinrelayError
from pinrelay.core.model import (
    TOPIC_RE,
    Accepted,
    ApiKey,
    Device,
    NewMessage,
    Scope,
    StoredMessage,
)
from pinrelay.store.base import (
    UNKNOWN_DEVICE,
    AppendResult,
    IdempotencyKey,
    Rejected,
    StoreClosed,
    StoreStats,
    to_results,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long an Idempotency-Key is remembered (the idem bucket's max age).
IDEMPOTENCY_TTL_S = 24 * 3600
#: A pending idempotency record older than this is taken over by the next caller
#: (its owner died, or failed and could not say so while the KV leader was away).
#: The takeover publishes exactly the owner's messages under the owner's
#: Nats-Msg-Ids, so even an owner still at work is harmless: JetStream's duplicate
#: window (2 min) stores each once.  Short, because a retry waits this long at most.
IDEMPOTENCY_LEASE_S = 5.0
#: The server's limit on one atomic batch.
MAX_ATOMIC_BATCH = 1000
#: Most streams one store spreads devices over.
MAX_PARTITIONS = 64
#: Stream metadata key recording the partition count the stream was made for.
PARTITIONS_META = "pinrelay.partitions"
#: Purges in flight at once for one ack_many.
ACK_CONCURRENCY = 32
#: Largest batch asked of one Direct Get.
MAX_DIRECT_BATCH = 1000

_SAFE_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: JetStream API error codes met here.
_ERR_NO_MESSAGE = 10037
_ERR_WRONG_LAST_SEQ = (10071, 10164)
_ERR_BATCH_DUPLICATE_ID = 10201
_ERR_STREAM_NAME_IN_USE = 10058
_ERR_NO_PEERS = 10005

#: Errors that mean "the cluster cannot answer right now": retried, then StoreClosed.
_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    TimeoutError,
    ConnectionError,
)


class _Msg(msgspec.Struct, array_like=True):
    """A stored message's payload (msgpack)."""

    id: str
    data: bytes
    topic: str | None
    urgency: str
    sent_ms: int
    expires_ms: int
    kind: str
    sender: str | None
    #: The device incarnation it was stored for (a recreated device never sees it).
    gen: str
    #: ``<append nonce>.<index>``: finds a batch again after a lost acknowledgement.
    origin: str


class _DeviceRec(msgspec.Struct, omit_defaults=True):
    token_hash: str
    created_ms: int
    gen: str
    label: str | None = None
    last_seen_ms: int | None = None
    last_cursor: int = 0
    acked_cursor: int = 0


class _KeyRec(msgspec.Struct):
    id: str
    name: str
    scope: str
    key_hash: str
    created_ms: int
    revoked: bool = False


class _Planned(msgspec.Struct, array_like=True):
    """What a first attempt chose for one message: a takeover must publish the same."""

    id: str | None
    sent_ms: int = 0
    expires_ms: int = 0


class _IdemRec(msgspec.Struct, omit_defaults=True):
    fingerprint: str
    nonce: str
    started_s: float
    done: bool = False
    results: list[AppendResult] = []
    #: The first attempt's ids and times, one per message: a takeover publishes
    #: exactly what its owner did, so whichever copy JetStream keeps, the answer's
    #: ids are the stored ones (even once the device acked them and they are gone).
    planned: list[_Planned] = []


_msg_enc = msgspec.msgpack.Encoder()
_msg_dec = msgspec.msgpack.Decoder(_Msg)
_json_enc = msgspec.json.Encoder()
_device_dec = msgspec.json.Decoder(_DeviceRec)
_key_dec = msgspec.json.Decoder(_KeyRec)
_idem_dec = msgspec.json.Decoder(_IdemRec)


def setup_may_retry(exc: BaseException) -> bool:
    """Whether creating a stream or bucket failed only for now.

    A cluster that just started may not know its peers yet ("no suitable peers for
    placement"), or be electing a leader: try again.
    """
    return isinstance(exc, (TimeoutError, *_TRANSIENT)) or (
        isinstance(exc, nats.js.errors.APIError)
        and (exc.err_code == _ERR_NO_PEERS or (exc.code or 0) >= 500)
    )


async def ensure_bucket(
    js: JetStreamContext, name: str, replicas: int, ttl: float | None
) -> KeyValue:
    """Create a KV bucket (file storage, history 1, reads on its leader) or adopt it."""
    config = KeyValueConfig(
        bucket=name,
        history=1,
        storage=StorageType.FILE,
        replicas=replicas,
        direct=False,
        ttl=ttl,
    )
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _ERR_STREAM_NAME_IN_USE:
            raise
        return await js.key_value(name)


def ttl_seconds(m: NewMessage, grace_s: int) -> int:
    """JetStream's TTL for ``m``: whole seconds, at least 1, never shorter than its life."""
    life_ms = max(0, m.expires_at_ms - m.sent_at_ms)
    return max(1, math.ceil(life_ms / 1000)) + grace_s


def _decode(seq: int, payload: bytes) -> _Msg | None:
    """A stored message, or None (logged) for something else published on our subjects."""
    try:
        return _msg_dec.decode(payload)
    except msgspec.DecodeError:
        log.warning("skipping sequence %d: not a pinrelay message", seq)
        return None


def _hash_key(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _to_device(pin: str, r: _DeviceRec) -> Device:
    return Device(
        pin, r.token_hash, r.label, r.created_ms, r.last_seen_ms, r.last_cursor, r.acked_cursor
    )


def _to_key(r: _KeyRec) -> ApiKey:
    return ApiKey(r.id, r.name, Scope(r.scope), r.key_hash, r.created_ms, r.revoked)


def _as_planned(
    messages: Sequence[NewMessage | Rejected], planned: list[_Planned]
) -> list[NewMessage | Rejected]:
    """``messages`` with the ids and times a first attempt chose for them."""
    if len(planned) != len(messages):  # same fingerprint, so only a corrupt record
        raise StoreClosed("idempotency record does not match its request")
    out: list[NewMessage | Rejected] = []
    for m, p in zip(messages, planned, strict=True):
        if isinstance(m, NewMessage) and p.id is not None:
            m = msgspec.structs.replace(
                m, id=p.id, sent_at_ms=p.sent_ms, expires_at_ms=p.expires_ms
            )
        out.append(m)
    return out


def _api_error(resp: dict[str, Any]) -> tuple[int, int, str] | None:
    err = resp.get("error")
    if not err:
        return None
    return int(err.get("code", 0)), int(err.get("err_code", 0)), str(err.get("description", ""))


_Outgoing = tuple[int, str, bytes, dict[str, str]]


def _atomic_chunks(outgoing: list[_Outgoing]) -> list[tuple[int, list[_Outgoing]]]:
    """Split a batch into atomic batches the server takes.

    At most 1,000 messages each, and a topic subject at most once per batch: the
    server refuses ("batch rollup sub invalid") a batch that rolls up a subject it
    also wrote.  A batch that repeats a topic of one device is therefore stored as
    several atomic batches, each durable on its own, in order.
    """
    chunks: list[tuple[int, list[_Outgoing]]] = []
    current: list[_Outgoing] = []
    rolled: set[str] = set()
    start = 0
    for n, item in enumerate(outgoing):
        subject, headers = item[1], item[3]
        repeat = "Nats-Rollup" in headers and subject in rolled
        if current and (len(current) >= MAX_ATOMIC_BATCH or repeat):
            chunks.append((start, current))
            current, rolled, start = [], set(), n
        current.append(item)
        if "Nats-Rollup" in headers:
            rolled.add(subject)
    if current:
        chunks.append((start, current))
    return chunks


class _KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


@dataclasses.dataclass
class _Buckets:
    devices: KeyValue
    keys: KeyValue
    keyhash: KeyValue
    idem: KeyValue


class JetStreamStore:
    """The cluster engine: one JetStream stream plus four KV buckets."""

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        stream: str = "PINRELAY",
        subject_prefix: str = "dev",
        bucket_prefix: str = "pinrelay",
        replicas: int = 3,
        direct_reads: bool = False,
        request_timeout: float = 2.0,
        retry_for: float = 3.0,
        ttl_grace_s: int = 2,
        sweep_scan: int = 1_000,
        atomic: bool = True,
        idem_lease_s: float = IDEMPOTENCY_LEASE_S,
        connect_timeout: float = 10.0,
        name: str = "pinrelay",
        partitions: int = 1,
    ) -> None:
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1 to {MAX_PARTITIONS}, not {partitions}")
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.stream = stream
        #: Devices are spread over this many streams by a hash of the PIN (opt-in).
        self.partitions = partitions
        self.prefix = subject_prefix
        self.bucket_prefix = bucket_prefix
        self.replicas = replicas
        self.direct_reads = direct_reads
        self.request_timeout = request_timeout
        #: How long a transient failure (leader election, reconnect) is retried
        #: before the caller gets StoreClosed (503, retry later).
        self.retry_for = retry_for
        self.ttl_grace_s = ttl_grace_s
        self.sweep_scan = sweep_scan
        self.name = name
        #: A pending idempotency record older than this is taken over.
        self.idem_lease_s = idem_lease_s
        #: How long open() tries to reach a server at all.
        self.connect_timeout = connect_timeout
        self._want_atomic = atomic
        self._atomic = False
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._kv: _Buckets | None = None
        self._locks = _KeyedLocks()
        self._last_written: dict[str, int] = {}
        self._last_wanted: dict[str, int] = {}
        self._sweep_from: dict[str, int] = {}
        #: Direct reads that a lagging follower sent to the leader (for metrics).
        self.direct_fallbacks = 0

    # --- names -----------------------------------------------------------------
    def bucket_names(self) -> list[str]:
        p = self.bucket_prefix
        return [f"{p}_devices", f"{p}_keys", f"{p}_keyhash", f"{p}_idem"]

    def partition(self, pin: str) -> int:
        """The partition of ``pin``: fixed for the life of the device."""
        return zlib.crc32(pin.encode()) % self.partitions if self.partitions > 1 else 0

    def stream_name(self, part: int) -> str:
        return self.stream if self.partitions == 1 else f"{self.stream}_{part}"

    def _part_prefix(self, part: int) -> str:
        return self.prefix if self.partitions == 1 else f"{self.prefix}.{part}"

    @property
    def streams(self) -> list[str]:
        """The message streams, partition 0 first."""
        return [self.stream_name(p) for p in range(self.partitions)]

    def _stream_of(self, pin: str) -> str:
        return self.stream_name(self.partition(pin))

    def _filter(self, pin: str) -> str:
        return f"{self._part_prefix(self.partition(pin))}.{pin}.>"

    def _subject(self, pin: str, topic: str | None) -> str:
        base = f"{self._part_prefix(self.partition(pin))}.{pin}"
        return f"{base}.m" if topic is None else f"{base}.t.{topic}"

    # --- lifecycle ---------------------------------------------------------------
    async def open(self) -> None:
        """Connect, then create or check the stream and the buckets (idempotent)."""
        nc = NATS()
        try:
            # Reconnect for ever once connected; but the first connect is bounded.
            await asyncio.wait_for(
                nc.connect(
                    self.servers,
                    name=self.name,
                    connect_timeout=2,
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    # One line per event, not nats-py's traceback per reconnect attempt.
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ),
                self.connect_timeout,
            )
        except Exception as exc:  # connect raises a variety of errors
            with contextlib.suppress(Exception):
                await nc.close()
            raise StoreClosed(f"cannot connect to NATS at {self.servers}: {exc!r}") from exc
        js = nc.jetstream(timeout=max(self.request_timeout, 10.0))
        deadline = time.monotonic() + self.connect_timeout
        try:
            while True:
                try:
                    await self._ensure_streams(nc, js)
                    buckets = [
                        await ensure_bucket(
                            js,
                            b,
                            self.replicas,
                            float(IDEMPOTENCY_TTL_S) if b.endswith("_idem") else None,
                        )
                        for b in self.bucket_names()
                    ]
                    break
                except (TimeoutError, nats.errors.Error) as exc:
                    if not setup_may_retry(exc) or time.monotonic() > deadline:
                        raise
                    log.info("setting up JetStream: %r; retrying", exc)
                    await asyncio.sleep(0.5)
        except (TimeoutError, nats.errors.Error) as exc:
            await nc.close()
            detail = exc.description if isinstance(exc, nats.js.errors.APIError) else None
            raise StoreClosed(
                f"cannot set up JetStream ({self.stream}): {detail or repr(exc)}"
            ) from exc
        except BaseException:
            await nc.close()
            raise
        self._nc, self._js = nc, js
        self._kv = _Buckets(*buckets)

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS: %r", exc)

    async def _on_disconnected(self) -> None:
        if self._nc is None:  # our own close(): not news
            return
        log.warning("NATS connection lost; reconnecting")

    async def _on_reconnected(self) -> None:
        nc = self._nc
        log.warning(
            "NATS connection back (%s)", nc.connected_url.netloc if nc and nc.connected_url else "?"
        )

    async def _ensure_streams(self, nc: NATS, js: JetStreamContext) -> None:
        """Create or check every partition's stream, after checking the layout.

        A cursor is a sequence of one stream, so the partition count of a cluster's
        data is fixed: a relay started with another count is refused, not let loose
        on the same subjects.
        """
        resp = json.loads(
            (
                await nc.request(
                    "$JS.API.STREAM.NAMES",
                    json.dumps({"subject": f"{self.prefix}.>"}).encode(),
                    timeout=self.request_timeout,
                )
            ).data
        )
        err = _api_error(resp)
        if err is not None:
            raise nats.js.errors.APIError(code=err[0], err_code=err[1], description=err[2])
        found = set(resp.get("streams") or [])
        strangers = sorted(found - set(self.streams))
        if strangers:
            raise StoreClosed(
                f"subjects {self.prefix}.> are already stored by {', '.join(strangers)}: "
                f"another partition count ({self.partitions} asked) or another stream name "
                "uses them; changing --partitions is a migration, not a setting"
            )
        atomic = True
        for part in range(self.partitions):
            atomic = await self._ensure_stream(js, part) and atomic
        # Atomic batch publish needs nats-server 2.12+; older servers drop the flag.
        self._atomic = self._want_atomic and atomic

    async def _ensure_stream(self, js: JetStreamContext, part: int) -> bool:
        """Create or adopt one stream; whether it takes atomic batches."""
        name = self.stream_name(part)
        config = StreamConfig(
            name=name,
            subjects=[f"{self._part_prefix(part)}.>"],
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            allow_rollup_hdrs=True,
            allow_msg_ttl=True,
            allow_direct=True,
            allow_atomic=self._want_atomic or None,
            duplicate_window=120.0,
            metadata={PARTITIONS_META: str(self.partitions)},
        )
        try:
            info = await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != _ERR_STREAM_NAME_IN_USE:
                raise
            # An operator's (or an older relay's) stream: keep it, switch on what we need.
            info = await js.stream_info(name)
            have = info.config
            made_for = (have.metadata or {}).get(PARTITIONS_META, str(self.partitions))
            if made_for != str(self.partitions):
                raise StoreClosed(
                    f"stream {name} was made for {made_for} partitions, not "
                    f"{self.partitions}: changing --partitions is a migration, not a setting"
                ) from exc
            if not (have.allow_rollup_hdrs and have.allow_msg_ttl and have.allow_direct) or (
                self._want_atomic and not have.allow_atomic
            ):
                have.allow_rollup_hdrs = True
                have.allow_msg_ttl = True
                have.allow_direct = True
                if self._want_atomic:
                    have.allow_atomic = True
                info = await js.update_stream(have)
        return bool(info.config.allow_atomic)

    async def close(self) -> None:
        nc, self._nc, self._js, self._kv = self._nc, None, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.drain()
            if not nc.is_closed:
                await nc.close()

    def healthy(self) -> bool:
        """Connected to a NATS server (a lost connection reconnects by itself)."""
        nc = self._nc
        return nc is not None and nc.is_connected and self._kv is not None

    @property
    def connection(self) -> tuple[NATS, JetStreamContext]:
        """The store's NATS connection, shared with the router (raises StoreClosed)."""
        nc, js, _ = self._conn()
        return nc, js

    def _conn(self) -> tuple[NATS, JetStreamContext, _Buckets]:
        nc, js, kv = self._nc, self._js, self._kv
        if nc is None or js is None or kv is None or nc.is_closed:
            raise StoreClosed("store is closed")
        return nc, js, kv

    async def _retry(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Run ``op``, retrying transient failures for ``retry_for`` s; then StoreClosed."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            self._conn()
            try:
                return await op()
            except _TRANSIENT as exc:
                err: BaseException = exc
            except nats.js.errors.APIError as exc:
                if getattr(exc, "code", None) not in (503, 504):
                    raise StoreClosed(f"{what}: {exc.description}") from exc
                err = exc
            except nats.errors.Error as exc:  # anything else from the client: not stored
                raise StoreClosed(f"{what}: {type(exc).__name__}: {exc}") from exc
            if time.monotonic() + delay > deadline:
                raise StoreClosed(f"{what}: {type(err).__name__}: {err}") from err
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _api(self, subject: str, body: dict[str, Any]) -> dict[str, Any]:
        """A raw JetStream API request (JSON in, JSON out), with errors left in the answer."""
        nc, _, _ = self._conn()
        msg = await nc.request(
            f"$JS.API.{subject}", json.dumps(body).encode(), timeout=self.request_timeout
        )
        resp: dict[str, Any] = json.loads(msg.data)
        err = _api_error(resp)
        if err is not None and err[0] >= 500:
            raise nats.js.errors.APIError(code=err[0], err_code=err[1], description=err[2])
        return resp

    async def _request(self, subject: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        """:meth:`_api` with transient failures retried (see :meth:`_retry`)."""

        async def op() -> dict[str, Any]:
            return await self._api(subject, body)

        return await self._retry(op, what)

    # --- KV helpers ----------------------------------------------------------------
    async def _kv_get(self, kv: KeyValue, key: str) -> tuple[bytes, int] | None:
        """The latest value and revision of ``key``, from the bucket's leader."""
        bucket = kv._name

        async def op() -> dict[str, Any]:
            return await self._api(
                f"STREAM.MSG.GET.KV_{bucket}", {"last_by_subj": f"$KV.{bucket}.{key}"}
            )

        resp = await self._retry(op, f"read {bucket}")
        err = _api_error(resp)
        if err is not None:
            if err[1] == _ERR_NO_MESSAGE or err[0] == 404:
                return None
            raise StoreClosed(f"read {bucket}: {err[2]}")
        message = resp["message"]
        hdrs = message.get("hdrs")
        if hdrs:
            raw = base64.b64decode(hdrs)
            if b"KV-Operation: DEL" in raw or b"KV-Operation: PURGE" in raw:
                return None
        data = base64.b64decode(message.get("data") or b"")
        return data, int(message["seq"])

    async def _kv_put(self, kv: KeyValue, key: str, value: bytes, revision: int) -> bool:
        """Write ``key`` if its latest revision is ``revision`` (0: absent); False if not.

        A raw publish rather than ``kv.create``: that one re-reads after a conflict
        and raises when the winner's write is not applied yet.
        """
        nc, _, _ = self._conn()
        subject = f"$KV.{kv._name}.{key}"
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}

        async def op() -> bool:
            msg = await nc.request(subject, value, timeout=self.request_timeout, headers=headers)
            if not msg.data and msg.headers and msg.headers.get("Status") == "503":
                raise nats.errors.NoRespondersError
            resp = json.loads(msg.data)
            err = _api_error(resp)
            if err is None:
                return True
            if err[1] in _ERR_WRONG_LAST_SEQ:
                return False
            raise nats.js.errors.APIError(code=err[0], err_code=err[1], description=err[2])

        return await self._retry(op, f"write {kv._name}")

    async def _kv_create(self, kv: KeyValue, key: str, value: bytes) -> bool:
        """Create ``key``; False if it exists."""
        return await self._kv_put(kv, key, value, 0)

    async def _kv_update(self, kv: KeyValue, key: str, value: bytes, revision: int) -> bool:
        """Compare-and-set; False if ``key`` moved past ``revision``."""
        return await self._kv_put(kv, key, value, revision)

    async def _kv_keys(self, kv: KeyValue) -> list[str]:
        """The bucket's keys, from its leader.

        Not ``kv.keys()``: that reads through an ephemeral consumer, which may sit on
        a lagging follower.  Deleted keys leave no subject (see :meth:`_kv_remove`).
        """
        bucket = kv._name
        prefix = f"$KV.{bucket}."
        keys: list[str] = []
        while True:
            body = {"subjects_filter": f"{prefix}>", "offset": len(keys)}
            resp = await self._request(f"STREAM.INFO.KV_{bucket}", body, "list")
            err = _api_error(resp)
            if err is not None:
                raise StoreClosed(f"list {bucket}: {err[2]}")
            subjects = resp.get("state", {}).get("subjects") or {}
            keys += [s.removeprefix(prefix) for s in subjects]
            if not subjects or len(keys) >= int(resp.get("total", 0)):
                return keys

    async def _kv_remove(self, kv: KeyValue, key: str) -> None:
        """Remove every revision of ``key`` and leave no marker behind.

        A purge of the subject rather than a KV delete: a delete marker would keep the
        subject (and the key count) alive.  A compare-and-set racing with it fails, as
        the subject's last sequence changed.
        """
        bucket = kv._name
        body = {"filter": f"$KV.{bucket}.{key}"}
        resp = await self._request(f"STREAM.PURGE.KV_{bucket}", body, "remove")
        err = _api_error(resp)
        if err is not None:
            raise StoreClosed(f"remove from {bucket}: {err[2]}")

    async def _kv_count(self, kv: KeyValue) -> int:
        bucket = kv._name
        resp = await self._request(f"STREAM.INFO.KV_{bucket}", {}, "count")
        err = _api_error(resp)
        if err is not None:
            raise StoreClosed(f"count {bucket}: {err[2]}")
        return int(resp.get("state", {}).get("num_subjects", 0))

    # --- devices -------------------------------------------------------------------
    async def _device(self, pin: str) -> tuple[_DeviceRec, int] | None:
        _, _, kv = self._conn()
        if not _SAFE_TOKEN.match(pin):
            return None
        got = await self._kv_get(kv.devices, pin)
        if got is None:
            return None
        return _device_dec.decode(got[0]), got[1]

    async def _update_device(
        self, pin: str, change: Callable[[_DeviceRec], _DeviceRec | None]
    ) -> _DeviceRec | None:
        """Apply ``change`` with compare-and-set; None if there is no device.

        ``change`` returns None for "nothing to write".  A conflict (another relay
        wrote in between) re-reads and tries again.
        """
        _, _, kv = self._conn()
        async with self._locks.hold(pin):
            for _ in range(100):
                got = await self._device(pin)
                if got is None:
                    return None
                rec, revision = got
                new = change(rec)
                if new is None:
                    return rec
                if await self._kv_update(kv.devices, pin, _json_enc.encode(new), revision):
                    return new
            raise StoreClosed(f"device {pin}: too many concurrent updates")

    async def create_device(
        self, pin: str, token_hash: str, label: str | None, now_ms: int
    ) -> Device | None:
        _, _, kv = self._conn()
        if not _SAFE_TOKEN.match(pin):
            return None
        rec = _DeviceRec(token_hash, now_ms, uuid.uuid4().hex, label)
        if not await self._kv_create(kv.devices, pin, _json_enc.encode(rec)):
            # A create retried after a lost acknowledgement finds its own record.
            got = await self._device(pin)
            if got is None or got[0].gen != rec.gen:
                return None
        return _to_device(pin, rec)

    async def get_device(self, pin: str) -> Device | None:
        got = await self._device(pin)
        return None if got is None else _to_device(pin, got[0])

    async def delete_device(self, pin: str) -> bool:
        _, _, kv = self._conn()
        async with self._locks.hold(pin):
            got = await self._device(pin)
            if got is None:
                return False
            await self._kv_remove(kv.devices, pin)
        # Messages stored meanwhile carry the old gen: no later device with this PIN sees them.
        await self._purge(pin, None)
        self._last_written.pop(pin, None)
        return True

    async def set_token(self, pin: str, token_hash: str) -> bool:
        def change(r: _DeviceRec) -> _DeviceRec | None:
            return (
                None
                if r.token_hash == token_hash
                else msgspec.structs.replace(r, token_hash=token_hash)
            )

        return await self._update_device(pin, change) is not None

    async def touch_device(self, pin: str, now_ms: int) -> None:
        def change(r: _DeviceRec) -> _DeviceRec | None:
            return (
                None
                if r.last_seen_ms == now_ms
                else msgspec.structs.replace(r, last_seen_ms=now_ms)
            )

        await self._update_device(pin, change)

    async def backlog(self, pin: str, now_ms: int) -> int:
        got = await self._device(pin)
        if got is None:
            return 0
        rec = got[0]
        n = 0
        async for _, m in self._scan(pin, rec.acked_cursor + 1, rec):
            if m.gen == rec.gen and m.expires_ms > now_ms:
                n += 1
        return n

    # --- keys --------------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> None:
        _, _, kv = self._conn()
        rec = _KeyRec(key.id, key.name, key.scope.value, key.key_hash, key.created_ms, key.revoked)
        if not _SAFE_TOKEN.match(key.id):
            raise PinrelayError(f"invalid key id {key.id!r}", ErrorCode.INVALID)
        if not await self._kv_create(kv.keys, key.id, _json_enc.encode(rec)):
            got = await self._kv_get(kv.keys, key.id)
            if got is None or _key_dec.decode(got[0]) != rec:
                raise PinrelayError(f"API key {key.id} exists", ErrorCode.CONFLICT)
        hashed = _hash_key(key.key_hash)
        if not await self._kv_create(kv.keyhash, hashed, key.id.encode()):
            got = await self._kv_get(kv.keyhash, hashed)
            if got is None or got[0] != key.id.encode():
                raise PinrelayError("an API key with that hash exists", ErrorCode.CONFLICT)

    async def _key(self, key_id: str) -> tuple[_KeyRec, int] | None:
        _, _, kv = self._conn()
        if not _SAFE_TOKEN.match(key_id):
            return None
        got = await self._kv_get(kv.keys, key_id)
        return None if got is None else (_key_dec.decode(got[0]), got[1])

    async def find_key(self, key_hash: str) -> ApiKey | None:
        _, _, kv = self._conn()
        got = await self._kv_get(kv.keyhash, _hash_key(key_hash))
        if got is None:
            return None
        found = await self._key(got[0].decode())
        if found is None or found[0].key_hash != key_hash:
            return None
        return _to_key(found[0])

    async def list_keys(self) -> list[ApiKey]:
        _, _, kv = self._conn()
        keys: list[ApiKey] = []
        for key_id in await self._kv_keys(kv.keys):
            found = await self._key(key_id)
            if found is not None:
                keys.append(_to_key(found[0]))
        keys.sort(key=lambda k: (k.created_ms, k.id))
        return keys

    async def revoke_key(self, key_id: str) -> bool:
        _, _, kv = self._conn()
        for _ in range(100):
            found = await self._key(key_id)
            if found is None or found[0].revoked:
                return False
            rec, revision = found
            new = msgspec.structs.replace(rec, revoked=True)
            if await self._kv_update(kv.keys, key_id, _json_enc.encode(new), revision):
                return True
        raise StoreClosed(f"key {key_id}: too many concurrent updates")

    # --- append --------------------------------------------------------------------
    async def append(
        self, messages: Sequence[NewMessage | Rejected], idem: IdempotencyKey | None = None
    ) -> tuple[list[Accepted | Rejected], bool]:
        """Store ``messages``; see :meth:`pinrelay.store.base.Store.append`.

        Atomicity: with ``allow_atomic`` (nats-server 2.12+) up to 1,000 messages go in
        one atomic batch publish (all stored or none); a longer batch is several atomic
        batches, each durable on its own.  Without it (an older server) messages are
        published one by one: per-message durable, not atomic.  Either way the
        Idempotency-Key makes a retried request safe: its retry reuses the first
        attempt's Nats-Msg-Ids, which JetStream de-duplicates.
        """
        self._conn()
        if not messages:
            return [], False
        if idem is None:
            results = await self._append(messages, uuid.uuid4().hex)
            return to_results(results), False
        return await self._append_idempotent(messages, idem)

    async def _append_idempotent(
        self, messages: Sequence[NewMessage | Rejected], idem: IdempotencyKey
    ) -> tuple[list[Accepted | Rejected], bool]:
        _, _, kv = self._conn()
        key = _hash_key(idem.key)
        planned = [
            _Planned(m.id, m.sent_at_ms, m.expires_at_ms)
            if isinstance(m, NewMessage)
            else _Planned(m.id)
            for m in messages
        ]
        mine = _IdemRec(idem.fingerprint, uuid.uuid4().hex, time.time(), planned=planned)
        delay = 0.01
        while True:
            if await self._kv_create(kv.idem, key, _json_enc.encode(mine)):
                owned = mine
                break
            got = await self._kv_get(kv.idem, key)
            if got is None:  # the winner's write is not applied yet, or it expired
                await asyncio.sleep(delay)
                continue
            rec, revision = _idem_dec.decode(got[0]), got[1]
            if rec.nonce == mine.nonce:  # our create, retried after a lost acknowledgement
                owned = mine
                break
            if rec.fingerprint != idem.fingerprint:
                raise PinrelayError(
                    "Idempotency-Key was used with a different request", ErrorCode.CONFLICT
                )
            if rec.done:
                return to_results(rec.results), True
            if time.time() - rec.started_s > self.idem_lease_s:
                # Its owner died or gave up: take over with the same nonce.
                takeover = msgspec.structs.replace(rec, started_s=time.time())
                if await self._kv_update(kv.idem, key, _json_enc.encode(takeover), revision):
                    owned = takeover
                    break
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        try:
            if owned is not mine:
                # A takeover reuses the first attempt's Nats-Msg-Ids, so what that
                # attempt stored is de-duplicated: publish (and answer with) its ids,
                # never ours (found by the chaos test).
                messages = _as_planned(messages, owned.planned)
            results = await self._append(messages, owned.nonce)
        except BaseException:
            # Let the next attempt take over at once (it reuses our nonce, so nothing
            # stored here is stored twice).  Best effort: the cluster may be away.
            with contextlib.suppress(Exception):
                got = await self._kv_get(kv.idem, key)
                if got is not None:
                    abandoned = msgspec.structs.replace(owned, started_s=0.0)
                    await self._kv_update(kv.idem, key, _json_enc.encode(abandoned), got[1])
            raise
        done = msgspec.structs.replace(owned, done=True, results=results)
        for _ in range(100):
            got = await self._kv_get(kv.idem, key)
            if got is None:
                ok = await self._kv_create(kv.idem, key, _json_enc.encode(done))
            else:
                ok = await self._kv_update(kv.idem, key, _json_enc.encode(done), got[1])
            if ok:
                break
        return to_results(results), False

    async def _append(
        self, messages: Sequence[NewMessage | Rejected], nonce: str
    ) -> list[AppendResult]:
        pins = sorted({m.pin for m in messages if isinstance(m, NewMessage)})
        found = await asyncio.gather(*(self._device(p) for p in pins))
        devices = {p: got[0] for p, got in zip(pins, found, strict=True) if got is not None}
        results: list[AppendResult | None] = []
        outgoing: list[_Outgoing] = []
        for i, m in enumerate(messages):
            if isinstance(m, Rejected):
                results.append(AppendResult(pin=m.pin, id=m.id, reason=m.reason))
                continue
            rec = devices.get(m.pin)
            if rec is None:
                results.append(AppendResult(pin=m.pin, id=m.id, reason=UNKNOWN_DEVICE))
                continue
            if m.topic is not None and not TOPIC_RE.match(m.topic):
                results.append(AppendResult(pin=m.pin, id=m.id, reason="invalid topic"))
                continue
            results.append(None)
            origin = f"{nonce}.{i}"
            payload = _msg_enc.encode(
                _Msg(
                    m.id,
                    m.data,
                    m.topic,
                    m.urgency,
                    m.sent_at_ms,
                    m.expires_at_ms,
                    m.kind,
                    m.sender,
                    rec.gen,
                    origin,
                )
            )
            # Built here, never from a caller: see the module docstring.
            headers = {"Nats-Msg-Id": origin, "Nats-TTL": str(ttl_seconds(m, self.ttl_grace_s))}
            if m.topic is not None:
                headers["Nats-Rollup"] = "sub"
            outgoing.append((i, self._subject(m.pin, m.topic), payload, headers))

        seq_of: dict[int, int] = {}
        if self._atomic and len(outgoing) > 1:
            # An atomic batch goes to one stream: one group per partition, each in the
            # order given (so per device), and chunked.
            groups: dict[int, list[_Outgoing]] = {}
            for item in outgoing:
                m = messages[item[0]]
                assert isinstance(m, NewMessage)
                groups.setdefault(self.partition(m.pin), []).append(item)
            for part, group in sorted(groups.items()):
                for start, chunk in _atomic_chunks(group):
                    if len(chunk) == 1:
                        i, subject, payload, headers = chunk[0]
                        seq_of[i] = await self._publish_one(subject, payload, headers)
                        continue
                    batch_id = f"{nonce}-{start}" if part == 0 else f"{nonce}-{part}-{start}"
                    seqs = await self._publish_atomic(chunk, batch_id, devices)
                    seq_of.update(zip((c[0] for c in chunk), seqs, strict=True))
        else:
            for i, subject, payload, headers in outgoing:
                seq_of[i] = await self._publish_one(subject, payload, headers)

        highest: dict[str, int] = {}
        for i, seq in seq_of.items():
            m = messages[i]
            assert isinstance(m, NewMessage)
            results[i] = AppendResult(pin=m.pin, id=m.id, cursor=seq, expires_ms=m.expires_at_ms)
            highest[m.pin] = max(highest.get(m.pin, 0), seq)
        await asyncio.gather(*(self._raise_last_cursor(p, s) for p, s in highest.items()))
        return [r for r in results if r is not None]

    async def _publish_one(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        *,
        expect_duplicate: bool = False,
    ) -> int:
        nc, _, _ = self._conn()

        async def op() -> int:
            msg = await nc.request(
                subject, payload, timeout=self.request_timeout, headers=dict(headers)
            )
            if not msg.data and msg.headers and msg.headers.get("Status") == "503":
                raise nats.errors.NoRespondersError
            resp = json.loads(msg.data)
            err = _api_error(resp)
            if err is not None:
                if err[0] >= 500:
                    raise nats.js.errors.APIError(code=err[0], err_code=err[1], description=err[2])
                raise StoreClosed(f"publish refused: {err[2]}")
            # A retry after a lost acknowledgement answers duplicate=true with the
            # original sequence: stored once, and we learn where.
            if expect_duplicate and not resp.get("duplicate"):
                log.error("a batch thought stored was stored again at %s", resp["seq"])
            return int(resp["seq"])

        return await self._retry(op, "publish")

    async def _publish_atomic(
        self,
        chunk: list[_Outgoing],
        batch_id: str,
        devices: dict[str, _DeviceRec],
    ) -> list[int]:
        nc, _, _ = self._conn()
        last = len(chunk)

        async def op() -> list[int]:
            for n, (_, subject, payload, headers) in enumerate(chunk, 1):
                hdrs = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(n)}
                if n < last:
                    await nc.publish(subject, payload, headers=hdrs)
                    continue
                hdrs["Nats-Batch-Commit"] = "1"
                msg = await nc.request(subject, payload, timeout=self.request_timeout, headers=hdrs)
                if not msg.data and msg.headers and msg.headers.get("Status") == "503":
                    raise nats.errors.NoRespondersError
                resp = json.loads(msg.data)
                err = _api_error(resp)
                if err is None:
                    top, count = int(resp["seq"]), int(resp.get("count", last))
                    if count != last:
                        raise StoreClosed(f"atomic batch stored {count} of {last}")
                    return list(range(top - last + 1, top + 1))
                if err[1] == _ERR_BATCH_DUPLICATE_ID:
                    # An earlier attempt was committed, its acknowledgement lost.
                    return await self._find_batch(chunk, devices)
                if err[0] >= 500:
                    raise nats.js.errors.APIError(code=err[0], err_code=err[1], description=err[2])
                raise StoreClosed(f"atomic publish refused: {err[2]}")
            raise AssertionError("unreachable")

        return await self._retry(op, "atomic publish")

    async def _find_batch(
        self, chunk: list[_Outgoing], devices: dict[str, _DeviceRec]
    ) -> list[int]:
        """Sequences of a batch already committed: an atomic batch is contiguous."""
        origins = {headers["Nats-Msg-Id"]: k for k, (_, _, _, headers) in enumerate(chunk)}
        # <prefix>[.<partition>].<PIN>.…
        at = self.prefix.count(".") + (2 if self.partitions > 1 else 1)
        pins = {subject.split(".")[at] for _, subject, _, _ in chunk}
        for pin in sorted(pins):
            rec = devices[pin]
            scan = self._scan_leader(self._stream_of(pin), self._filter(pin), rec.acked_cursor + 1)
            async with contextlib.aclosing(scan):
                async for seq, m in scan:
                    k = origins.get(m.origin)
                    if k is not None:
                        first = seq - k
                        return list(range(first, first + len(chunk)))
        # Not in the stream any more: the device acked it.  Each message of the batch
        # was registered under its Nats-Msg-Id, and a lone publish with that id is
        # answered duplicate=true with its sequence and stores nothing.
        return [
            await self._publish_one(subject, payload, headers, expect_duplicate=True)
            for _, subject, payload, headers in chunk
        ]

    async def _raise_last_cursor(self, pin: str, seq: int) -> None:
        """Raise the device's last_cursor to at least ``seq`` (coalesced per device)."""
        self._last_wanted[pin] = max(self._last_wanted.get(pin, 0), seq)
        if self._last_written.get(pin, 0) >= seq:
            return
        async with self._locks.hold(f"last:{pin}"):
            if self._last_written.get(pin, 0) >= seq:
                return
            target = self._last_wanted.get(pin, seq)

            def change(r: _DeviceRec) -> _DeviceRec | None:
                return (
                    None
                    if r.last_cursor >= target
                    else msgspec.structs.replace(r, last_cursor=target)
                )

            await self._update_device(pin, change)
            self._last_written[pin] = max(self._last_written.get(pin, 0), target)
            if self._last_wanted.get(pin) == target:
                self._last_wanted.pop(pin, None)
                self._last_written.pop(pin, None)

    # --- read ----------------------------------------------------------------------
    async def read(self, pin: str, after: int, limit: int, now_ms: int) -> list[StoredMessage]:
        got = await self._device(pin)
        if got is None or limit <= 0:
            return []
        rec = got[0]
        out: list[StoredMessage] = []
        scan = self._scan(pin, max(after, rec.acked_cursor) + 1, rec, limit)
        async with contextlib.aclosing(scan):
            async for seq, m in scan:
                if m.gen != rec.gen or m.expires_ms <= now_ms:
                    continue
                out.append(
                    StoredMessage(
                        pin,
                        seq,
                        m.id,
                        m.data,
                        m.topic,
                        m.urgency,
                        m.sent_ms,
                        m.expires_ms,
                        m.kind,
                        m.sender,
                    )
                )
                if len(out) >= limit:
                    break
        if out and out[-1].cursor > rec.last_cursor:
            # An append stored it but has not raised last_cursor yet (or its relay died
            # in between): raise it now, so an ack of what we hand out is never refused
            # as "beyond the device's last message".
            await self._raise_last_cursor(pin, out[-1].cursor)
        return out

    async def _scan(
        self, pin: str, start: int, rec: _DeviceRec, hint: int = MAX_DIRECT_BATCH
    ) -> AsyncGenerator[tuple[int, _Msg], None]:
        """The device's stored messages from sequence ``start`` on, in order."""
        subject, stream = self._filter(pin), self._stream_of(pin)
        if self.direct_reads:
            while True:
                items, exhausted = await self._direct_batch(
                    stream, subject, start, min(max(hint, 1), MAX_DIRECT_BATCH)
                )
                for seq, m in items:
                    yield seq, m
                    start = seq + 1
                if not exhausted:
                    continue
                # A follower's "no more" is only trusted once it has reached the
                # device's last_cursor, which every append raises before returning.
                if start - 1 >= rec.last_cursor:
                    return
                self.direct_fallbacks += 1
                break  # it lags: ask the leader for the rest
        scan = self._scan_leader(stream, subject, start)
        async with contextlib.aclosing(scan):
            async for item in scan:
                yield item

    async def _scan_leader(
        self, stream: str, subject: str, start: int
    ) -> AsyncGenerator[tuple[int, _Msg], None]:
        """One message per request from the stream leader: read-your-write."""
        seq = start
        while True:
            resp = await self._request(
                f"STREAM.MSG.GET.{stream}", {"seq": seq, "next_by_subj": subject}, "read"
            )
            err = _api_error(resp)
            if err is not None:
                if err[1] == _ERR_NO_MESSAGE or err[0] == 404:
                    return
                raise StoreClosed(f"read: {err[2]}")
            message = resp["message"]
            got = int(message["seq"])
            decoded = _decode(got, base64.b64decode(message.get("data") or b""))
            if decoded is not None:
                yield got, decoded
            seq = got + 1

    async def _direct_batch(
        self, stream: str, subject: str, start: int, batch: int
    ) -> tuple[list[tuple[int, _Msg]], bool]:
        """One batched Direct Get: (messages, whether the responder had no more)."""
        nc, _, _ = self._conn()

        async def op() -> tuple[list[tuple[int, _Msg]], bool]:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            try:
                body = {"seq": start, "next_by_subj": subject, "batch": batch}
                await nc.publish(
                    f"$JS.API.DIRECT.GET.{stream}", json.dumps(body).encode(), reply=inbox
                )
                items: list[tuple[int, _Msg]] = []
                while True:
                    msg = await sub.next_msg(timeout=self.request_timeout)
                    hdrs = msg.headers or {}
                    status = hdrs.get("Status")
                    if status == "404":
                        return items, True
                    if status == "204":  # EOB
                        return items, int(hdrs.get("Nats-Num-Pending", "0")) == 0
                    if status is not None:
                        raise nats.js.errors.APIError(
                            code=int(status), description=str(hdrs.get("Description", ""))
                        )
                    seq = int(hdrs["Nats-Sequence"])
                    decoded = _decode(seq, msg.data)
                    if decoded is not None:
                        items.append((seq, decoded))
            finally:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

        return await self._retry(op, "direct read")

    # --- ack / sweep / stats ----------------------------------------------------------
    async def _purge(self, pin: str, keep_from: int | None) -> int:
        body: dict[str, Any] = {"filter": self._filter(pin)}
        if keep_from is not None:
            body["seq"] = keep_from
        resp = await self._request(f"STREAM.PURGE.{self._stream_of(pin)}", body, "purge")
        err = _api_error(resp)
        if err is not None:
            raise StoreClosed(f"purge: {err[2]}")
        return int(resp.get("purged", 0))

    async def ack(self, pin: str, cursor: int) -> None:
        got = await self._device(pin)
        if got is None:
            return
        if cursor > got[0].acked_cursor:
            # Keeps every sequence >= cursor + 1 of this device's subjects only.
            await self._purge(pin, cursor + 1)

        def change(r: _DeviceRec) -> _DeviceRec | None:
            return (
                None
                if r.acked_cursor >= cursor
                else msgspec.structs.replace(r, acked_cursor=cursor)
            )

        await self._update_device(pin, change)

    async def ack_many(self, acks: Sequence[tuple[str, int]]) -> None:
        """:meth:`ack` for many devices: one purge per device (the highest cursor wins).

        JetStream has no multi-subject purge, so this is one request per device, run
        concurrently (at most ``ACK_CONCURRENCY`` at a time).
        """
        self._conn()
        highest: dict[str, int] = {}
        for pin, cursor in acks:
            highest[pin] = max(highest.get(pin, cursor), cursor)
        gate = asyncio.Semaphore(ACK_CONCURRENCY)

        async def one(pin: str, cursor: int) -> None:
            async with gate:
                await self.ack(pin, cursor)

        await asyncio.gather(*(one(p, c) for p, c in highest.items()))

    async def sweep(self, now_ms: int, limit: int = 1000) -> int:
        """Delete up to ``limit`` messages expired at ``now_ms``; how many went.

        JetStream's per-message TTL removes expired messages by itself (``Nats-TTL``,
        ``ttl_grace_s`` after their expiry); this sweep exists for the contract's
        logical clock and for a backlog the TTL has not reached yet.  It looks at up to
        ``sweep_scan`` messages per call on the leader, resuming where the last call
        stopped, so on a large stream one call covers a window, not everything.
        """
        self._conn()
        deleted = 0
        for part in range(self.partitions):
            if deleted >= limit:
                break
            deleted += await self._sweep_stream(part, now_ms, limit - deleted)
        return deleted

    async def _sweep_stream(self, part: int, now_ms: int, limit: int) -> int:
        stream = self.stream_name(part)
        info = await self._request(f"STREAM.INFO.{stream}", {}, "info")
        state = info.get("state", {})
        first, last_seq = int(state.get("first_seq", 0)), int(state.get("last_seq", 0))
        resume = self._sweep_from.get(stream, 0)
        start = resume if first <= resume <= last_seq else first
        deleted = scanned = 0
        next_from = 0
        scan = self._scan_leader(stream, f"{self._part_prefix(part)}.>", start)
        async with contextlib.aclosing(scan):
            async for seq, m in scan:
                scanned += 1
                next_from = seq + 1
                if m.expires_ms <= now_ms:
                    body = {"seq": seq, "no_erase": True}
                    resp = await self._request(f"STREAM.MSG.DELETE.{stream}", body, "delete")
                    if _api_error(resp) is None:
                        deleted += 1
                if deleted >= limit or scanned >= self.sweep_scan:
                    break
            else:
                next_from = 0  # reached the end: the next sweep starts from the first
        self._sweep_from[stream] = next_from
        return deleted

    async def stats(self) -> StoreStats:
        _, _, kv = self._conn()
        infos = [await self._request(f"STREAM.INFO.{n}", {}, "info") for n in self.streams]
        messages = sum(int(i.get("state", {}).get("messages", 0)) for i in infos)
        devices = await self._kv_count(kv.devices)
        return StoreStats(devices=devices, messages=messages)

    # --- housekeeping for tests and tools -------------------------------------------------
    async def destroy(self) -> None:
        """Delete the stream and the buckets (tests, `cluster` tooling)."""
        _, js, _ = self._conn()
        for name in [*self.streams, *(f"KV_{b}" for b in self.bucket_names())]:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
