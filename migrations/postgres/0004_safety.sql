-- Safety at every call (issue 10). See the SQLite migration of the same number for the why.
ALTER TABLE releases DROP CONSTRAINT IF EXISTS releases_state_check;
ALTER TABLE releases ADD CONSTRAINT releases_state_check
    CHECK (state IN ('pending', 'in_flight', 'succeeded', 'failed', 'cancelled', 'vanished'));

CREATE TABLE holds (
    instance_id TEXT    NOT NULL,
    policy      TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('hold', 'quarantine')),
    until       BIGINT,
    by_whom     TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    repeats     BIGINT  NOT NULL DEFAULT 1,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (instance_id, policy, kind)
);

CREATE TABLE scope_members (
    scope      TEXT   NOT NULL,
    release_id BIGINT NOT NULL,
    PRIMARY KEY (scope, release_id)
);

-- 4. Every try of a batch counts towards its attempt limit, including a re-check that failed
--    before any call (`attempts` stays the number of calls sent with the token).
ALTER TABLE batches ADD COLUMN tries BIGINT NOT NULL DEFAULT 0;

-- 5. Observations remember the listing constraints (charge type, tags) the instance met when it
--    was seen Stopped, so a pass whose listing was filtered differently clears only what its
--    listing could have returned. One constraint a line; '' for an unfiltered listing.
ALTER TABLE observations ADD COLUMN seen_with TEXT NOT NULL DEFAULT '';

-- 6. Whether any call sent with a batch's token may have taken effect (its answer was lost, or
--    the process died with it in flight). Sticky: a later refusal does not undo an earlier call.
ALTER TABLE batches ADD COLUMN uncertain BIGINT NOT NULL DEFAULT 0;
