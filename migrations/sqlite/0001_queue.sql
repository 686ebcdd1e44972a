-- The release queue. Times are UTC milliseconds since the epoch, bound from the caller's clock.
CREATE TABLE releases (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id   TEXT    NOT NULL,
    instance_name TEXT    NOT NULL DEFAULT '',
    region        TEXT    NOT NULL,
    policy        TEXT    NOT NULL,
    force         INTEGER NOT NULL CHECK (force IN (0, 1)),
    terminate_subscription INTEGER NOT NULL CHECK (terminate_subscription IN (0, 1)),
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'in_flight', 'succeeded', 'failed', 'cancelled')),
    not_before    INTEGER NOT NULL,
    batch_id      INTEGER,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_code     TEXT,
    last_message  TEXT,
    request_id    TEXT,
    reasons       TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
-- At most one active release per instance: re-planning never queues an instance twice.
CREATE UNIQUE INDEX releases_one_active ON releases (instance_id) WHERE state IN ('pending', 'in_flight');
CREATE INDEX releases_due ON releases (state, not_before) WHERE state = 'pending';
CREATE INDEX releases_batch ON releases (batch_id);

CREATE TABLE batches (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    region           TEXT    NOT NULL,
    force            INTEGER NOT NULL,
    terminate_subscription INTEGER NOT NULL,
    client_token     TEXT    NOT NULL UNIQUE,
    state            TEXT    NOT NULL CHECK (state IN ('open', 'done', 'split', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    claims           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    last_code        TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX batches_due ON batches (state, next_attempt_at) WHERE state = 'open';

CREATE TABLE policy_runs (
    policy        TEXT    NOT NULL,
    scheduled_for INTEGER NOT NULL,
    owner         TEXT    NOT NULL,
    started_at    INTEGER NOT NULL,
    finished_at   INTEGER,
    outcome       TEXT,
    planned       INTEGER NOT NULL DEFAULT 0,
    enqueued      INTEGER NOT NULL DEFAULT 0,
    cancelled     INTEGER NOT NULL DEFAULT 0,
    refused       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (policy, scheduled_for)
);

CREATE TABLE observations (
    instance_id           TEXT    PRIMARY KEY,
    region                TEXT    NOT NULL,
    first_seen_stopped_at INTEGER NOT NULL
);

CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    release_id   INTEGER,
    batch_id     INTEGER,
    policy       TEXT,
    instance_id  TEXT,
    code         TEXT,
    request_id   TEXT,
    client_token TEXT,
    detail       TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX events_instance ON events (instance_id);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
