-- Each running daemon says which policy set it runs, and until when to count it as running
-- (three of its own leases from its last word): replicas that run different sets (one on an
-- old checkout) would each queue and cancel the other's releases, and one could release under
-- a policy deleted on purpose. While the live replicas disagree, none releases.
CREATE TABLE replicas (
    id              TEXT    PRIMARY KEY,
    policies_digest TEXT    NOT NULL,
    policies        TEXT    NOT NULL,
    live_until      BIGINT NOT NULL,
    -- Which process wrote the row: two daemons given one id are told apart by it.
    nonce           TEXT    NOT NULL DEFAULT ''
);
