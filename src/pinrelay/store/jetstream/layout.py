"""Where everything lives: stream, subject and bucket names (pure, no I/O).

One file-storage stream on ``<prefix>.>``; a message for device D is stored on
``<prefix>.D.m``, or ``<prefix>.D.t.<topic>`` (rolled up per topic).  With K > 1
partitions, devices are spread over K streams ``<stream>_<p>`` on
``<prefix>.<p>.>``, p = crc32(PIN) mod K.  The KV buckets are
``<bucket_prefix>_devices``, ``_keys``, ``_keyhash``, ``_idem``, ``_contacts``,
``_unread``, ``_groups``, ``_subscriptions``, ``_tenants`` and ``_channels`` (and
``_pairing``, ``_receipts`` and ``_budgets``, with a max age).  Every name is configurable, so
several relays or tests can share a cluster.

Each stream also holds its chat messages' expiry schedules and notices
(:mod:`.expiry`) on ``<prefix>-expiry[.<p>].>``: outside ``<prefix>.>``, so that the
feed, reads and purges of a device never see them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

#: Most streams one store spreads devices over.
MAX_PARTITIONS = 64
#: Stream metadata key recording the partition count the stream was made for.
PARTITIONS_META = "pinrelay.partitions"
#: Stream metadata key recording the shape of the store's data (:mod:`.setup`,
#: "Layout versions"); a stream without it holds layout 1.
LAYOUT_META = "pinrelay.layout"
#: The layout this code writes: 2, tenants (records without one are the default's).
LAYOUT_VERSION = 2
#: The buckets' names after the prefix, in :class:`Buckets`' order.
_BUCKET_KINDS = (
    "devices",
    "keys",
    "keyhash",
    "idem",
    "contacts",
    "unread",
    "groups",
    "subscriptions",
    "tenants",
    "channels",
)


@dataclass(frozen=True, slots=True)
class Bucket:
    """A KV bucket, by name (kept here, never read back from nats-py's objects)."""

    name: str

    @property
    def stream(self) -> str:
        """The stream behind the bucket."""
        return f"KV_{self.name}"

    @property
    def prefix(self) -> str:
        """The subject prefix of its keys."""
        return f"$KV.{self.name}."

    def subject(self, key: str) -> str:
        return f"{self.prefix}{key}"


@dataclass(frozen=True, slots=True)
class Buckets:
    devices: Bucket
    keys: Bucket
    keyhash: Bucket
    idem: Bucket
    contacts: Bucket
    unread: Bucket
    groups: Bucket
    subscriptions: Bucket
    tenants: Bucket
    channels: Bucket


@dataclass(frozen=True, slots=True)
class Layout:
    """The names of one store's streams, subjects and buckets."""

    stream: str
    prefix: str
    partitions: int
    bucket_prefix: str

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1 to {MAX_PARTITIONS}, not {self.partitions}")

    @property
    def buckets(self) -> Buckets:
        return Buckets(*(Bucket(name) for name in self.bucket_names()))

    def bucket_names(self) -> list[str]:
        """Every bucket's name, in :class:`Buckets`' order."""
        return [f"{self.bucket_prefix}_{kind}" for kind in _BUCKET_KINDS]

    def partition(self, pin: str) -> int:
        """The partition of ``pin``: fixed for the life of the device."""
        return zlib.crc32(pin.encode()) % self.partitions if self.partitions > 1 else 0

    def stream_name(self, part: int) -> str:
        return self.stream if self.partitions == 1 else f"{self.stream}_{part}"

    def part_prefix(self, part: int) -> str:
        """The subject prefix of one partition's stream."""
        return self.prefix if self.partitions == 1 else f"{self.prefix}.{part}"

    @property
    def streams(self) -> list[str]:
        """The message streams, partition 0 first."""
        return [self.stream_name(p) for p in range(self.partitions)]

    def stream_of(self, pin: str) -> str:
        return self.stream_name(self.partition(pin))

    def expiry_prefix(self, part: int) -> str:
        """The subject prefix of one stream's expiry schedules and notices (.expiry)."""
        base = f"{self.prefix}-expiry"
        return base if self.partitions == 1 else f"{base}.{part}"

    def stream_subjects(self, part: int) -> list[str]:
        """What one partition's stream stores: its devices' messages, their expiries."""
        return [f"{self.part_prefix(part)}.>", f"{self.expiry_prefix(part)}.>"]

    def schedule_subject(self, pin: str, message_id: str) -> str:
        """The expiry schedule of the chat message ``message_id`` for ``pin``."""
        return f"{self.expiry_prefix(self.partition(pin))}.s.{pin}.{message_id}"

    def fired_subject(self, pin: str) -> str:
        """Where the schedules of ``pin``'s chat messages publish when they fire."""
        return f"{self.expiry_prefix(self.partition(pin))}.f.{pin}"

    def decoy_subject(self, pin: str) -> str:
        """Where a decoy for ``pin`` is published (:meth:`.appends.Appender.decoy`):
        among its partition's device subjects, so the feed delivers it as it does a
        message (and drops it: ``_`` is no PIN), but no device's."""
        return f"{self.part_prefix(self.partition(pin))}._.d"

    def fired_filter(self, part: int) -> str:
        return f"{self.expiry_prefix(part)}.f.>"

    def filter(self, pin: str) -> str:
        """Every subject of ``pin``'s messages."""
        return f"{self.part_prefix(self.partition(pin))}.{pin}.>"

    def subject(self, pin: str, topic: str | None) -> str:
        """Where a message for ``pin`` is published (a topic gets its own subject)."""
        base = f"{self.part_prefix(self.partition(pin))}.{pin}"
        return f"{base}.m" if topic is None else f"{base}.t.{topic}"

    def pin_of(self, subject: str) -> str:
        """The PIN in a message subject: ``<prefix>[.<partition>].<PIN>.…``."""
        at = self.prefix.count(".") + (2 if self.partitions > 1 else 1)
        return subject.split(".")[at]

    @property
    def pairing(self) -> Bucket:
        """Pairing codes (:mod:`.pairing`): a bucket with a max age, beside the others."""
        return Bucket(f"{self.bucket_prefix}_pairing")

    @property
    def budgets(self) -> Bucket:
        """Budgets shared by the relays (:mod:`.budgets`): a bucket with a max age."""
        return Bucket(f"{self.bucket_prefix}_budgets")

    @property
    def push_receipts(self) -> Bucket:
        """Web Push receipts (:mod:`.pushreceipts`): a bucket with a max age too."""
        return Bucket(f"{self.bucket_prefix}_receipts")
