-- On PostgreSQL every update of a release adds an entry for its new row to each index that
-- covers that row, so indexes are kept to the rows their queries read.
--
-- A batch's members are looked up only while they are in flight (the lease, the re-check, the
-- attempt's exemption gate, a claim's scope): settling a member no longer adds an entry that
-- nothing reads.
DROP INDEX releases_batch;
CREATE INDEX releases_batch ON releases (batch_id) WHERE state = 'in_flight';
-- Releases are looked up by instance either while active (`releases_one_active`) or once
-- released (an enqueue skips instances already released; the re-check names them): a claim no
-- longer adds an entry for each release it puts in flight.
DROP INDEX releases_instance;
CREATE INDEX releases_instance ON releases (instance_id) WHERE state = 'succeeded';
