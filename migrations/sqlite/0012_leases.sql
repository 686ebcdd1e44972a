-- Work that one replica at a time should do, each under a named lease: a replica takes it
-- when it is free or ran out (until_ms, UTC milliseconds), does the work, and gives it back.
-- Marks are reconciled so: replicas whose passes end together sent each TagResources twice.
CREATE TABLE leases (
    name     TEXT    PRIMARY KEY,
    owner    TEXT    NOT NULL,
    until_ms INTEGER NOT NULL
);
