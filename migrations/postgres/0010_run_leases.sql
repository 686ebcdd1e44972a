-- A policy's tick is held under a lease its replica renews while the pass runs: a replica that
-- stops mid-pass (killed, its machine lost) leaves the tick to be taken over once the lease
-- ends, where before it stayed "running" and was never reconciled. Runs from before this
-- migration have no lease and count as ended.
ALTER TABLE policy_runs ADD COLUMN lease_expires_at BIGINT;
CREATE INDEX policy_runs_open ON policy_runs (lease_expires_at) WHERE finished_at IS NULL;
