-- A batch's members are looked up only while they are in flight (the lease, the re-check, the
-- attempt's exemption gate, a claim's scope). Indexing only those rows keeps the index to the
-- batches in flight: settling a member no longer adds an entry that nothing reads (on
-- PostgreSQL every update of a release adds one to each index that covers the new row).
DROP INDEX releases_batch;
CREATE INDEX releases_batch ON releases (batch_id) WHERE state = 'in_flight';
