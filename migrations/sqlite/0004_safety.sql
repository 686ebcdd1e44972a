-- Safety at every call (issue 10).
-- 1. A release can end `vanished`: missing from the re-check before our call (released by someone
--    else, or invisible to these credentials). It never counts as released by ecs-janitor, and a
--    later inventory that lists the instance queues it again. SQLite cannot change a CHECK, so the
--    table is rebuilt with the same columns and indexes.
CREATE TABLE releases_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id   TEXT    NOT NULL,
    instance_name TEXT    NOT NULL DEFAULT '',
    region        TEXT    NOT NULL,
    policy        TEXT    NOT NULL,
    force         INTEGER NOT NULL CHECK (force IN (0, 1)),
    terminate_subscription INTEGER NOT NULL CHECK (terminate_subscription IN (0, 1)),
    state         TEXT    NOT NULL CHECK (state IN ('pending', 'in_flight', 'succeeded', 'failed', 'cancelled', 'vanished')),
    not_before    INTEGER NOT NULL,
    batch_id      INTEGER,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_code     TEXT,
    last_message  TEXT,
    request_id    TEXT,
    reasons       TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    account       TEXT    NOT NULL DEFAULT ''
);
INSERT INTO releases_new (id, instance_id, instance_name, region, policy, force,
    terminate_subscription, state, not_before, batch_id, attempts, last_code, last_message,
    request_id, reasons, created_at, updated_at, account)
SELECT id, instance_id, instance_name, region, policy, force, terminate_subscription, state,
    not_before, batch_id, attempts, last_code, last_message, request_id, reasons, created_at,
    updated_at, account
FROM releases;
DROP TABLE releases;
ALTER TABLE releases_new RENAME TO releases;
CREATE UNIQUE INDEX releases_one_active ON releases (instance_id) WHERE state IN ('pending', 'in_flight');
CREATE INDEX releases_batch ON releases (batch_id);
CREATE INDEX releases_due ON releases (not_before) WHERE state = 'pending';
CREATE INDEX releases_pending_by_id ON releases (id) WHERE state = 'pending';
CREATE INDEX releases_pending_group ON releases (account, region, force, terminate_subscription, id)
    WHERE state = 'pending';
CREATE INDEX releases_instance ON releases (instance_id);

-- 2. Holds keep an instance out of one policy's enqueue until they end: an operator's cancel
--    (`hold`, until `queue retry` or `until`), and a quarantine after a permanent refusal
--    (`quarantine`, doubling with each repeat). `until` NULL: until lifted.
CREATE TABLE holds (
    instance_id TEXT    NOT NULL,
    policy      TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('hold', 'quarantine')),
    until       INTEGER,
    by_whom     TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    repeats     INTEGER NOT NULL DEFAULT 1,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (instance_id, policy, kind)
);

-- 3. A run's scope: the releases one `apply --plan` or `apply --policy` may carry out. Workers of
--    that run claim only these; everything else in the queue is left as it is.
CREATE TABLE scope_members (
    scope      TEXT    NOT NULL,
    release_id INTEGER NOT NULL,
    PRIMARY KEY (scope, release_id)
);

-- 4. Every try of a batch counts towards its attempt limit, including a re-check that failed
--    before any call (`attempts` stays the number of calls sent with the token).
ALTER TABLE batches ADD COLUMN tries INTEGER NOT NULL DEFAULT 0;

-- 5. Observations remember the listing constraints (charge type, tags) the instance met when it
--    was seen Stopped, so a pass whose listing was filtered differently clears only what its
--    listing could have returned. One constraint a line; '' for an unfiltered listing.
ALTER TABLE observations ADD COLUMN seen_with TEXT NOT NULL DEFAULT '';

-- 6. Whether any call sent with a batch's token may have taken effect (its answer was lost, or
--    the process died with it in flight). Sticky: a later refusal does not undo an earlier call.
ALTER TABLE batches ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0;
