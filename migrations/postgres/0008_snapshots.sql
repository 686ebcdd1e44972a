-- Snapshot before release (issue 15): a release whose policy sets `release.snapshot` carries its
-- retention and disk choice (`snapshot_days`, `snapshot_disks`: 'data' or 'all'), and may not be
-- batched for DeleteInstances until `snapshot_stage` is 'ready': every snapshot accomplished.
-- While its snapshots are made it is `pending` with `snapshot_stage` 'snapshotting' (shown as the
-- state `snapshotting`), leased to one worker at a time (`stage_owner`, `stage_until`).
ALTER TABLE releases ADD COLUMN snapshot_days BIGINT ;
ALTER TABLE releases ADD COLUMN snapshot_disks TEXT;
ALTER TABLE releases ADD COLUMN snapshot_stage TEXT;
ALTER TABLE releases ADD COLUMN stage_owner TEXT;
ALTER TABLE releases ADD COLUMN stage_until BIGINT;
-- When the stage began (its first claim): the stage ends failed after 24 h.
ALTER TABLE releases ADD COLUMN stage_started BIGINT;

-- One snapshot per (release, disk), with the ClientToken written before the first
-- CreateSnapshot, so a crash never makes a second snapshot: the same token answers the same
-- SnapshotId.
CREATE TABLE snapshots (
    release_id   BIGINT  NOT NULL,
    disk_id      TEXT    NOT NULL,
    client_token TEXT    NOT NULL UNIQUE,
    snapshot_id  TEXT,
    state        TEXT    NOT NULL CHECK (state IN ('creating', 'progressing', 'accomplished', 'failed')),
    attempts     BIGINT  NOT NULL DEFAULT 0,
    code         TEXT,
    message      TEXT,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (release_id, disk_id)
);

-- Workers look for releases to snapshot on every step: only among those that need it.
CREATE INDEX releases_to_snapshot ON releases (id)
    WHERE state = 'pending' AND snapshot_days IS NOT NULL;
