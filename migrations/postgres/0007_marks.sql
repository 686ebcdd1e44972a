-- Marks on instances (issue 15, part 1): what ecs-janitor wrote with TagResources (or tried to)
-- on each instance waiting out its grace, so each pass compares the marks the queue wants with
-- what is on the instances and repairs the difference. The queue stays the source of truth: a
-- row is a record of a call, never read back as a release.
-- `prefix` is the tag prefix of the keys (`<prefix>release-after`, `<prefix>policy`);
-- `release_after` and `policy` the values. `state`: `written` (ECS accepted them), `failed`
-- (TagResources was refused: `code` and `message` say why, the mark is missing) or `removing`
-- (not wanted any more, UntagResources refused: retried on the next pass).
CREATE TABLE marks (
    instance_id   TEXT    NOT NULL PRIMARY KEY,
    account       TEXT    NOT NULL,
    region        TEXT    NOT NULL,
    release_id    BIGINT  NOT NULL,
    prefix        TEXT    NOT NULL,
    release_after TEXT    NOT NULL,
    policy        TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('written', 'failed', 'removing')),
    code          TEXT,
    message       TEXT,
    request_id    TEXT,
    updated_at    BIGINT  NOT NULL
);
