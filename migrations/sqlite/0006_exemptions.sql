-- Exemptions (issue 15): an operator's database-side exemption of an instance from every policy
-- until `until` (milliseconds), for instances nobody can tag. Removing one deletes its row; the
-- audit log keeps who exempted, who removed and why.
CREATE TABLE exemptions (
    instance_id TEXT    NOT NULL PRIMARY KEY,
    until       INTEGER NOT NULL,
    by_whom     TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Tag exemptions (`janitor:exempt-until`) that kept an instance out of a policy in the last pass
-- that listed it, for the status page: the tag on the instance stays the only truth, this is what
-- was seen. `until` NULL with a `problem`: an unreadable or too distant value, which protects.
CREATE TABLE seen_exemptions (
    instance_id TEXT    NOT NULL PRIMARY KEY,
    region      TEXT    NOT NULL,
    policy      TEXT    NOT NULL,
    value       TEXT    NOT NULL,
    until       INTEGER,
    reason      TEXT    NOT NULL,
    problem     TEXT,
    seen_at     INTEGER NOT NULL
);
