"""The SQLite engine's schema: its migrations, in order (store/sqlite.py applies them).

PRAGMA user_version counts those applied; a migration is never changed once
released, only followed by another.
"""

from __future__ import annotations

from pinrelay.store import sqlite_channel_ops as channel_ops
from pinrelay.store import sqlite_credit_ops as credit_ops
from pinrelay.store import sqlite_incident_ops as incident_ops
from pinrelay.store import sqlite_webhook_ops as webhook_ops
from pinrelay.store.sqlite_figure_ops import DELAY_DAYS_SCHEMA, FIGURES_SCHEMA

#: Schema migrations, applied in order; PRAGMA user_version counts those applied.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE devices (
        pin TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL,
        label TEXT,
        created_ms INTEGER NOT NULL,
        last_seen_ms INTEGER,
        last_cursor INTEGER NOT NULL DEFAULT 0,
        acked_cursor INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        pin TEXT NOT NULL,
        cursor INTEGER NOT NULL,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        sender TEXT,
        topic TEXT,
        urgency TEXT NOT NULL,
        sent_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (pin, cursor)
    ) WITHOUT ROWID;
    CREATE INDEX messages_expiry ON messages (expires_ms);
    CREATE INDEX messages_topic ON messages (pin, topic) WHERE topic IS NOT NULL;
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        scope TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        created_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        result BLOB NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX idempotency_age ON idempotency (created_ms);
    """,
    """
    CREATE TABLE contacts (
        owner TEXT NOT NULL,
        other TEXT NOT NULL,
        state TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        PRIMARY KEY (owner, other)
    ) WITHOUT ROWID;
    CREATE TABLE unread (
        reader TEXT NOT NULL,
        id TEXT NOT NULL,
        sender TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        grp TEXT,
        PRIMARY KEY (reader, id)
    ) WITHOUT ROWID;
    CREATE INDEX unread_expiry ON unread (expires_ms);
    """,
    """
    CREATE TABLE groups (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        creator TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE group_members (
        grp TEXT NOT NULL,
        pin TEXT NOT NULL,
        PRIMARY KEY (grp, pin)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_pin ON group_members (pin);
    """,
    """
    CREATE TABLE pairing (
        code_hash TEXT PRIMARY KEY,
        pin TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        used_ms INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX pairing_expiry ON pairing (expires_ms);
    """,
    """
    CREATE TABLE subscriptions (
        id TEXT PRIMARY KEY,
        pin TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        p256dh TEXT,
        auth TEXT,
        vapid_key TEXT,
        deleted_ms INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX subscriptions_pin ON subscriptions (pin) WHERE deleted_ms IS NULL;
    CREATE INDEX subscriptions_gone ON subscriptions (deleted_ms) WHERE deleted_ms IS NOT NULL;
    CREATE TABLE push_receipts (
        key TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX push_receipts_expiry ON push_receipts (expires_ms);
    """,
    # Tenants (issue 15): what existed before belongs to the default tenant.
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        suspended INTEGER NOT NULL DEFAULT 0,
        quotas BLOB NOT NULL DEFAULT '{}',
        deleted_ms INTEGER
    ) WITHOUT ROWID;
    INSERT INTO tenants (id, name, created_ms) VALUES
        ('default', 'default', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
    ALTER TABLE devices ADD COLUMN tenant TEXT DEFAULT 'default';
    CREATE INDEX devices_tenant ON devices (tenant);
    ALTER TABLE api_keys ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
    CREATE TABLE grants (
        pin TEXT NOT NULL,
        tenant TEXT NOT NULL,
        PRIMARY KEY (pin, tenant)
    ) WITHOUT ROWID;
    """,
    # Portability (issue 15): a device's pending request to move to another tenant.
    """
    ALTER TABLE devices ADD COLUMN move_to TEXT;
    ALTER TABLE devices ADD COLUMN move_expires_ms INTEGER;
    """,
    # Channels and broadcasts (core/channels.py).
    channel_ops.SCHEMA,
    incident_ops.SCHEMA,
    incident_ops.PROBE_SCHEMA,
    credit_ops.SCHEMA,
    FIGURES_SCHEMA,
    webhook_ops.SCHEMA,
    # Delays per tenant and day, for service levels' delay targets (delay_days.py).
    DELAY_DAYS_SCHEMA,
    # The batch of counts a relay last added to a broadcast (Store.count_broadcasts).
    "ALTER TABLE broadcast_counts ADD COLUMN batch TEXT NOT NULL DEFAULT '';",
    # A device's newest pairing code replaces its earlier ones (Store.create_pairing).
    """
    ALTER TABLE pairing ADD COLUMN replaced INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX pairing_pin ON pairing (pin);
    """,
    # Budgets shared by every relay and kept across restarts (Store.take_budget).
    """
    CREATE TABLE budgets (
        key TEXT PRIMARY KEY,
        empty_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # An entry read is kept until it expires: its receipts are known to be stored
    # (Store.append's ``unread`` and ``read``).
    "ALTER TABLE unread ADD COLUMN is_read INTEGER NOT NULL DEFAULT 0;",
]
