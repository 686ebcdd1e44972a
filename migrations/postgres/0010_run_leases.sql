-- A policy's tick is held under a lease its replica renews while the pass runs: a replica that
-- stops mid-pass (killed, its machine lost) leaves the tick to be taken over once the lease
-- ends, where before it stayed "running" and was never reconciled.
ALTER TABLE policy_runs ADD COLUMN lease_expires_at BIGINT;
-- Runs left unfinished before this migration: those a later tick of their policy followed are
-- closed as failed (nothing would reconcile them now); any other gets an hour from its start,
-- so that one still running on a replica not yet upgraded is not taken from it at once.
UPDATE policy_runs SET finished_at = started_at, outcome = 'error'
 WHERE finished_at IS NULL
   AND EXISTS (SELECT 1 FROM policy_runs n
               WHERE n.policy = policy_runs.policy AND n.scheduled_for > policy_runs.scheduled_for);
UPDATE policy_runs SET lease_expires_at = started_at + 3600000 WHERE finished_at IS NULL;
CREATE INDEX policy_runs_open ON policy_runs (lease_expires_at) WHERE finished_at IS NULL;
